"""LoRA adapters on disk in PEFT's format, so that `peft` loads ours onto transformers' LlavaForConditionalGeneration.

    save_adapter(model, "checkpoints/lora/final", base="checkpoints/tiny/stage1/final", tokenizer_json=...)
    model = load_adapter("checkpoints/lora/final")                        # its base, as adapter_config.json names it
    model = load_adapter("checkpoints/lora/final", base="elsewhere/stage1/final")    # LLaVA's --model-base
    is_adapter(path)

An adapter folder holds what stage 2 with LoRA trained and nothing else (LLaVA-1.5's finetune_lora.sh output):
- `adapter_config.json`: PEFT's LoraConfig (r, lora_alpha, lora_dropout, target_modules, modules_to_save, and
  base_model_name_or_path, the checkpoint the adapter was trained on);
- `adapter_model.safetensors`: `base_model.model.<module path>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r)
  for every adapted layer, and the projector, which trains fully (PEFT's `modules_to_save`; LLaVA kept it apart as
  non_lora_trainables.bin, a pickle). Module paths are those of transformers' model in memory (>= 4.52:
  `model.language_model.layers.0.self_attn.q_proj`, `model.multi_modal_projector.linear_1`), the names PEFT itself
  writes for it; tests/test_lora.py loads the folder with peft and compares logits;
- `llava_mini.json`: the template and the base's signature (base_signature), so an adapter put on the wrong base
  is an error naming both, not a quietly wrong model; `tokenizer.json`.
The tower and the LLM's own weights are the base's: an adapter without its base is not a model.
"""
from __future__ import annotations

import hashlib
import os

import torch

from llava_mini.jsonio import read_json
from llava_mini.loading.safetensors_io import Checkpoint, CheckpointError, save_folder, short_list
from llava_mini.loading.weights import drop_identity_linear_2, hf_llava_key, load_llava, with_identity_linear_2
from llava_mini.model.config import TextConfig, read_config
from llava_mini.model.lora import apply_lora, lora_layers

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."          # PeftModel -> LoraModel -> the transformers model
PROJECTOR = "multi_modal_projector"


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def peft_key(key: str) -> str:
    """Our key (the HF llava layout) -> PEFT's key for transformers' model in memory."""
    if key.startswith("language_model.model."):
        key = "model.language_model." + key[len("language_model.model."):]
    elif key.startswith(PROJECTOR + "."):
        key = "model." + key
    return PEFT_PREFIX + key


def _is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key or key.startswith(PROJECTOR + ".")


SIGNATURE_VALUES = 8          # per tensor: about 6,000 numbers for LLaVA-1.5-7B


def _base_keys(state: dict) -> list[str]:
    return sorted(k for k in state if not _is_adapter_key(k))


def _shapes_sha256(state: dict) -> str:
    return hashlib.sha256("".join(f"{k}{tuple(state[k].shape)}" for k in _base_keys(state)).encode()).hexdigest()


def base_signature(state: dict) -> dict:
    """What identifies the base (the tower and the LLM's frozen weights, which the adapter does not carry): a hash of
    every key and shape, and the first values of every tensor. Values, not a hash of them,
    so the same base loaded in another dtype (bf16 on a GPU) still matches: same_base compares them with a
    tolerance."""
    return {"shapes_sha256": _shapes_sha256(state),
            "values": {k: state[k].detach().reshape(-1)[:SIGNATURE_VALUES].float().tolist() for k in _base_keys(state)}}


def same_base(signature: dict, state: dict) -> bool:
    """Does `state` hold the base that `signature` (base_signature) describes? Exact to fp32 rounding, or to the
    precision of a half-precision load."""
    if _shapes_sha256(state) != signature["shapes_sha256"]:
        return False
    for key, values in signature["values"].items():
        found = state[key].detach().reshape(-1)[:SIGNATURE_VALUES].float()
        tol = 1e-6 if state[key].dtype == torch.float32 else 1e-2
        if not torch.allclose(found, torch.tensor(values), rtol=tol, atol=tol * (1e-3 + found.abs().max().item())):
            return False
    return True


