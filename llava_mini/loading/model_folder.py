"""What chat.py, serve.py and evaluation open: any model folder -> (model, tokenizer, template name).

    model, tokenizer, template = load_checkpoint("checkpoints/tiny/final")
    model, tokenizer, template = load_checkpoint("checkpoints/llava-v1.5-7b", vision_tower="checkpoints/clip-...")
    model, tokenizer, template = load_checkpoint("checkpoints/lora/final")     # base + LoRA adapter, merged
    model, tokenizer, template = load_checkpoint("checkpoints/smollm2", text_only_ok=True)   # a plain LLaMA

The layouts themselves are weights.py's (LLaVA, LLaMA, CLIP) and adapters.py's (LoRA in PEFT's format).
"""
from __future__ import annotations

import os

from llava_mini.jsonio import read_json
from llava_mini.loading.adapters import is_adapter, load_adapter
from llava_mini.loading.safetensors_io import CheckpointError
from llava_mini.loading.weights import is_original_llava_config, load_llama, load_llava
from llava_mini.model.config import TextConfig, read_config, read_config_json
from llava_mini.model.lora import merge_lora


def is_text_only(path: str) -> bool:
    """A plain LLaMA checkpoint folder: an LLM without a vision tower (e.g. SmolLM2 converted from its GGUF)."""
    d = read_config_json(path)
    return not is_original_llava_config(d) and isinstance(read_config(path), TextConfig)


def load_checkpoint(path: str, vision_tower: str | None = None, device: str = "cpu", dtype=None,
                    text_only_ok: bool = False, model_base: str | None = None):
    """A checkpoint folder (ours, HF llava, original LLaVA + `vision_tower`, or a LoRA adapter on its base, which
    `model_base` overrides) -> (model, tokenizer, template name). An adapter is merged into its base: the model then
    runs as fast as a full one. The template comes from our llava_mini.json; other layouts get vicuna_v1 (LLaVA-1.5's).
    With `text_only_ok`, a plain LLaMA folder loads too, as a LlamaForCausalLM (template: chatml when its tokenizer
    has <|im_start|>); without it such a folder is an error that says what it is."""
    from llava_mini.data.tokenizer import Tokenizer
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {path}")
    if model_base and not is_adapter(path):
        raise CheckpointError(f"{path} is not a LoRA adapter (no adapter_config.json), so it takes no base model")
    text_only = not vision_tower and os.path.exists(os.path.join(path, "config.json")) and is_text_only(path)
    if text_only and not text_only_ok:
        raise CheckpointError(f"{path} is a text-only LLaMA checkpoint (no vision tower): chat.py and serve.py "
                              "talk to it; this command needs a LLaVA model")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"{path} has no tokenizer.json (needed to turn text into token ids)")
    tokenizer = Tokenizer.from_file(path)
    if text_only:
        model = load_llama(path, dtype=dtype, device=device).eval()
        default = "chatml" if tokenizer.token_to_id("<|im_start|>") is not None else "vicuna_v1"
    else:
        if is_adapter(path):
            model = load_adapter(path, base=model_base, dtype=dtype, device=device)
            merge_lora(model)
        else:
            model = load_llava(path, dtype=dtype, device=device, vision_tower=vision_tower)
        model.eval()
        tokenizer.check_image_token(model.config.image_token_index, path)
        default = "vicuna_v1"
    meta_path = os.path.join(path, "llava_mini.json")
    template = read_json(meta_path).get("template", default) if os.path.exists(meta_path) else default
    model.requires_grad_(False)          # inference only: no autograd graph (local, unlike set_grad_enabled)
    return model, tokenizer, template
