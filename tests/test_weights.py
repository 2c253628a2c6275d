"""llava_mini.loading.weights: every checkpoint layout loads with exact parity, saves load in transformers, bad files fail clearly.

The reference checkpoints are tiny random models written by `transformers` itself (a test-only dependency).
    pytest tests/test_weights.py -q
"""
import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from llava_mini.loading import safetensors_io  # noqa: E402
from llava_mini.loading.weights import (
    CheckpointError,
    load_clip,
    load_llama,
    load_llava,
    load_projector,
    save_clip,
    save_llama,
    save_llava,
    save_projector,
)
from llava_mini.model.config import LlavaConfig, TextConfig, VisionConfig  # noqa: E402

IMAGE_TOKEN = 99
VOCAB = 100
TOL = 1e-5


def hf_vision_config():
    return transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16)


def hf_text_config(tied=False, kv_heads=2):
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                                    max_position_embeddings=128, rms_norm_eps=1e-5)


def hf_llava(act="gelu", tied=False):
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=hf_vision_config(), text_config=hf_text_config(tied),
                                      image_token_index=IMAGE_TOKEN, projector_hidden_act=act, image_seq_length=16,
                                      tie_word_embeddings=tied)
    return transformers.LlavaForConditionalGeneration(config).eval()


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def rewrite(src, dst, rename, config=None):
    """Copy checkpoint `src` to `dst` with keys renamed (rename -> None drops a key) and optionally a new config."""
    os.makedirs(dst, exist_ok=True)
    state = {}
    for k, v in load_file(os.path.join(src, "model.safetensors")).items():
        if rename(k) is not None:
            state[rename(k)] = v
    save_file(state, os.path.join(dst, "model.safetensors"))
    if config is None:
        shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    else:
        json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return dst


# ---- inputs and reference outputs --------------------------------------------------------------------------

def pixels(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def llava_inputs():
    """Ours: one placeholder per image. HF: the placeholder repeated once per image token (16 patches)."""
    text = torch.randint(0, IMAGE_TOKEN, (2, 9), generator=torch.Generator().manual_seed(2))
    ours = text.clone()
    ours[:, 3] = IMAGE_TOKEN
    hf = torch.cat([text[:, :3], torch.full((2, 16), IMAGE_TOKEN), text[:, 4:]], dim=1)
    return ours, hf


def hf_llava_logits(model):
    _, hf_ids = llava_inputs()
    with torch.no_grad():
        return model(input_ids=hf_ids, pixel_values=pixels()).logits


def our_llava_logits(model):
    ids, _ = llava_inputs()
    with torch.no_grad():
        return model(ids, pixel_values=pixels()).logits


@pytest.fixture(scope="module")
def hf_llava_dirs(tmp_path_factory):
    """HF llava checkpoints (gelu untied, linear-act tied) and their reference logits."""
    out = {}
    for act, tied in (("gelu", False), ("linear", True)):
        model = hf_llava(act, tied)
        path = str(tmp_path_factory.mktemp(f"llava_{act}"))
        model.save_pretrained(path)
        out[act] = (path, hf_llava_logits(model), model)
    return out


# ---- CLIP -------------------------------------------------------------------------------------------------

def test_clip_full_and_vision_only_match_transformers(tmp_path):
    torch.manual_seed(0)
    text = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=48, eos_token_id=49)
    hf = transformers.CLIPModel(transformers.CLIPConfig(vision_config=hf_vision_config().to_dict(), text_config=text,
                                                        projection_dim=16)).eval()
    hf.save_pretrained(tmp_path / "clip")
    ids = torch.randint(0, 48, (3, 7))
    ids[:, -1] = 49
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels(), output_hidden_states=True)

    ours = load_clip(str(tmp_path / "clip"))
    with torch.no_grad():
        assert max_diff(ours(pixels(), ids), ref.logits_per_image) <= TOL

    tower = load_clip(str(tmp_path / "clip"), vision_only=True)      # text tower, projections, logit_scale skipped
    assert not any(k.startswith("text_model") for k in tower.state_dict())
    with torch.no_grad():
        mine = tower(pixels(), output_hidden_states=True).hidden_states
        assert len(mine) == len(ref.vision_model_output.hidden_states)
        for a, b in zip(mine, ref.vision_model_output.hidden_states):
            assert max_diff(a, b) <= TOL
        assert max_diff(tower.select_features(pixels()), ref.vision_model_output.hidden_states[-2][:, 1:]) <= TOL

    # save_clip writes the HF CLIPModel layout back: transformers reads it with the same logits.
    save_clip(ours, str(tmp_path / "ours"))
    again = transformers.CLIPModel.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert max_diff(again(input_ids=ids, pixel_values=pixels()).logits_per_image, ref.logits_per_image) <= TOL


