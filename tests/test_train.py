"""train.py: the freeze policy, exact resume, atomic checkpoints, the NaN stop, 2-process DDP on gloo, and the default
pipeline at toy size. Everything runs on a 32 px world with 2-layer, 32-wide models made by weights/make_tiny.py."""
import csv
import dataclasses
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from conftest import load_script  # noqa: E402

from llava_mini.loading import weights  # noqa: E402
from llava_mini.model.llava import LlavaForConditionalGeneration  # noqa: E402
from llava_mini.synth import world  # noqa: E402
from llava_mini.training import loop, model_setup, pipeline  # noqa: E402
from llava_mini.training.args import parse_args, recipe  # noqa: E402
from llava_mini.training.optim import lr_multiplier  # noqa: E402
from llava_mini.training.recipes import CLASSROOM, QUICK  # noqa: E402
from llava_mini.training.checkpoints import (latest_checkpoint, list_checkpoints, load_trainer_state,  # noqa: E402
                                            save_checkpoint)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 48-scene world and tiny bases (two training steps each: real files, untrained weights)."""
    root = tmp_path_factory.mktemp("tiny")
    data = str(root / "shapes")
    world.generate_dataset(data, 48, 8, seed=0, image_size=32, quiet=True)
    make_tiny = load_script("weights/make_tiny.py")
    make_tiny.make_tiny(data, str(root / "base"), **dataclasses.asdict(QUICK.bases))
    return {"root": root, "data": data, "clip": str(root / "base" / "tiny-clip"), "llm": str(root / "base" / "tiny-llama")}


def stage1_args(tiny, out, *extra):
    return ["--stage", "1", "--data", os.path.join(tiny["data"], "stage1.json"), "--image-root", tiny["data"],
            "--vision", tiny["clip"], "--llm", tiny["llm"], "--out", str(out), "--batch-size", "8",
            "--micro-batch-size", "4", "--quiet", "--threads", "1", *extra]


def stage2_args(tiny, init, out, *extra):
    return ["--stage", "2", "--data", os.path.join(tiny["data"], "stage2.json"), "--image-root", tiny["data"],
            "--init", str(init), "--out", str(out), "--batch-size", "8", "--micro-batch-size", "4", "--quiet",
            "--threads", "1", "--lr", "3e-3", *extra]


def read_losses(out) -> list[float]:
    with open(os.path.join(out, "metrics.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def state(path) -> dict:
    return {k: v.clone() for k, v in weights.load_llava(path).state_dict().items()}


def assert_same_weights(a: dict, b: dict, what: str = "", atol: float = 5e-5) -> None:
    """Two runs that split the same global batches differently end with the same weights. Not bit for bit: Adam
    divides each gradient by its own size, so float noise in a near-zero one (summed in another order) moves its
    weight by up to ~1e-5 at lr 1e-3 (more at a higher lr); a wrong split or gradient share moves weights by about
    the learning rate."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=atol, msg=f"{what}{k}")


@pytest.fixture(scope="module")
def stage1(tiny):
    torch.manual_seed(0)
    out = tiny["root"] / "stage1"
    final = loop.train(parse_args(stage1_args(tiny, out, "--max-steps", "3")))
    return final


def test_freeze_policy_stage1_trains_only_the_projector(tiny, stage1):
    args = parse_args(stage1_args(tiny, tiny["root"] / "unused"))
    model, _ = model_setup.build_model(args, recipe(args))
    trainable = model_setup.set_trainable(model, 1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("multi_modal_projector.") for n in names)
    assert len(trainable) == len(names)
    model_setup.set_train_mode(model)
    assert model.training and not model.vision_tower.training

    before, after = {k: v for k, v in model.state_dict().items()}, state(stage1)
    # the towers are the bases, unchanged; the projector moved
    base_llm = weights.load_llama(tiny["llm"]).state_dict()
    for k, v in base_llm.items():
        assert torch.equal(after["language_model." + k], v), k
    base_clip = weights.load_clip(tiny["clip"], vision_only=True).state_dict()
    for k, v in base_clip.items():
        assert torch.equal(after["vision_tower." + k], v), k
    assert "multi_modal_projector.linear_1.weight" in before
    assert os.path.exists(os.path.join(stage1, "llava_mini.json"))


