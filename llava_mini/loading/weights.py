"""Loading and saving checkpoints: safetensors, in every key layout we meet, with about one model's worth of memory.

    from llava_mini.loading.weights import load_llava, load_llama, load_clip, save_llava
    model = load_llava("checkpoints/llava-1.5-7b-hf", dtype=torch.float16, device="cuda")
    model = load_llava("checkpoints/llava-v1.5-7b", vision_tower="checkpoints/clip-vit-large-patch14-336")
    llm = load_llama("checkpoints/vicuna-7b-v1.5")                   # one file or shards with an index
    tower = load_clip("checkpoints/clip-vit-large-patch14-336", vision_only=True)
    save_llava(model, "checkpoints/my-run/final", tokenizer_json="tokenizer.json")

How a load works (the same steps for every model):
1. Find the tensor files: `model.safetensors`, or the shards named in `model.safetensors.index.json` (pickled
   `pytorch_model*.bin` files are read too, memory-mapped, when a checkpoint has no safetensors). Nothing is read yet:
   safetensors files are opened lazily and only their headers (names, shapes, dtypes) are parsed.
2. Build the model with its parameters on the `meta` device: no memory, no random init. Buffers that the model
   computes itself (e.g. rotary tables) are built normally, because a checkpoint does not store them.
3. Map every checkpoint key to the model's key (the layouts below), then check names and shapes *before* reading
   any data: a missing, unexpected or wrongly shaped key is a CheckpointError naming the key and the file.
4. Read the tensors one by one, cast each to the requested dtype, put it on the requested device, and hand them to
   `load_state_dict(assign=True)`, which adopts them as the parameters instead of copying into a second copy.
   Peak memory is one model plus one tensor.

Key layouts (docs/ARCHITECTURE.md, "Key layouts"). Our modules mirror HF's, so our `state_dict()` *is* the HF llava layout that
llava-hf checkpoints use: `vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
`language_model.lm_head.weight`. Other layouts are renamed into it key by key:
- transformers >= 5 in memory: `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`,
  `lm_head.weight`; transformers 5 also drops the `vision_model.` level of a CLIP vision tower
  (`vision_tower.embeddings.*`) when it saves, both in a llava checkpoint and in a CLIPVisionModel checkpoint;
- original LLaVA (liuhaotian/llava-v1.5-7b): the LLM as plain HF Llama keys (`model.layers.*`, `lm_head.weight`),
  the projector as `model.mm_projector.{0,2}.*` (mlp2x_gelu: the indices of an nn.Sequential) or `model.mm_projector.*`
  (linear), and no vision tower: it comes from the CLIP checkpoint named in config.json (`mm_vision_tower`).

What we save is the llava-hf layout above, which transformers 4.x loads directly and transformers 5 converts on load
(verified with 5.23 in tests/test_weights.py). HF's projector always has two layers, so a single "linear" projector is
saved as linear_1 = W, activation "linear" (identity), linear_2 = identity matrix with zero bias: the same function,
exactly. config.json keeps our `projector_type: "linear"`, and on load we check that linear_2 really is the identity and
drop it, so the model comes back as the one-layer projector it was. (A foreign config with `projector_hidden_act:
"linear"` and no `projector_type` loads as a genuine two-layer "mlp2x_linear" projector.)
"""
from __future__ import annotations

import os
import re

import torch
from safetensors.torch import save_file

from llava_mini.jsonio import read_json
from llava_mini.loading.safetensors_io import (
    Checkpoint,
    CheckpointError,
    as_dtype,
    is_ignored,
    load_into,
    parameters_on_meta,
    save_folder,
    short_list,
    ties_embeddings,
)
from llava_mini.model.config import (
    CLIPConfig,
    LlavaConfig,
    TextConfig,
    VisionConfig,
    config_file,
    read_config,
    read_config_json,
)

DEFAULT_SHARD_SIZE = "4GB"

# ---------------------------------------------------------------------------------------------------------------
# 1. Key layouts. Each function maps one checkpoint key to our model's key, or None to skip it.

def _vision_key(key: str, prefix: str = "vision_model.") -> str:
    """CLIP vision keys with or without the `vision_model.` level (transformers 5 saves them without)."""
    return key if key.startswith(prefix) else prefix + key


def _clip_key_vision_only(key: str) -> str | None:
    if key.startswith(("text_model.", "visual_projection.", "text_projection.")) or key == "logit_scale":
        return None
    return _vision_key(key)