def test_clip_vision_model_checkpoint_without_vision_model_prefix(tmp_path):
    """transformers 5 saves CLIPVisionModel keys as `embeddings.*`, hub checkpoints as `vision_model.embeddings.*`."""
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(hf_vision_config()).eval()
    hf.save_pretrained(tmp_path / "v5")
    with safe_open(str(tmp_path / "v5" / "model.safetensors"), "pt") as f:
        assert any(k.startswith("embeddings.") for k in f.keys())
    rewrite(str(tmp_path / "v5"), str(tmp_path / "hub"), lambda k: "vision_model." + k)
    with torch.no_grad():
        ref = hf(pixels(), output_hidden_states=True).hidden_states[-2][:, 1:]
        for folder in ("v5", "hub"):
            tower = load_clip(str(tmp_path / folder), vision_only=True)
            assert max_diff(tower.select_features(pixels()), ref) <= TOL


# ---- LLaMA ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied,kv_heads", [(True, 2), (False, 4)])
def test_llama_single_and_sharded_match_transformers(tmp_path, tied, kv_heads):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_text_config(tied, kv_heads)).eval()
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        ref = hf(ids).logits
        one, sharded = load_llama(str(tmp_path / "one")), load_llama(str(tmp_path / "sharded"))
        assert max_diff(one(ids).logits, ref) <= TOL
        assert torch.equal(sharded(ids).logits, one(ids).logits)
    if tied:    # one parameter, not two copies
        assert one.lm_head.weight is one.model.embed_tokens.weight
    assert not any(p.is_meta for p in one.parameters())