def test_freeze_policy_stage2_trains_projector_and_llm(tiny, stage1):
    out = tiny["root"] / "stage2"
    final = loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "2")))
    before, after = state(stage1), state(final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(not k.startswith("vision_tower.") for k in changed)
    assert any(k.startswith("multi_modal_projector.") for k in changed)
    llm = [k for k in before if k.startswith("language_model.")]
    # every LLM weight that can receive a gradient moved (the embedding rows of unused tokens need not)
    assert sum(k in changed for k in llm) >= len(llm) - 1, sorted(set(llm) - changed)
    # the final folder is what chat.py and evaluate load
    for name in ("model.safetensors", "config.json", "tokenizer.json", "llava_mini.json"):
        assert os.path.exists(os.path.join(final, name)), name


def test_projector_lr_gives_the_projector_its_own_learning_rate(tiny, stage1, tmp_path):
    """--projector-lr (LLaVA's mm_projector_lr): 0 holds the projector still while the LLM trains; the lr logged is
    the LLM's. Without it the projector moves (test_freeze_policy_stage2_trains_projector_and_llm)."""
    args = stage2_args(tiny, stage1, tmp_path, "--max-steps", "2", "--projector-lr", "0")
    final = loop.train(parse_args(args))
    before, after = state(stage1), state(final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("multi_modal_projector.") for k in changed), sorted(changed)
    assert any(k.startswith("language_model.") for k in changed)
    with open(os.path.join(tmp_path, "metrics.csv"), newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(lrs) == 2 and lrs[0] > 0, lrs


def test_lr_schedules_warm_up_then_wsd_holds_the_peak_that_the_cosine_lets_fall():
    """Both warm up linearly; the cosine is at half its peak halfway, WSD still at the peak until the last fifth, then
    both end near 0. An unknown name says which ones exist."""
    cosine, wsd = lr_multiplier("cosine", 100, 0.03), lr_multiplier("wsd", 100, 0.03)
    assert [round(cosine(s), 3) for s in (0, 1, 2)] == [round(wsd(s), 3) for s in (0, 1, 2)] == [0.333, 0.667, 1.0]
    assert abs(cosine(51) - 0.5) < 0.02 and wsd(51) == 1.0 and wsd(80) == 1.0
    assert wsd(90) == 0.5 and wsd(99) == 0.05 and cosine(99) < 0.01
    longer = lr_multiplier("wsd", 100, 0.03, decay_ratio=0.4)      # the decay takes the last 40 steps instead
    assert longer(59) == 1.0 and longer(80) == 0.5 and longer(99) == 0.025
    with pytest.raises(ValueError, match="cosine, wsd"):
        lr_multiplier("linear", 100)


def test_lr_schedule_flag_reaches_the_loop(tiny, stage1, tmp_path):
    """--lr-schedule wsd: the logged rate stays at --lr until the last fifth of the steps, where the cosine's falls;
    --lr-decay-ratio 0.5 starts the fall at the half."""
    peaks = {}
    for name, flags in {"cosine": ["--lr-schedule", "cosine"], "wsd": ["--lr-schedule", "wsd"],
                        "wsd-half": ["--lr-schedule", "wsd", "--lr-decay-ratio", "0.5"]}.items():
        out = os.path.join(tmp_path, name)
        loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "10", "--lr", "1e-3", *flags)))
        with open(os.path.join(out, "metrics.csv"), newline="") as f:
            peaks[name] = sum(abs(float(row["lr"]) - 1e-3) < 1e-12 for row in csv.DictReader(f))
    assert peaks["wsd"] >= 7 and peaks["cosine"] <= 2 and 4 <= peaks["wsd-half"] <= 5, peaks