def lora_settings(model) -> dict:
    """r, alpha, dropout and the adapted layers' own names, read off the model's LoRALinear layers."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (model/lora.py's apply_lora puts them on)")
    first = next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, torch.nn.Dropout) else 0.0
    return {"r": first.r, "alpha": first.alpha, "dropout": dropout,
            "targets": sorted({name.rsplit(".", 1)[-1] for name in layers})}


def save_adapter(model, out_dir: str, base: str, lora: dict, tokenizer_json: str | None = None,
                 extra_json: dict | None = None) -> str:
    """Write the adapter folder (module docstring) atomically. `model` has `config` and `state_dict()` (a model
    with LoRA layers, or training's StateView of one); `lora` is lora_settings(model) (a StateView has no layers)."""
    state = model.state_dict()
    adapter = with_identity_linear_2({k: v for k, v in state.items() if _is_adapter_key(k)}, model.config)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
              "r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
              # a regex, so that the vision tower's own q_proj/k_proj/v_proj are never matched
              "target_modules": rf".*language_model.*\.({'|'.join(lora['targets'])})",
              "modules_to_save": [PROJECTOR], "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False}
    extra = dict(extra_json or {})
    meta = dict(extra.pop("llava_mini.json", {}))
    meta.update(base=base, base_signature=base_signature(state), lora=lora)
    extra["llava_mini.json"] = meta
    if tokenizer_json is not None:
        extra["tokenizer.json"] = tokenizer_json
    return save_folder({peft_key(k): v for k, v in adapter.items()}, config, out_dir, "1000GB", extra,
                       weights_name=ADAPTER_WEIGHTS, config_name=ADAPTER_CONFIG)


def _our_key(peft: str) -> str:
    if not peft.startswith(PEFT_PREFIX):
        raise KeyError(peft)
    return hf_llava_key(peft[len(PEFT_PREFIX):].replace(".lora_A.default.", ".lora_A.").replace(
        ".lora_B.default.", ".lora_B."))


def load_adapter(path: str, base: str | None = None, dtype=None, device="cpu"):
    """The base LLaVA checkpoint with the adapter's LoRA layers and projector on it (unmerged: merge_lora folds
    them in). `base` overrides adapter_config.json's base_model_name_or_path."""
    config = read_json(os.path.join(path, ADAPTER_CONFIG))
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}/{ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}; only LORA loads here")
    named = f"its {ADAPTER_CONFIG}'s base_model_name_or_path" if base is None else "the base given"
    base = base or config.get("base_model_name_or_path")
    if not base or not os.path.isdir(base):
        raise CheckpointError(f"the adapter {path} needs its base model, and {base!r} ({named}) is not a folder "
                              "here: pass the base checkpoint it was trained on (--model-base)")
    if isinstance(read_config(base), TextConfig):
        raise CheckpointError(f"{base} is a text-only LLaMA, but the adapter {path} was trained on a LLaVA "
                              "checkpoint (tower + projector + LLM: the stage-1 result it names): pass that as the "
                              "base, not the LLM alone as original LLaVA's --model-base")
    meta_path = os.path.join(path, "llava_mini.json")
    meta = read_json(meta_path) if os.path.exists(meta_path) else {}
    model = load_llava(base, dtype=dtype, device=device)
    if "base_signature" in meta and not same_base(meta["base_signature"], model.state_dict()):
        raise CheckpointError(f"the adapter {path} was trained on another base than {base} (other weights or "
                              f"shapes); it was trained on {meta.get('base', 'a base it does not name')}")

    weights_file = os.path.join(path, ADAPTER_WEIGHTS)
    ckpt = Checkpoint(weights_file)
    try:
        sources = {_our_key(k): (ckpt, k) for k in ckpt.keys()}
    except KeyError as e:
        raise CheckpointError(f"{weights_file}: key {e.args[0]} does not start with {PEFT_PREFIX!r}: not a PEFT "
                              "adapter of a whole model") from None
    if model.config.projector_type == "linear" and f"{PROJECTOR}.linear_2.weight" in sources:
        drop_identity_linear_2(sources, weights_file)
    lora_keys = {k for k in sources if ".lora_A." in k}
    targets = sorted({k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in lora_keys})
    if not targets:
        raise CheckpointError(f"{weights_file}: no lora_A weights")
    apply_lora(model.language_model, int(config["r"]), config["lora_alpha"], float(config.get("lora_dropout", 0.0)),
               tuple(targets))
    params = {k: p for k, p in model.state_dict(keep_vars=True).items() if _is_adapter_key(k)}
    if not any(k.startswith(PROJECTOR + ".") for k in sources):      # an adapter that left the projector as it was
        params = {k: p for k, p in params.items() if not k.startswith(PROJECTOR + ".")}
    missing, unexpected = set(params) - set(sources), set(sources) - set(params)
    if missing or unexpected:
        raise CheckpointError(f"the adapter {path} does not fit the base {base}: missing "
                              f"{short_list(missing) or 'none'}; unexpected {short_list(unexpected) or 'none'}")
    with torch.no_grad():
        for key, param in params.items():
            ckpt_key = sources[key][1]
            if ckpt.shape(ckpt_key) != tuple(param.shape):
                raise CheckpointError(f"the adapter {path} does not fit the base {base}: {ckpt_key} has shape "
                                      f"{ckpt.shape(ckpt_key)}, the base's layer needs {tuple(param.shape)}")
            param.copy_(ckpt.read(ckpt_key, param.dtype, param.device))
    return model.eval()