def test_llama_bfloat16_and_pickled_bin(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_text_config()).eval()
    hf.save_pretrained(tmp_path / "st")
    model = load_llama(str(tmp_path / "st"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model = load_llama(str(tmp_path / "st"), dtype="float16")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    # A checkpoint with only a pickled pytorch_model.bin (as many original LLaVA repos are) reads too.
    os.makedirs(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(tmp_path / "st" / "config.json", tmp_path / "bin" / "config.json")
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        assert max_diff(load_llama(str(tmp_path / "bin"))(ids).logits, hf(ids).logits) <= TOL


def test_save_llama_sharded_round_trip(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_text_config(tied=True)).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = load_llama(str(tmp_path / "hf"))
    save_llama(model, str(tmp_path / "ours"), max_shard_size="20KB")
    index = json.load(open(tmp_path / "ours" / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" not in index["weight_map"]
    ids = torch.randint(0, VOCAB, (2, 8))
    again = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert max_diff(again(ids).logits, hf(ids).logits) <= TOL
        assert torch.equal(load_llama(str(tmp_path / "ours"))(ids).logits, model(ids).logits)


LOAD_MEMORY_CHILD = r"""
import re, sys, torch
from llava_mini.model.config import TextConfig
from llava_mini.model.llama import LlamaForCausalLM
from llava_mini.loading.weights import load_llama, parameters_on_meta
def kb(field):
    return int(re.search(field + r":\s*(\d+) kB", open("/proc/self/status").read())[1])
with parameters_on_meta():   # torch's meta-device machinery costs ~65 MB once per process, whatever the model size
    LlamaForCausalLM(TextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                num_attention_heads=1))
open("/proc/self/clear_refs", "w").write("5")          # reset the peak (VmHWM) to what is resident now
before = kb("VmRSS")
model = load_llama(sys.argv[1])
print((kb("VmHWM") - before) * 1024)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak memory through Linux /proc")
def test_loading_needs_about_one_copy_of_the_model(tmp_path):
    """Meta-device build + assign: the load's peak is the model plus about one tensor, not 2-3 copies (the naive
    load_file + random init + load_state_dict measures 2.0x; benchmarks/bench_load_memory.py prints both)."""
    import subprocess
    import sys

    from llava_mini.model.llama import LlamaForCausalLM
    torch.manual_seed(0)
    config = TextConfig(vocab_size=256, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                        num_attention_heads=8)
    save_llama(LlamaForCausalLM(config), str(tmp_path / "ckpt"))
    size = os.path.getsize(tmp_path / "ckpt" / "model.safetensors")           # ~83 MB, largest tensor 3 MB
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-c", LOAD_MEMORY_CHILD, str(tmp_path / "ckpt")], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": root}, check=True)
    assert int(child.stdout.split()[-1]) < 1.25 * size


# ---- LLaVA: every layout ----------------------------------------------------------------------------------

def new_layout(key):
    """transformers >= 5 in-memory names."""
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    return "model." + key


@pytest.mark.parametrize("act", ["gelu", "linear"])
def test_llava_hf_layouts_match_transformers(hf_llava_dirs, tmp_path, act):
    path, ref, _ = hf_llava_dirs[act]
    model = load_llava(path)
    assert model.config.projector_type == f"mlp2x_{act}"
    assert max_diff(our_llava_logits(model), ref) <= TOL
    # llava-hf hub names (tower with `vision_model.`) and transformers-5 names (`model.*`, with and without it).
    hub = rewrite(path, str(tmp_path / "hub"), lambda k: k.replace("vision_tower.", "vision_tower.vision_model."))
    new = rewrite(hub, str(tmp_path / "new"), new_layout)
    flat = rewrite(path, str(tmp_path / "new_flat"), new_layout)
    with safe_open(os.path.join(new, "model.safetensors"), "pt") as f:
        assert "model.vision_tower.vision_model.pre_layrnorm.weight" in f.keys()
    for folder in (hub, new, flat):
        assert torch.equal(our_llava_logits(load_llava(folder)), our_llava_logits(model))


def test_llava_sharded_equals_single(hf_llava_dirs, tmp_path):
    path, ref, hf = hf_llava_dirs["gelu"]
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert torch.equal(our_llava_logits(load_llava(str(tmp_path / "sharded"))), our_llava_logits(load_llava(path)))


@pytest.mark.parametrize("projector_type", ["mlp2x_gelu", "linear"])
def test_save_llava_loads_in_transformers(tmp_path, projector_type):
    from llava_mini.model.llava import LlavaForConditionalGeneration
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                    num_attention_heads=4, image_size=32, patch_size=8),
                         text_config=TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=128, tie_word_embeddings=True),
                         projector_type=projector_type, image_token_index=IMAGE_TOKEN)
    model = LlavaForConditionalGeneration(config).eval()
    out = save_llava(model, str(tmp_path / "ckpt"), extra_json={"llava_mini.json": {"template": "plain"}},
                     max_shard_size="20KB")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]                  # no temporary folder left behind
    assert json.load(open(os.path.join(out, "llava_mini.json"))) == {"template": "plain"}
    hf, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert max_diff(hf_llava_logits(hf.eval()), our_llava_logits(model)) <= TOL
    again = load_llava(out)
    assert again.config.projector_type == projector_type              # "linear" comes back as one layer
    assert torch.equal(our_llava_logits(again), our_llava_logits(model))


def test_partial_config_means_transformers_defaults():
    """transformers 4.x saved a llava's sub-configs as diffs against its own defaults (llava-hf/llava-1.5-7b-hf's
    text_config is 5 fields). A missing field must read as transformers' default, checked here against transformers."""
    llava_hf_1_5 = {"model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
                    "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                    "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
                                    "vocab_size": 32064},
                    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                                      "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                                      "patch_size": 14, "projection_dim": 768}}
    bare = {**llava_hf_1_5, "text_config": {"model_type": "llama"}, "vision_config": {"model_type": "clip_vision_model"}}
    no_tower = {k: v for k, v in bare.items() if k != "vision_config"}
    for d in (llava_hf_1_5, bare, no_tower):
        ours, theirs = LlavaConfig.from_hf(d), transformers.LlavaConfig(**d)
        for mine, ref in ((ours.text_config, theirs.text_config), (ours.vision_config, theirs.vision_config)):
            for field in dataclasses.fields(mine):
                if hasattr(ref, field.name) and field.name != "rope_theta":
                    assert getattr(mine, field.name) == getattr(ref, field.name), (field.name, d)
    assert LlavaConfig.from_hf(bare).text_config.rms_norm_eps == 1e-6       # Llama's default, not Vicuna-1.5's
    assert LlavaConfig.from_hf(llava_hf_1_5).vision_config == VisionConfig()  # ViT-L/14-336


def test_single_linear_projector_file_and_original_llava_1_layout(tmp_path):
    """LLaVA-1: one Linear stored as `model.mm_projector.{weight,bias}`, config without mm_projector_type."""
    from llava_mini.model.llava import LlavaForConditionalGeneration
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                    num_attention_heads=4, image_size=32, patch_size=8),
                         text_config=TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128),
                         projector_type="linear", image_token_index=IMAGE_TOKEN)
    model = LlavaForConditionalGeneration(config).eval()
    file = save_projector(model, str(tmp_path / "mm_projector.safetensors"))
    with safe_open(file, "pt") as f:
        assert sorted(f.keys()) == ["model.mm_projector.bias", "model.mm_projector.weight"]
    fresh = LlavaForConditionalGeneration(config).eval()
    assert not torch.equal(our_llava_logits(fresh), our_llava_logits(model))
    load_projector(fresh, file)
    assert torch.equal(fresh.multi_modal_projector.linear_1.weight, model.multi_modal_projector.linear_1.weight)

    save_clip(model.vision_tower, str(tmp_path / "clip"))
    state = {("model.mm_projector." + k[len("multi_modal_projector.linear_1."):] if k.startswith("multi_modal_projector.")
              else k[len("language_model."):]): v for k, v in model.state_dict().items() if not k.startswith("vision_tower.")}
    os.makedirs(tmp_path / "original")
    save_file(state, str(tmp_path / "original" / "model.safetensors"))
    json.dump({**config.text_config.to_hf(), "model_type": "llava", "mm_hidden_size": 32, "mm_vision_select_layer": -2,
               "mm_vision_tower": str(tmp_path / "clip")}, open(tmp_path / "original" / "config.json", "w"))
    again = load_llava(str(tmp_path / "original"))
    assert (again.config.projector_type, again.config.image_aspect_ratio) == ("linear", "crop")
    again.config.image_token_index = IMAGE_TOKEN
    assert torch.equal(our_llava_logits(again), our_llava_logits(model))


