"""LoRA for stage 2: the layer (a fresh adapter changes nothing, merging keeps the function), training (only the
adapters and the projector learn; resume is exact), the PEFT format (peft + transformers load our adapter and give
our logits) and the errors of a missing or wrong base."""
import json
import os
import shutil

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file, save_file
from test_train import read_losses, stage1, stage2_args, tiny  # noqa: F401  (module-scoped fixtures)

from llava_mini.loading import weights
from llava_mini.loading.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter
from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.loading.safetensors_io import CheckpointError
from llava_mini.model.config import LlavaConfig, TextConfig, VisionConfig
from llava_mini.model.llava import LlavaForConditionalGeneration
from llava_mini.model.lora import LLAMA_LINEAR, LoRALinear, apply_lora, lora_layers, merge_lora
from llava_mini.training import loop
from llava_mini.training.args import parse_args

LORA = ["--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0"]


def small_llava(projector_type="mlp2x_gelu") -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8)
    text = TextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                     projector_type=projector_type, image_token_index=99)).eval()


def inputs(config, n_image_tokens: int = 1):
    """Token ids with the image placeholder once (ours) or once per image token (transformers), and pixels."""
    text = torch.randint(0, config.image_token_index, (2, 9), generator=torch.Generator().manual_seed(2))
    index = config.image_token_index
    ids = torch.cat([text[:, :3], torch.full((2, n_image_tokens), index), text[:, 4:]], dim=1)
    size = config.vision_config.image_size
    return ids, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def logits(model, ids, pixels):
    with torch.no_grad():
        return model(ids, pixel_values=pixels).logits


def test_a_fresh_adapter_changes_nothing_and_merging_keeps_the_function():
    model = small_llava()
    ids, pixels = inputs(model.config)
    before, keys = logits(model, ids, pixels), set(model.state_dict())
    names = apply_lora(model.language_model, r=4, alpha=8, dropout=0.1)
    # every linear layer of every decoder layer, never lm_head or anything outside the LLM
    assert sorted({n.rsplit(".", 1)[-1] for n in names}) == sorted(LLAMA_LINEAR) and len(names) == 2 * 7
    assert not any(isinstance(m, LoRALinear) for m in model.vision_tower.modules())
    assert torch.equal(logits(model, ids, pixels), before)         # B = 0: exactly the base (dropout off in eval)
    assert set(model.state_dict()) - keys == {f"language_model.{n}.lora_{ab}.weight" for n in names for ab in "AB"}

    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    adapted = logits(model, ids, pixels)
    assert (adapted - before).abs().max() > 1e-2                    # the adapters do something...
    assert merge_lora(model) == 14
    assert set(model.state_dict()) == keys and not lora_layers(model)   # ...and merged, the base layout again
    torch.testing.assert_close(logits(model, ids, pixels), adapted, atol=1e-5, rtol=0)


def test_an_adapter_round_trips_through_its_files_with_a_linear_projector(tmp_path):
    from llava_mini.loading.adapters import lora_settings, save_adapter
    model = small_llava("linear")
    base = weights.save_llava(model, str(tmp_path / "base"))
    apply_lora(model.language_model, r=2, alpha=6, targets=("q_proj", "v_proj"))
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    with torch.no_grad():
        model.multi_modal_projector.linear_1.weight.add_(0.1)
    save_adapter(model, str(tmp_path / "adapter"), base, lora_settings(model))
    config = json.load(open(tmp_path / "adapter" / ADAPTER_CONFIG))
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (2, 6, ["multi_modal_projector"])
    stored = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in stored
    assert "base_model.model.model.multi_modal_projector.linear_2.weight" in stored       # HF's two layers
    again = load_adapter(str(tmp_path / "adapter"))
    assert again.config.projector_type == "linear" and len(lora_layers(again)) == 4
    ids, pixels = inputs(model.config)
    assert torch.equal(logits(again, ids, pixels), logits(model, ids, pixels))
    # An adapter that leaves the projector as it was (PEFT without modules_to_save) keeps the base's.
    save_file({k: v for k, v in stored.items() if "multi_modal_projector" not in k},
              tmp_path / "adapter" / ADAPTER_WEIGHTS)
    lora_only = load_adapter(str(tmp_path / "adapter"))
    assert torch.equal(lora_only.multi_modal_projector.linear_1.weight,
                       weights.load_llava(base).multi_modal_projector.linear_1.weight)