def test_resume_continues_exactly(tiny, stage1, tmp_path):
    out = tmp_path / "run"
    args = stage2_args(tiny, stage1, out, "--max-steps", "4", "--save-every", "2")
    final = loop.train(parse_args(args))
    uninterrupted, final_state = read_losses(out), state(final)
    assert len(uninterrupted) == 4 and os.path.basename(latest_checkpoint(str(out))) == "checkpoint-000002"

    shutil.rmtree(final)          # as if the run had died after step 2's checkpoint
    final = loop.train(parse_args(args + ["--resume"]))
    assert read_losses(out) == uninterrupted              # the same curve, row for row
    resumed = state(final)
    for k, v in final_state.items():
        assert torch.equal(resumed[k], v), k


class _Payload:
    """Unpickling this runs code (os.system); a trainer state must never be read that way."""
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_trainer_state_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "checkpoint-000002"
    folder.mkdir()
    torch.save({"step": 2, "evil": _Payload()}, folder / "trainer_state.pt")
    with pytest.raises(ValueError, match="trainer_state.pt: refusing to load"):
        load_trainer_state(str(folder))
    assert not (tmp_path / "PWNED").exists()


def test_resume_with_periodic_saves_survives_the_rotation_and_refuses_a_changed_recipe(tiny, stage1, tmp_path):
    """Resumed from checkpoint-2, saving every step: the rotation (keep=2) deletes the checkpoint it resumed from,
    whose tokenizer later saves must not need. A changed batch size would silently skip training: refused."""
    out = tmp_path / "run"
    args = stage2_args(tiny, stage1, out, "--max-steps", "6", "--save-every", "2")
    loop.train(parse_args(args))
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-000004")
    final = loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "6", "--save-every", "1",
                                              "--resume")))
    assert os.path.exists(os.path.join(final, "tokenizer.json"))
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-checkpoint")]
    with pytest.raises(ValueError, match="the recipe's batch_size was 8, the command line now gives 4"):
        loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "6", "--batch-size", "4", "--resume")))


def test_killed_save_leaves_previous_checkpoint_loadable(tiny, stage1, tmp_path):
    out = str(tmp_path)
    model = weights.load_llava(stage1)
    tok = os.path.join(stage1, "tokenizer.json")
    good = save_checkpoint(out, 1, lambda d: weights.save_llava(model, d, tok), {"step": 1})
    # A second save dies half-way (SIGKILL in a child process, between the weights and the trainer state).
    code = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r})\n"
            "from llava_mini.loading import weights\nfrom llava_mini.training.checkpoints import save_checkpoint\n"
            f"m = weights.load_llava({stage1!r})\n"
            "def write(d):\n"
            f"    weights.save_llava(m, d, {tok!r}); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"save_checkpoint({out!r}, 2, write, {{'step': 2}})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert any(name.startswith(".tmp-checkpoint-000002") for name in os.listdir(out))   # the debris of the kill
    assert latest_checkpoint(out) == good and list_checkpoints(out) == [good]
    loaded = weights.load_llava(good)
    assert torch.equal(loaded.multi_modal_projector.linear_1.weight, model.multi_modal_projector.linear_1.weight)