def original_llava_dir(hf_llava_dirs, tmp_path, act="gelu", mm_vision_tower="openai/clip-vit-large-patch14-336"):
    """The original LLaVA layout built from an HF llava: Llama keys, `model.mm_projector.*`, no tower; the tower
    goes to its own CLIPVisionModel folder."""
    path, ref, hf = hf_llava_dirs[act]
    hf.model.vision_tower.save_pretrained(tmp_path / "clip")

    def rename(key):
        if key.startswith("vision_tower."):
            return None
        if key.startswith("multi_modal_projector."):
            key = key.replace("linear_1", "0").replace("linear_2", "2")
            return "model.mm_projector." + key[len("multi_modal_projector."):]
        return key[len("language_model."):]

    text = hf.config.text_config.to_dict()
    config = {**text, "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "mm_hidden_size": 32,
              "mm_projector_type": f"mlp2x_{act}", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "mm_vision_tower": mm_vision_tower, "image_aspect_ratio": "pad", "tie_word_embeddings": False}
    if text["tie_word_embeddings"]:
        config["tie_word_embeddings"] = True
    return rewrite(path, str(tmp_path / "original"), rename, config), str(tmp_path / "clip"), ref


def test_original_llava_layout_with_separate_clip(hf_llava_dirs, tmp_path):
    path, clip, ref = original_llava_dir(hf_llava_dirs, tmp_path)
    with pytest.raises(CheckpointError, match="vision_tower="):      # the hub name is not a local folder
        load_llava(path)
    model = load_llava(path, vision_tower=clip)
    assert (model.config.projector_type, model.config.image_aspect_ratio) == ("mlp2x_gelu", "pad")
    assert model.config.image_token_index == VOCAB     # no tokenizer.json: the id after the vocabulary
    model.config.image_token_index = IMAGE_TOKEN       # our test inputs use 99, as the HF reference does
    assert max_diff(our_llava_logits(model), ref) <= TOL

    # `mm_vision_tower` naming a local folder is enough.
    shutil.rmtree(tmp_path / "original")
    path, clip, _ = original_llava_dir(hf_llava_dirs, tmp_path, mm_vision_tower=str(tmp_path / "clip"))
    model = load_llava(path)
    model.config.image_token_index = IMAGE_TOKEN
    assert max_diff(our_llava_logits(model), ref) <= TOL