@pytest.fixture(scope="module")
def lora_run(tiny, stage1, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("lora")
    final = loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "4", "--save-every", "2", *LORA)))
    return {"out": out, "final": final, "args": stage2_args(tiny, stage1, out, "--max-steps", "4", "--save-every",
                                                            "2", *LORA)}


def test_lora_trains_only_the_adapters_and_the_projector(stage1, lora_run):  # noqa: F811
    final = lora_run["final"]
    assert sorted(os.listdir(final)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "llava_mini.json", "tokenizer.json"]
    stored = load_file(os.path.join(final, ADAPTER_WEIGHTS))
    assert all(".lora_A." in k or ".lora_B." in k or ".multi_modal_projector." in k for k in stored)
    base = weights.load_llava(stage1).state_dict()
    model = load_adapter(final)
    state = model.state_dict()
    for key, value in base.items():                  # tower and LLM: the base, bit for bit
        if not key.startswith("multi_modal_projector."):
            assert torch.equal(state[key], value), key
    assert all(not torch.equal(state[k], base[k]) for k in base if k.startswith("multi_modal_projector."))
    assert all(layer.lora_B.weight.abs().sum() > 0 for layer in lora_layers(model).values())   # every B learned
    # chat.py and evaluation open the adapter folder as a model: its base with the adapter merged in
    merged, _, template = load_checkpoint(final)
    ids, pixels = inputs(model.config)
    assert template == "vicuna_v1" and not lora_layers(merged)
    torch.testing.assert_close(logits(merged, ids, pixels), logits(model, ids, pixels), atol=1e-5, rtol=0)


def test_lora_resume_continues_exactly(lora_run):
    out, args = lora_run["out"], lora_run["args"]
    uninterrupted, adapter = read_losses(out), load_file(os.path.join(lora_run["final"], ADAPTER_WEIGHTS))
    shutil.rmtree(lora_run["final"])                   # as if the run had died after step 2's checkpoint
    final = loop.train(parse_args(args + ["--resume"]))
    assert read_losses(out) == uninterrupted
    resumed = load_file(os.path.join(final, ADAPTER_WEIGHTS))
    assert resumed.keys() == adapter.keys() and all(torch.equal(resumed[k], adapter[k]) for k in adapter)