def hf_llava_key(key: str) -> str:
    """Any HF llava layout (old, transformers 5 in memory, transformers 5 on disk) -> ours."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.")):
        key = key[len("model."):]
    if key.startswith("language_model.") and not key.startswith(("language_model.model.", "language_model.lm_head.")):
        return "language_model.model." + key[len("language_model."):]
    if key.startswith("vision_tower."):
        return "vision_tower." + _vision_key(key[len("vision_tower."):])
    return key


def _original_projector_key(key: str) -> str:
    """`model.mm_projector.{0,2}.*` (an nn.Sequential) or `model.mm_projector.*` (one Linear) -> ours."""
    rest = key[len("model.mm_projector."):]
    rest = re.sub(r"^0\.", "linear_1.", re.sub(r"^2\.", "linear_2.", rest))
    if not rest.startswith(("linear_1.", "linear_2.")):
        rest = "linear_1." + rest
    return "multi_modal_projector." + rest


def _original_llava_key(key: str) -> str:
    """Original LLaVA layout -> ours. (A tower saved inside it, `model.vision_tower.vision_tower.*`, maps too.)"""
    if key.startswith("model.mm_projector."):
        return _original_projector_key(key)
    if key.startswith("model.vision_tower.vision_tower."):
        return "vision_tower." + _vision_key(key[len("model.vision_tower.vision_tower."):])
    return "language_model." + key


def _projector_key(key: str) -> str:
    """A projector-only file: original (`model.mm_projector.*`) or HF names, with or without `model.`."""
    if key.startswith("model.mm_projector."):
        return _original_projector_key(key)
    return hf_llava_key(key)


def _sources(ckpt: Checkpoint, key_fn, prefix: str = "") -> dict:
    """model key -> (checkpoint, checkpoint key), skipping known buffers and keys that `key_fn` maps to None."""
    out = {}
    for key in ckpt.keys():
        mapped = None if is_ignored(key) else key_fn(key)
        if mapped is not None:
            out[prefix + mapped] = (ckpt, key)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 2. Loaders.

def load_clip(path: str, dtype=None, device="cpu", vision_only: bool = False):
    """An HF CLIPModel or CLIPVisionModel checkpoint -> our CLIPModel, or CLIPVisionModel with `vision_only=True`
    (then the text tower, the projections and logit_scale of a full CLIPModel checkpoint are skipped).
    dtype None keeps the stored dtype."""
    from llava_mini.model.clip import CLIPModel, CLIPVisionModel
    config = read_config(path)
    ckpt = Checkpoint(path)
    if vision_only:
        vision_config = config.vision_config if isinstance(config, CLIPConfig) else config
        if not isinstance(vision_config, VisionConfig):
            raise CheckpointError(f"{path}: config.json is not a CLIP config ({type(config).__name__})")
        with parameters_on_meta():
            model = CLIPVisionModel(vision_config)
        return load_into(model, _sources(ckpt, _clip_key_vision_only), as_dtype(dtype), device, path)
    if not isinstance(config, CLIPConfig):
        raise CheckpointError(f"{path}: a full CLIPModel needs a `clip` config.json, found {type(config).__name__}; "
                              f"pass vision_only=True for a vision tower")
    with parameters_on_meta():
        model = CLIPModel(config)
    return load_into(model, _sources(ckpt, lambda k: k), as_dtype(dtype), device, path)


def load_llama(path: str, dtype=None, device="cpu"):
    """An HF LlamaForCausalLM checkpoint (one file or shards) -> our LlamaForCausalLM."""
    from llava_mini.model.llama import LlamaForCausalLM
    config = read_config(path)
    if not isinstance(config, TextConfig):
        raise CheckpointError(f"{path}: config.json is not a Llama config ({type(config).__name__})")
    ckpt = Checkpoint(path)
    sources = _sources(ckpt, lambda k: k)
    if config.tie_word_embeddings:          # some tied checkpoints store the head anyway: it is the embedding
        sources.pop("lm_head.weight", None)
    with parameters_on_meta():
        model = LlamaForCausalLM(config)
    return load_into(model, sources, as_dtype(dtype), device, path)


def is_original_llava_config(d: dict) -> bool:
    """The original LLaVA config.json is a flat Llama config plus `mm_*` fields (its model_type is also "llava")."""
    return "text_config" not in d and any(k.startswith("mm_") for k in d)


def _image_token_index(path: str, vocab_size: int) -> int:
    """Original LLaVA marks images with the id -200 inside its own code and has no `<image>` token. We need a real
    id: the tokenizer's `<image>` if the folder's tokenizer.json has one, otherwise the first id after the
    vocabulary (32000 for Vicuna), which is the id llava-hf gives `<image>`."""
    tokenizer_path = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tokenizer_path):
        for token in read_json(tokenizer_path).get("added_tokens", []):
            if token.get("content") == "<image>":
                return token["id"]
    return vocab_size


def original_llava_config(d: dict, vision_config: VisionConfig, path: str = "") -> LlavaConfig:
    """Original LLaVA config.json (+ the tower's VisionConfig) -> LlavaConfig."""
    if "mm_hidden_size" in d and d["mm_hidden_size"] != vision_config.hidden_size:
        raise CheckpointError(f"{path}: mm_hidden_size is {d['mm_hidden_size']} but the vision tower's hidden_size is "
                              f"{vision_config.hidden_size}: wrong vision tower for this checkpoint?")
    select = d.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise CheckpointError(f"{path}: mm_vision_select_feature {select!r} is not 'patch' or 'cls_patch'")
    text_config = TextConfig.from_hf(d)
    return LlavaConfig(vision_config=vision_config, text_config=text_config,
                       projector_type=d.get("mm_projector_type", "linear"),     # LLaVA-1 configs predate the field
                       vision_feature_layer=d.get("mm_vision_select_layer", -2),
                       vision_feature_select_strategy="default" if select == "patch" else "full",
                       image_token_index=_image_token_index(path, text_config.vocab_size),
                       image_aspect_ratio="pad" if d.get("image_aspect_ratio") == "pad" else "crop")


def drop_identity_linear_2(sources: dict, path: str) -> None:
    """Our "linear" projector is saved with an identity linear_2 (see the module docstring); check it and drop it."""
    weight, bias = sources.pop("multi_modal_projector.linear_2.weight"), sources.pop("multi_modal_projector.linear_2.bias")
    w, b = weight[0].read(weight[1], torch.float32), bias[0].read(bias[1], torch.float32)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or not torch.equal(w, torch.eye(len(w))) or b.count_nonzero():
        raise CheckpointError(f"{path}: projector_type is 'linear' but multi_modal_projector.linear_2 is not the "
                              f"identity, so this projector is not a single linear layer")


def load_llava(path: str, dtype=None, device="cpu", vision_tower: str | None = None):
    """A LLaVA checkpoint in any layout (module docstring) -> our LlavaForConditionalGeneration.

    `vision_tower` is a CLIP checkpoint folder. The original LLaVA layout does not store its tower and needs one
    (default: the folder named by `mm_vision_tower` in config.json, if it exists locally). Passing one for a
    checkpoint that does store a tower replaces the stored tower with it."""
    from llava_mini.model.llava import LlavaForConditionalGeneration
    config_dict = read_config_json(path)
    ckpt = Checkpoint(path)
    original = is_original_llava_config(config_dict) or any(k.startswith("model.mm_projector.") for k in ckpt.keys())

    if original:
        # The tower's config (and, unless the checkpoint stores a tower, its weights) come from a CLIP folder:
        # the one passed in, else the one config.json names in `mm_vision_tower`, if it is a local folder.
        sources = _sources(ckpt, _original_llava_key)
        stores_tower = any(k.startswith("vision_tower.") for k in sources)
        clip_path = vision_tower or config_dict.get("mm_vision_tower")
        if not clip_path or not os.path.isdir(clip_path):
            raise CheckpointError(f"{path}: an original LLaVA checkpoint needs its CLIP vision tower; config.json names "
                                  f"{clip_path!r}, which is not a local folder. Download it and pass "
                                  f"vision_tower=<CLIP checkpoint folder>")
        tower_config = read_config(clip_path)
        vision_config = tower_config.vision_config if isinstance(tower_config, CLIPConfig) else tower_config
        with config_file(path):
            config = original_llava_config(config_dict, vision_config, path)
        if not stores_tower:
            vision_tower = clip_path
    else:
        with config_file(os.path.join(path, "config.json")):
            config = LlavaConfig.from_hf(config_dict)
        sources = _sources(ckpt, hf_llava_key)
        if config.projector_type == "linear" and "multi_modal_projector.linear_2.weight" in sources:
            drop_identity_linear_2(sources, path)
        if config.text_config.tie_word_embeddings:
            sources.pop("language_model.lm_head.weight", None)

    if vision_tower is not None:     # the tower's weights come from its own CLIP checkpoint
        sources = {k: v for k, v in sources.items() if not k.startswith("vision_tower.")}
        sources.update(_sources(Checkpoint(vision_tower), _clip_key_vision_only, prefix="vision_tower."))
    with parameters_on_meta():
        model = LlavaForConditionalGeneration(config)
    what = path if vision_tower is None else f"{path} + {vision_tower}"
    return load_into(model, sources, as_dtype(dtype), device, what)


def load_projector(model, path: str):
    """Copy a projector-only file (stage 1 output: ours, or original LLaVA's mm_projector as safetensors) into
    `model.multi_modal_projector`, in place, keeping the model's dtype and device. Returns the model."""
    ckpt = Checkpoint(path)
    sources = _sources(ckpt, _projector_key)
    if getattr(model.config, "projector_type", None) == "linear" and "multi_modal_projector.linear_2.weight" in sources:
        drop_identity_linear_2(sources, path)
    params = {"multi_modal_projector." + k: p for k, p in model.multi_modal_projector.state_dict(keep_vars=True).items()}
    missing, unexpected = set(params) - set(sources), set(sources) - set(params)
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match the model's projector ({model.config.projector_type}): "
                              f"missing {short_list(missing) or 'none'}; unexpected {short_list(unexpected) or 'none'}")
    for key, param in params.items():
        ckpt_key = sources[key][1]
        if ckpt.shape(ckpt_key) != tuple(param.shape):
            raise CheckpointError(f"{path}: {ckpt_key} has shape {ckpt.shape(ckpt_key)}, the model's projector "
                                  f"expects {tuple(param.shape)}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(ckpt.read(sources[key][1], param.dtype, param.device))
    return model


# ---------------------------------------------------------------------------------------------------------------
# 3. Saving: our state dicts are already the HF layouts; checkpoint_io.save_folder writes them atomically.

def _tied_state(model) -> dict:
    """The state dict without `lm_head.weight` when it is tied to the embedding (HF stores it once)."""
    state = model.state_dict()
    if ties_embeddings(model):
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    return {k: v for k, v in state.items() if not is_ignored(k)}


def with_identity_linear_2(state: dict, config: LlavaConfig) -> dict:
    """HF's projector has two layers: a "linear" projector is saved with linear_2 = identity (module docstring)."""
    if config.projector_type == "linear":
        w = state["multi_modal_projector.linear_1.weight"]
        n = w.shape[0]
        state = {**state, "multi_modal_projector.linear_2.weight": torch.eye(n, dtype=w.dtype),
                 "multi_modal_projector.linear_2.bias": torch.zeros(n, dtype=w.dtype)}
    return state


def save_llava(model, out_dir: str, tokenizer_json: str | None = None, extra_json: dict | None = None,
               max_shard_size=DEFAULT_SHARD_SIZE) -> str:
    """Save in the llava-hf layout + HF config.json, loadable by transformers' LlavaForConditionalGeneration and by
    `load_llava`. `tokenizer_json` is copied in; `extra_json` ({"llava_mini.json": {...}}) lands in the same atomic
    write. A "linear" projector gets an identity linear_2 (module docstring)."""
    state = with_identity_linear_2(_tied_state(model), model.config)
    extra = dict(extra_json or {})
    if tokenizer_json is not None:
        extra["tokenizer.json"] = tokenizer_json
    return save_folder(state, model.config.to_hf(), out_dir, max_shard_size, extra)


def save_llama(model, out_dir: str, tokenizer_json: str | None = None, max_shard_size=DEFAULT_SHARD_SIZE) -> str:
    """Save an HF LlamaForCausalLM folder (model.safetensors or shards, config.json)."""
    extra = {"tokenizer.json": tokenizer_json} if tokenizer_json else None
    return save_folder(_tied_state(model), model.config.to_hf(), out_dir, max_shard_size, extra)


def save_clip(model, out_dir: str, max_shard_size=DEFAULT_SHARD_SIZE) -> str:
    """Save our CLIPModel (HF CLIPModel layout + config) or CLIPVisionModel (`vision_model.*` keys, the layout of
    hub checkpoints; its config.json is a clip_vision_model config)."""
    config = model.config.to_hf()
    if isinstance(model.config, VisionConfig):
        config["architectures"] = ["CLIPVisionModel"]
    return save_folder(_tied_state(model), config, out_dir, max_shard_size)


def save_projector(model, path: str) -> str:
    """Write only the projector (the stage-1 result), in the original LLaVA key names `model.mm_projector.{0,2}.*`
    (`model.mm_projector.*` for linear), atomically. `load_projector` reads it back into a model."""
    state = {}
    for key, tensor in model.multi_modal_projector.state_dict().items():
        if model.config.projector_type == "linear":
            key = key[len("linear_1."):]
        else:
            key = key.replace("linear_1.", "0.").replace("linear_2.", "2.")
        state["model.mm_projector." + key] = tensor.detach().contiguous().cpu()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(state, tmp, metadata={"format": "pt", "projector_type": model.config.projector_type})
    os.replace(tmp, path)
    return path