def test_projector_file_round_trip(hf_llava_dirs, tmp_path):
    path, ref, hf = hf_llava_dirs["gelu"]
    trained = load_llava(path)
    file = save_projector(trained, str(tmp_path / "mm_projector.safetensors"))
    with safe_open(file, "pt") as f:
        assert sorted(f.keys()) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                    "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    fresh = load_llava(path)
    with torch.no_grad():
        for p in fresh.multi_modal_projector.parameters():
            p.zero_()
    load_projector(fresh, file)
    assert torch.equal(our_llava_logits(fresh), our_llava_logits(trained))
    # A projector of the wrong size is refused, naming the key.
    save_file({"model.mm_projector.0.weight": torch.zeros(8, 8)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_projector(fresh, str(tmp_path / "bad.safetensors"))


# ---- bad inputs ------------------------------------------------------------------------------------------

@pytest.fixture()
def llama_dir(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(hf_text_config()).save_pretrained(tmp_path / "good")
    return str(tmp_path / "good")


def test_truncated_file_names_the_file(llama_dir):
    file = os.path.join(llama_dir, "model.safetensors")
    os.truncate(file, os.path.getsize(file) - 1000)
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        load_llama(llama_dir)


def test_missing_unexpected_and_misshapen_keys(llama_dir, tmp_path):
    missing = rewrite(llama_dir, str(tmp_path / "missing"), lambda k: None if k == "model.norm.weight" else k)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*model\.norm\.weight"):
        load_llama(missing)
    extra = rewrite(llama_dir, str(tmp_path / "extra"), lambda k: k.replace("model.norm.", "model.final_norm."))
    with pytest.raises(CheckpointError, match=r"unexpected key.*model\.final_norm\.weight"):
        load_llama(extra)

    state = load_file(os.path.join(llama_dir, "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(65, 32)
    os.makedirs(tmp_path / "shape")
    save_file(state, str(tmp_path / "shape" / "model.safetensors"))
    shutil.copy(os.path.join(llama_dir, "config.json"), tmp_path / "shape")
    with pytest.raises(CheckpointError, match=r"shape.*model\.safetensors: model\.layers\.1\.mlp\.up_proj\.weight "
                                              r"has shape \(65, 32\).*expects \(64, 32\)"):
        load_llama(str(tmp_path / "shape"))


def test_config_that_disagrees_with_weights(llama_dir):
    config = json.load(open(os.path.join(llama_dir, "config.json")))
    config["hidden_size"] = 48
    json.dump(config, open(os.path.join(llama_dir, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \S+ has shape \(100, 32\), but the model built from "
                                              r"the config expects \(100, 48\)"):
        load_llama(llama_dir)


def test_missing_shard_named(llama_dir, tmp_path):
    model = load_llama(llama_dir)
    save_llama(model, str(tmp_path / "sharded"), max_shard_size="20KB")
    shard = sorted(set(json.load(open(tmp_path / "sharded" / "model.safetensors.index.json"))["weight_map"].values()))[1]
    os.remove(tmp_path / "sharded" / shard)
    with pytest.raises(CheckpointError, match=f"index.json: shard file {shard} is missing"):
        load_llama(str(tmp_path / "sharded"))


def test_failed_save_keeps_the_previous_checkpoint(llama_dir, tmp_path, monkeypatch):
    model = load_llama(llama_dir)
    out = str(tmp_path / "ckpt")
    save_llama(model, out, max_shard_size="20KB")
    before = {k: v.clone() for k, v in load_llama(out).state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    calls = []

    def failing_save_file(tensors, filename, metadata=None):      # the third shard write crashes
        calls.append(filename)
        if len(calls) == 3:
            raise OSError("disk full")
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors_io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_llama(model, out, max_shard_size="20KB")
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "good"]            # no temporary folder left
    after = load_llama(out).state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_shard_index_may_not_point_outside_the_checkpoint(tmp_path):
    from llava_mini.loading.safetensors_io import Checkpoint, CheckpointError
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard file: '../outside.safetensors' points outside"):
        Checkpoint(str(folder))