def test_peft_and_transformers_load_our_adapter_with_our_logits(stage1, lora_run):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ours = load_adapter(lora_run["final"])
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(stage1).eval()
    hf = peft.PeftModel.from_pretrained(hf, lora_run["final"]).eval()
    n_image = (ours.config.vision_config.image_size // ours.config.vision_config.patch_size) ** 2
    ids, pixels = inputs(ours.config)
    hf_ids, _ = inputs(ours.config, n_image)
    with torch.no_grad():
        theirs = hf(input_ids=hf_ids, pixel_values=pixels).logits
    mine = logits(ours, ids, pixels)
    assert theirs.shape == mine.shape
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
    base = logits(weights.load_llava(stage1), ids, pixels)
    assert (base - mine).abs().max() > 1e-4            # the adapter and the trained projector were loaded


def test_merge_lora_writes_a_whole_checkpoint_with_the_adapters_function(lora_run, tmp_path):
    merge_lora_script = load_script("weights/merge_lora.py")
    out = merge_lora_script.main(["--adapter", str(lora_run["final"]), "--out", str(tmp_path / "merged")])
    merged = weights.load_llava(out)
    assert not lora_layers(merged) and json.load(open(os.path.join(out, "llava_mini.json")))["template"] == "vicuna_v1"
    model = load_adapter(lora_run["final"])
    ids, pixels = inputs(model.config)
    torch.testing.assert_close(logits(merged, ids, pixels), logits(model, ids, pixels), atol=1e-5, rtol=0)


def test_an_adapter_without_its_base_or_on_the_wrong_base_is_an_error_naming_both(stage1, lora_run, tmp_path):  # noqa: F811
    adapter = shutil.copytree(lora_run["final"], tmp_path / "adapter")
    config = json.load(open(adapter / ADAPTER_CONFIG))
    json.dump({**config, "base_model_name_or_path": str(tmp_path / "gone")}, open(adapter / ADAPTER_CONFIG, "w"))
    with pytest.raises(CheckpointError, match=f"adapter {adapter} needs its base model.*gone"):
        load_adapter(str(adapter))

    wrong = shutil.copytree(stage1, tmp_path / "other-base")      # the same shapes, other weights
    state = load_file(wrong / "model.safetensors")
    key = next(k for k in state if k.endswith("embed_tokens.weight"))
    state[key] = state[key] + 0.01
    save_file(state, wrong / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"adapter {adapter} was trained on another base than {wrong}"):
        load_adapter(str(adapter), base=str(wrong))
    assert load_adapter(str(adapter), base=str(stage1)) is not None   # --model-base: the right one, moved
    assert lora_layers(load_adapter(str(adapter), base=str(stage1), dtype=torch.bfloat16))   # in bf16 it matches too
    with pytest.raises(CheckpointError, match="the base given"):
        load_adapter(str(adapter), base=str(tmp_path / "elsewhere"))
    llm_only = weights.save_llama(weights.load_llava(stage1).language_model, str(tmp_path / "llm"))
    with pytest.raises(CheckpointError, match=f"{llm_only} is a text-only LLaMA, but the adapter {adapter}"):
        load_adapter(str(adapter), base=llm_only)           # original LLaVA's --model-base: the LLM alone
    with pytest.raises(CheckpointError, match="is not a LoRA adapter"):
        load_checkpoint(str(stage1), model_base=str(stage1))


def test_lora_flags_are_checked():
    for argv, message in ((["--stage", "1", "--lora-r", "4"], "--lora-r is for stage 2"),
                          (["--stage", "2", "--vision", "v", "--llm", "l", "--lora-r", "4"], "LoRA needs --init")):
        with pytest.raises(SystemExit):
            parse_args([*argv, "--data", "d.json", "--image-root", "i", "--out", "o"])
    args = parse_args(["--stage", "2", "--init", "x", "--data", "d.json", "--image-root", "i", "--out", "o",
                       "--preset", "llava-1.5-7b-lora"])
    r = loop.recipe(args)
    assert (r.lora_r, r.lora_alpha, r.lora_dropout, r.lr, r.projector_lr) == (128, 256, 0.05, 2e-4, 2e-5)


def test_the_lora_benchmark_counts_what_lora_saves():
    bench = load_script("benchmarks/bench_lora.py")
    results = bench.main(["--models", "classroom", "--ranks", "4", "--batch", "1", "--seq", "80", "--repeats", "1"])
    full, lora = results["classroom"]["full"], results["classroom"]["LoRA r 4"]
    assert lora["trainable"] < full["trainable"] / 3 and lora["adam_state_mb"] < full["adam_state_mb"] / 3
    assert lora["adam_state_mb"] == pytest.approx(8 * lora["trainable"] / 2 ** 20)    # two fp32 moments each
    vicuna = results["llava-1.5-7b"]
    assert vicuna["full"]["trainable"] > 6.7e9 and 3.0e8 < vicuna["LoRA r 128"]["trainable"] < 3.6e8