def test_nan_loss_stops_with_last_good_checkpoint(tiny, stage1, tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = LlavaForConditionalGeneration.forward

    def poisoned(self, *a, **kw):
        out = forward(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] > 4:          # steps 1-2 (2 micro-batches each) are fine, step 3 is NaN
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3.*checkpoint-000002"):
        loop.train(parse_args(stage2_args(tiny, stage1, out, "--max-steps", "5", "--save-every", "1")))
    assert os.path.basename(latest_checkpoint(str(out))) == "checkpoint-000002"
    assert not os.path.exists(out / "final")
    weights.load_llava(latest_checkpoint(str(out)))       # intact


def _ddp_worker(rank: int, port: int, argv: list):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    loop.train(parse_args(argv))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one(tiny, stage1, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # global batch 8 both times: one process runs 2 micro-batches of 4, two processes 1 micro-batch of 4 each
    one = stage2_args(tiny, stage1, tmp_path / "one", "--max-steps", "3")
    two = stage2_args(tiny, stage1, tmp_path / "two", "--max-steps", "3")
    final_one = loop.train(parse_args(one))
    mp.spawn(_ddp_worker, args=(port, two), nprocs=2, join=True)
    assert read_losses(tmp_path / "two") == pytest.approx(read_losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(state(final_one), state(tmp_path / "two" / "final"))


def test_answer_weighting_gives_the_same_step_for_any_split_of_the_batch(tiny, stage1, tmp_path):
    """--answer-weighting changes what a step learns, but as with plain token averaging, a global batch split into
    2 micro-batches of 4 or 8 of 1 takes the same step."""
    plain = stage2_args(tiny, stage1, tmp_path / "plain", "--max-steps", "2")
    four = stage2_args(tiny, stage1, tmp_path / "four", "--max-steps", "2", "--answer-weighting", "0.5")
    one = stage2_args(tiny, stage1, tmp_path / "one", "--max-steps", "2", "--answer-weighting", "0.5",
                      "--micro-batch-size", "1")
    finals = [loop.train(parse_args(argv)) for argv in (plain, four, one)]
    assert read_losses(tmp_path / "one") == pytest.approx(read_losses(tmp_path / "four"), rel=1e-5)
    # The splits agree to 1e-5; the weighting moves the first batch's loss by more (0.03% on the fixture's batch).
    assert read_losses(tmp_path / "four")[0] != pytest.approx(read_losses(tmp_path / "plain")[0], rel=1e-4)
    assert_same_weights(state(finals[1]), state(finals[2]))


def test_two_gloo_processes_with_text_only_samples(tiny, stage1, tmp_path):
    """A micro-batch without an image leaves the projector without a gradient: DDP must then be told to look for
    unused parameters (train.py does so only when the data has text-only samples) and still match one process."""
    from llava_mini.jsonio import read_json, write_json
    entries = read_json(os.path.join(tiny["data"], "stage2.json"))[:8]
    for e in entries[::2]:                              # every other sample loses its image
        del e["image"]
        e["conversations"][0]["value"] = e["conversations"][0]["value"].replace("<image>\n", "")
    data = str(tmp_path / "mixed.json")
    write_json(entries, data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one = stage2_args(tiny, stage1, tmp_path / "one", "--max-steps", "2", "--micro-batch-size", "1")
    two = stage2_args(tiny, stage1, tmp_path / "two", "--max-steps", "2", "--micro-batch-size", "1")
    for argv in (one, two):
        argv[argv.index("--data") + 1] = data
    loop.train(parse_args(one))
    mp.spawn(_ddp_worker, args=(port, two), nprocs=2, join=True)
    assert read_losses(tmp_path / "two") == pytest.approx(read_losses(tmp_path / "one"), rel=1e-5)


def test_run_stage_under_torchrun_matches_one_process(tiny, stage1, tmp_path):
    """The pipeline's stage 2 on a multi-core CPU: train.py as 2 DDP processes launched by torchrun (a real
    subprocess, as a user would run it) gives the one-process result; a failing stage names its command."""
    one = stage2_args(tiny, stage1, tmp_path / "one", "--max-steps", "2")
    two = stage2_args(tiny, stage1, tmp_path / "two", "--max-steps", "2")
    assert pipeline.run_stage(one, 1) == str(tmp_path / "one" / "final")
    assert pipeline.run_stage(two, 2) == str(tmp_path / "two" / "final")
    assert read_losses(tmp_path / "two") == pytest.approx(read_losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(state(tmp_path / "one" / "final"), state(tmp_path / "two" / "final"))
    broken = stage2_args(tiny, tmp_path / "no-such-checkpoint", tmp_path / "broken", "--max-steps", "1")
    with pytest.raises(SystemExit, match="train.py failed with exit code .*torch.distributed.run"):
        pipeline.run_stage(broken, 2)


def test_stage1_under_torchrun_matches_one_process(tiny, tmp_path):
    """The pipeline launches stage 1 as it does stage 2: the frozen tower and LLM under DDP, only the projector
    training, give the one-process projector and the same held-out caption loss (what the report prints)."""
    from llava_mini.jsonio import read_json
    held_out = ["--max-steps", "2", "--eval-data", os.path.join(tiny["data"], "stage1.json")]
    finals = [pipeline.run_stage(stage1_args(tiny, tmp_path / run, *held_out), processes)
              for run, processes in (("one", 1), ("two", 2))]
    assert read_losses(tmp_path / "two") == pytest.approx(read_losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(state(finals[0]), state(finals[1]))
    metas = [read_json(os.path.join(final, "llava_mini.json")) for final in finals]
    assert metas[1]["heldout_loss_end"] == pytest.approx(metas[0]["heldout_loss_end"], rel=1e-5)
    assert metas[0]["heldout_loss_end"] < metas[0]["heldout_loss_start"]


def test_make_bases_under_torchrun_matches_one_process(tiny, tmp_path):
    """The pipeline's stage 0 on a multi-core CPU: weights/make_tiny.py launched by torchrun as 2 processes, its
    command line built from the size preset. Its bases and measurements equal the in-process run's."""
    one = pipeline.make_bases(tiny["data"], str(tmp_path / "one"), [], QUICK.bases, 1, 1)
    two = pipeline.make_bases(tiny["data"], str(tmp_path / "two"), [], QUICK.bases, 2, 1)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["lm_heldout_loss"] == pytest.approx(one["lm_heldout_loss"], rel=1e-4)
    for name in ("tiny-clip", "tiny-llama"):     # lr 2e-3 and 3e-3: a tenth of it is still far below a real error
        assert_same_weights(*(load_file(str(tmp_path / run / name / "model.safetensors")) for run in ("one", "two")),
                            what=f"{name}: ", atol=2e-4)


def test_default_pipeline_quick(tmp_path, capsys):
    report = pipeline.run_pipeline(parse_args(["--quick", "--workdir", str(tmp_path), "--no-easyvqa", "--quiet",
                                               "--threads", "1"]))
    final = tmp_path / "checkpoints" / "tiny-quick" / "final"
    assert report["final"] == str(final) and os.path.exists(final / "model.safetensors")
    assert set(report["results"]) == {"shapes world"}
    loss_start, loss_end = report["caption_loss"]
    assert loss_end < loss_start            # even two steps of stage 1 lower the held-out caption loss
    assert os.path.exists(tmp_path / "checkpoints" / "tiny-quick" / "loss.png")
    saved = json.load(open(final / "report.json"))                       # the report, beside the model
    assert set(saved["bench"]) == {"conv", "detail", "complex", "overall"} and saved["describe"]["n"] == 8
    assert len(saved["examples"]) == 3 and all(e["question"] and e["truth"] for e in saved["examples"])
    # stage 2 learns from the paper's mix: the world's conversations, detailed descriptions, complex reasoning and
    # short answers (easy-VQA joins them unless --no-easyvqa)
    mix = [e for path in saved["stage2_mix"] for e in json.load(open(path))]
    assert {e["id"].rsplit("_", 1)[1] for e in mix} == {"conv", "detail", "complex", "vqa"}
    # ... and some of its questions carry a made-up word (recipes.Classroom.unfamiliar_word_rate)
    world_json = json.load(open(tmp_path / "data" / "shapes-quick" / "stage2.json"))
    asked = [t["value"].replace("<image>\n", "") for e in world_json for t in e["conversations"] if t["from"] == "human"]
    written = set(asked)
    made_up = [t["value"] for e in mix if not e["id"].startswith("easyvqa") for t in e["conversations"]
               if t["from"] == "human" and t["value"].replace("<image>\n", "") not in written]
    assert 0 < len(made_up) < len(asked) / 2
    # it started from the shipped bases, and reports what they can do
    assert saved["bases"]["llama_dir"].endswith(os.path.join("tiny", "tiny-llama")) and "text_qa" in saved["bases"]
    assert set(saved["results"]["shapes world"]["per_phrasing"]) <= {"seen", "heldout"}
    table = dict(load_script("docs/report_table.py").rows([saved, saved]))     # the README's table, from it
    assert "(mean of 2:" in table["LLaVA-Bench-style relative score, rule judge (50 held-out images x 3)"]
    # the short answers again, as the turn after the model's own description: every scored question of the 8
    # described images, beside the same questions asked first
    assert saved["missing"]["n_absent"] == 8 and 0 <= saved["missing"]["absent_denied"] <= 1
    f = saved["followups"]
    assert f["n"] == 8 and set(f["per_type"]) == set(f["per_type_asked_first"])
    # ... and asked with no prompt, as in chat: the answer read from the sentence, per type
    c = saved["chat"]
    assert c["n"] == 8 and 0 <= c["overall"] <= 1
    assert set(c["per_type"]) <= set(saved["results"]["shapes world"]["per_type"])
    assert f["asked_first"] == pytest.approx(saved["results"]["shapes world"]["image"])

    # Each stage's printed command, run alone, reproduces the pipeline's stage to the bit: the pipeline passes
    # nothing that the preset (--preset quick, read from recipes.QUICK) does not say.
    printed = {line.split(":", 1)[0]: line.split("python train.py ", 1)[1].split()
               for line in capsys.readouterr().out.splitlines() if line.startswith(("[3/6]", "[4/6]"))}
    assert set(printed) == {"[3/6] stage 1", "[4/6] stage 2"}
    for step, argv in printed.items():
        out = argv.index("--out") + 1
        pipeline_out, argv[out] = argv[out], str(tmp_path / "alone" / step)
        alone = loop.train(parse_args(argv))
        ours = load_file(os.path.join(pipeline_out, "final", "model.safetensors"))
        theirs = load_file(os.path.join(alone, "model.safetensors"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), step


def test_pipeline_starts_from_the_shipped_bases_and_gives_own_bases_their_own_run(tmp_path):
    def dirs(*argv, size=CLASSROOM):
        return pipeline.pipeline_dirs(parse_args(["--workdir", str(tmp_path), *argv]), size)[2:]
    ckpt = tmp_path / "checkpoints"
    assert dirs() == (pipeline.SHIPPED_BASES, str(ckpt / "tiny"))
    assert dirs("--make-bases") == (str(ckpt / "base"), str(ckpt / "tiny-ownbases"))
    assert dirs("--clip-steps", "4000", "--seed", "1") == (str(ckpt / "base-clip4000"),
                                                           str(ckpt / "tiny-clip4000-seed1"))
    assert dirs("--make-bases", "--clip-steps", "3", size=QUICK) == (str(ckpt / "base-quick-clip3"),
                                                                     str(ckpt / "tiny-quick-clip3"))
    with pytest.raises(SystemExit):
        parse_args(["--clip-steps", "0"])


def test_packing_gives_the_padded_loss(tiny, stage1, tmp_path):
    padded = stage2_args(tiny, stage1, tmp_path / "padded", "--max-steps", "1")
    packed = stage2_args(tiny, stage1, tmp_path / "packed", "--max-steps", "1", "--pack")
    loop.train(parse_args(padded))
    loop.train(parse_args(packed))
    assert read_losses(tmp_path / "packed") == pytest.approx(read_losses(tmp_path / "padded"), rel=1e-5)


def test_two_gloo_processes_with_fsdp_match_one(tiny, stage1, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one = stage2_args(tiny, stage1, tmp_path / "one", "--max-steps", "2")
    two = stage2_args(tiny, stage1, tmp_path / "two", "--max-steps", "2", "--fsdp")
    loop.train(parse_args(one))
    mp.spawn(_ddp_worker, args=(port, two), nprocs=2, join=True)
    assert read_losses(tmp_path / "two") == pytest.approx(read_losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(state(tmp_path / "one" / "final"), state(tmp_path / "two" / "final"))


def test_skip_bad_trains_on_and_reports_the_broken_images_at_the_end(tiny, tmp_path, capsys):
    """--skip-bad: a sample whose image file is gone is left out, counted, and reported when training ends."""
    from llava_mini.jsonio import read_json, write_json
    entries = read_json(os.path.join(tiny["data"], "stage1.json"))[:16]
    entries[0] = {**entries[0], "id": "broken-sample", "image": "images/train/does-not-exist.png"}
    data = tmp_path / "stage1_broken.json"
    write_json(entries, str(data))
    args = stage1_args(tiny, tmp_path / "out", "--max-steps", "1", "--skip-bad")
    args[args.index("--data") + 1] = str(data)
    loop.train(parse_args(args))
    err = capsys.readouterr().err
    assert "skipped 1 samples" in err and "does-not-exist.png" in err
    with pytest.raises(Exception, match="does-not-exist.png"):     # without --skip-bad the same file is an error
        loop.train(parse_args([a for a in args if a != "--skip-bad"]))


def test_a_bad_image_found_mid_run_saves_the_steps_done(tiny, tmp_path, monkeypatch):
    """Without --skip-bad, an image that turns out truncated at step 3 stops the run with the sample's name, and
    the two steps done are kept in a checkpoint that --resume continues from."""
    data = tmp_path / "shapes"
    shutil.copytree(tiny["data"], data)
    args = stage1_args(tiny, tmp_path / "out", "--max-steps", "4")
    args[args.index("--data") + 1] = str(data / "stage1.json")
    args[args.index("--image-root") + 1] = str(data)
    originals = {p: p.read_bytes() for p in sorted((data / "images" / "train").glob("*.png"))[::2]}
    real_step, truncate = loop.train_step, [True]

    def truncate_images_at_step_3(run, step, autocast):
        if step == 2 and truncate[0]:
            for p, content in originals.items():
                p.write_bytes(content[:len(content) // 3])               # every other image, truncated
        return real_step(run, step, autocast)
    monkeypatch.setattr(loop, "train_step", truncate_images_at_step_3)
    with pytest.raises(ValueError, match=r"sample shapes_train_\d+_cap: .*--skip-bad"):
        loop.train(parse_args(args))
    assert os.path.basename(latest_checkpoint(str(tmp_path / "out"))) == "checkpoint-000002"
    for p, content in originals.items():
        p.write_bytes(content)
    truncate[0] = False
    final = loop.train(parse_args(args + ["--resume"]))
    assert len(read_losses(tmp_path / "out")) == 4 and os.path.exists(os.path.join(final, "model.safetensors"))
    # with --skip-bad the same images are left out and counted, and the run ends
    skipping = [a if a != str(tmp_path / "out") else str(tmp_path / "skipping") for a in args] + ["--skip-bad"]
    truncate[0] = True
    loop.train(parse_args(skipping))
    assert len(read_losses(tmp_path / "skipping")) == 4


def _short_answer_sample(n: int) -> dict:
    from llava_mini.data.conversation import SHORT_ANSWER_PROMPT
    turns = []
    for i in range(n):
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + f"Question {i}?" + SHORT_ANSWER_PROMPT},
                  {"from": "gpt", "value": f"answer {i}"}]
    return {"id": "s_vqa", "image": "x.png", "conversations": turns}


def test_shuffled_turns_keeps_each_answer_with_its_question_and_the_image_first():
    from llava_mini.data.dataset import shuffled_turns
    entry = _short_answer_sample(6)
    out = shuffled_turns(entry, seed=0)
    turns = out["conversations"]
    assert turns != entry["conversations"] and out["id"] == "s_vqa"
    assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
    for q, a in zip(turns[::2], turns[1::2]):
        assert q["value"].replace("<image>\n", "").startswith(f"Question {a['value'].split()[1]}?")
    assert shuffled_turns(entry, seed=0) == out and shuffled_turns(entry, seed=1) != out
    assert entry == _short_answer_sample(6)                        # the input is not modified


def test_unfamiliar_words_go_into_questions_only_one_each_and_keep_every_word():
    from llava_mini.data.conversation import SHORT_ANSWER_PROMPT
    from llava_mini.data.dataset import with_unfamiliar_words
    entry = _short_answer_sample(40)
    out = with_unfamiliar_words(entry, seed=0, rate=0.5)
    changed = 0
    for before, after in zip(entry["conversations"], out["conversations"]):
        if before["from"] == "gpt" or before == after:
            assert before == after                                    # answers are never touched
            continue
        changed += 1
        head, tail = before["value"].rsplit(SHORT_ANSWER_PROMPT, 1), after["value"].rsplit(SHORT_ANSWER_PROMPT, 1)
        assert tail[1] == head[1] == "" and after["value"].endswith(SHORT_ANSWER_PROMPT)   # the prompt line intact
        old, new = head[0].replace("<image>\n", "").split(), tail[0].replace("<image>\n", "").split()
        extra = [w for w in new if w not in old]
        assert len(new) == len(old) + 1 and len(extra) == 1 and 5 <= len(extra[0]) <= 9 and extra[0].isalpha()
        assert [w for w in new if w != extra[0]] == old                # the question's own words, in order
        assert after["value"].startswith("<image>\n") == before["value"].startswith("<image>\n")
    assert 10 <= changed <= 30                                          # about half of the 40 questions
    assert with_unfamiliar_words(entry, seed=0, rate=0.5) == out and with_unfamiliar_words(entry, 0, 0.0) == entry


def _rows(out) -> int:
    path = os.path.join(out, "metrics.csv")
    return max(0, sum(1 for _ in open(path)) - 1) if os.path.exists(path) else 0


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(tiny, stage1, tmp_path):
    """SIGKILL at random moments (during steps, during saves), again and again, each time resumed with the same
    command: the loss curve and the final weights equal those of a run never interrupted, and no temporary file
    or folder is left behind."""
    ref, out = tmp_path / "ref", tmp_path / "killed"
    args = lambda o: stage2_args(tiny, stage1, o, "--max-steps", "16", "--save-every", "1")  # noqa: E731
    reference_final = loop.train(parse_args(args(ref)))
    command = [sys.executable, os.path.join(ROOT, "train.py"), *args(out), "--resume"]
    rng, kills = random.Random(0), 0
    while kills < 5:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        target, deadline = _rows(out) + rng.randint(1, 3), time.time() + 120
        while proc.poll() is None and _rows(out) < target and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.08))              # somewhere in the next step or its save
        if proc.poll() is not None:                   # it finished before the kill
            assert proc.returncode == 0, proc.stderr.read().decode()[-1000:]
            break
        proc.kill()
        proc.wait()
        kills += 1
    done = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-1000:]
    assert kills >= 3
    assert read_losses(out) == read_losses(ref)            # row for row, to the printed digit
    resumed, reference = state(out / "final"), state(reference_final)
    for k, v in reference.items():
        assert torch.equal(resumed[k], v), k
    assert not [n for n in os.listdir(out) if n.startswith(".") or ".tmp" in n or ".old-" in n]
