"""The default job, `python train.py` with no arguments: the whole LLaVA recipe at classroom size on a CPU.

    python train.py                  # world data -> tiny bases -> stage 1 -> stage 2 -> evaluation -> report
    python train.py --quick          # the same at toy size (a smoke test, ~15 s)
    python train.py --workdir DIR    # put data/ and checkpoints/ under DIR
    python train.py --seed 1         # the stages with another seed (how much a result is luck: README)
    python train.py --processes 1    # bases and stage 2 in this process (default on a multi-core CPU: 2 under torchrun)
    python train.py --clip-steps 4000   # a better tower (shape read 88% instead of 81%), 5 to 7 minutes more: README

Each step prints the command that does it alone, so a student can rerun any one of them: `python -m llava_mini.world`,
`python -m llava_mini.easyvqa`, `python weights/make_tiny.py`, `python train.py --stage 1|2`, `python -m
llava_mini.evaluate`. The stages themselves are train.train(), the one loop that also runs the paper's recipe on GPUs.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import torch

from llava_mini import weights
from llava_mini.config import read_json, write_json
from llava_mini.data import LlavaDataset, collate
from llava_mini.tokenizer import Tokenizer
from llava_mini.train_utils import shuffled_turns
from train import build_model, parse_args, recipe, train, trained_tokens

# Sizes of the classroom run and of the smoke test. Data and bases are made only when missing.
# stage2_kinds: which of the world's stage-2 samples (conv, detail, complex, vqa) join easy-VQA train in the mix.
# eval_questions / blind_questions: how many test questions to score (None: all) with the image / blind.
# stage2_max_steps: stop stage 2 early (the smoke test); stage 1 of the smoke test runs its 8 epochs (16 steps).
FULL = dict(world_train=5000, world_test=500, image_size=64, stage1_epochs=1, stage2_epochs=4, stage2_kinds=("vqa",),
            eval_questions=None, blind_questions=1000, suffix="",
            tiny=dict(clip_steps=2000, lm_steps=200, text_hidden=96))
QUICK = dict(world_train=48, world_test=8, image_size=32, stage1_epochs=8, stage2_epochs=1,
             stage2_kinds=("conv", "detail", "complex", "vqa"), eval_questions=8, blind_questions=8,
             suffix="-quick", stage2_max_steps=2,
             tiny=dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=2,
                       vocab_size=400, clip_steps=2, clip_batch=16, lm_steps=2, lm_batch=4, lm_block=64))


TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
MAKE_TINY_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "make_tiny.py")


def torchrun(script: str, argv: list[str], processes: int, threads: int) -> None:
    """`torchrun --standalone --nproc_per_node PROCESSES SCRIPT ARGV`, each process with `threads` threads, the way
    a multi-GPU run is launched. Raises SystemExit naming the command if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           script] + argv
    # torchrun would set OMP_NUM_THREADS=1 itself, with a warning; say the thread count it gets
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()      # Ctrl-C reached the workers too: let them write their resumable checkpoint
        raise
    if code != 0:
        raise SystemExit(f"{os.path.basename(script)} failed with exit code {code}: {' '.join(cmd)}")


def launcher(processes: int) -> str:
    return "python" if processes == 1 else f"torchrun --standalone --nproc_per_node {processes}"


def run_stage(argv: list[str], processes: int) -> str:
    """`python train.py ARGV` in this process, or as `processes` DDP processes under torchrun (gloo on a CPU).
    Returns the final checkpoint folder."""
    args = parse_args(argv)
    if processes == 1:
        return train(args)
    torchrun(TRAIN_PY, argv, processes, args.threads or max(1, (os.cpu_count() or 1) // processes))
    return os.path.join(args.out, "final")


def make_bases(data_dir: str, base_dir: str, extra_text: list[str], sizes: dict, processes: int, threads: int) -> dict:
    """Stage 0, weights/make_tiny.py: in this process, or under torchrun, where the processes share each batch
    (the CLIP gathers its features). Returns what it measured (it also writes them to make_tiny.json)."""
    argv = ["--data", data_dir, "--out", base_dir] + (["--extra-text"] + extra_text if extra_text else [])
    argv += [a for k, v in sizes.items() for a in ("--" + k.replace("_", "-"), str(v))]
    print(f"[2/6] tiny bases: {launcher(processes)} weights/make_tiny.py " + " ".join(argv + ["--threads", str(threads)]))
    spec = importlib.util.spec_from_file_location("make_tiny", MAKE_TINY_PY)
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    if processes == 1:
        return make_tiny.make_tiny(data_dir, base_dir, extra_text, **sizes)
    torchrun(MAKE_TINY_PY, argv + ["--threads", str(threads)], processes, threads)
    return read_json(os.path.join(base_dir, make_tiny.STATS_FILE))


@torch.no_grad()
def mean_loss(model, dataset, pad_id: int, batch_size: int = 32) -> float:
    """Mean per-token loss of `model` over `dataset` (the held-out caption loss of stage 1)."""
    model.eval()
    total = count = 0.0
    for s in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(s, min(len(dataset), s + batch_size))], pad_id)
        n = trained_tokens(batch)
        total += model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"]).loss.item() * n
        count += n
    return total / count


def heldout_captions(data_dir: str, out_path: str) -> str:
    """Stage-1 style pairs (<image> + caption) for the held-out test scenes, written as LLaVA JSON."""
    scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    write_json([{"id": f"{s['id']}_caption", "image": s["image"], "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image concisely."},
        {"from": "gpt", "value": s["captions"][0]}]} for s in scenes], out_path)
    return out_path


def pipeline_dirs(args, size: dict) -> tuple[str, str, str, str]:
    """(world data, easy-VQA data, bases, run) folders under --workdir. A tower trained for other than the default
    --clip-steps gets bases and a run of its own (base-clip4000, tiny-clip4000), so it never reuses or overwrites
    the default ones."""
    tower = f"-clip{args.clip_steps}" if args.clip_steps and args.clip_steps != size["tiny"]["clip_steps"] else ""
    seed = f"-seed{args.seed}" if args.seed else ""
    data, checkpoints = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "checkpoints")
    return (os.path.join(data, "shapes" + size["suffix"]), os.path.join(data, "easyvqa"),
            os.path.join(checkpoints, "base" + size["suffix"] + tower),
            os.path.join(checkpoints, "tiny" + size["suffix"] + tower + seed))


def run_pipeline(args) -> dict:
    """World data -> tiny bases -> stage 1 -> stage 2 -> evaluation -> report. Each step prints the command that
    does it alone. The data and the bases are made only when missing (delete the folder to redo them); the two
    stages always run."""
    from llava_mini import easyvqa, world
    from llava_mini.evaluate import evaluate_vqa
    size = QUICK if args.quick else FULL
    t0 = time.time()
    data_dir, evqa_dir, base_dir, run_dir = pipeline_dirs(args, size)
    tiny_sizes = {**size["tiny"], "clip_steps": args.clip_steps or size["tiny"]["clip_steps"]}   # what make_tiny gets
    use_evqa = not args.no_easyvqa
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # The tiny bases and stage 2, the long steps, as 2 processes of half the threads each on a CPU: the matrices are too
    # small for 2 threads to share one well (measured: 1.5x the tokens/s of one 2-thread process, README).
    processes = args.processes or (2 if threads >= 2 and not args.quick and not torch.cuda.is_available() else 1)

    if not os.path.exists(os.path.join(data_dir, "stats.json")):
        print(f"[1/6] world data: python -m llava_mini.world --out {data_dir} --train {size['world_train']} "
              f"--test {size['world_test']}")
        world.generate_dataset(data_dir, size["world_train"], size["world_test"], seed=0,
                               image_size=size["image_size"], quiet=args.quick)
    if use_evqa and not os.path.exists(os.path.join(evqa_dir, "easyvqa_test.json")):
        print(f"[1/6] easy-VQA: python -m llava_mini.easyvqa --out {evqa_dir}")
        easyvqa.import_easyvqa(evqa_dir, progress=not args.quick)
    evqa_train = [os.path.join(evqa_dir, "easyvqa_train.json")] if use_evqa else []

    base_stats = None
    if not os.path.exists(os.path.join(base_dir, "tiny-llama", "config.json")):
        base_stats = make_bases(data_dir, base_dir, evqa_train, tiny_sizes, processes, max(1, threads // processes))

    # --seed reaches both stages (the projector's initialisation, the data order); the data and the bases keep seed 0
    common = ["--seed", str(args.seed)] + (["--quiet"] if args.quiet else [])
    stage1 = ["--stage", "1", "--data", os.path.join(data_dir, "stage1.json"), "--image-root", data_dir,
              "--vision", os.path.join(base_dir, "tiny-clip"), "--llm", os.path.join(base_dir, "tiny-llama"),
              "--out", os.path.join(run_dir, "stage1"), "--epochs", str(size["stage1_epochs"]),
              "--threads", str(threads)] + common
    print("[3/6] stage 1: python train.py " + " ".join(stage1))
    stage1_args = parse_args(stage1)
    torch.manual_seed(stage1_args.seed)                 # as train() does: the same initial projector it will train
    model, tokenizer_json = build_model(stage1_args, recipe(stage1_args))
    tokenizer = Tokenizer.from_file(tokenizer_json)
    heldout_json = os.path.join(args.workdir, "data", f"heldout_captions{size['suffix']}.json")
    heldout = LlavaDataset(heldout_captions(data_dir, heldout_json), data_dir, tokenizer, "plain", model.config)
    caption_loss_start = mean_loss(model, heldout, tokenizer.pad_id)
    stage1_final = train(stage1_args)
    caption_loss_end = mean_loss(weights.load_llava(stage1_final), heldout, tokenizer.pad_id)
    print(f"stage 1: held-out caption loss {caption_loss_start:.3f} -> {caption_loss_end:.3f}")

    # The stage-2 mix, with the turns of the short-answer samples shuffled (see shuffled_turns).
    kinds = size["stage2_kinds"]
    world_mix = os.path.join(data_dir, f"stage2_{'_'.join(kinds)}_shuffled.json")
    write_json([shuffled_turns(e, seed=0) if e["id"].endswith("_vqa") else e
                for e in read_json(os.path.join(data_dir, "stage2.json")) if e["id"].rsplit("_", 1)[1] in kinds],
               world_mix)
    if use_evqa:
        evqa_train = [os.path.join(evqa_dir, "easyvqa_train_shuffled.json")]
        write_json([shuffled_turns(e, seed=0) for e in read_json(os.path.join(evqa_dir, "easyvqa_train.json"))],
                   evqa_train[0])
    stage2 = ["--stage", "2", "--data", world_mix] + evqa_train + \
             ["--image-root", data_dir] + ([evqa_dir] if use_evqa else []) + \
             ["--init", stage1_final, "--out", run_dir, "--epochs", str(size["stage2_epochs"]), "--group-by-length",
              "--threads", str(max(1, threads // processes))] + common
    stage2 += ["--max-steps", str(size["stage2_max_steps"])] if "stage2_max_steps" in size else []
    print(f"[4/6] stage 2: {launcher(processes)} train.py " + " ".join(stage2))
    final = run_stage(stage2, processes)

    print(f"[5/6] evaluation: python -m llava_mini.evaluate --model {final} --data {data_dir}" +
          (f" --easyvqa {evqa_dir}" if use_evqa else ""))
    model = weights.load_llava(final).eval()
    template = read_json(os.path.join(final, "llava_mini.json"))["template"]
    sets = [("shapes world", os.path.join(data_dir, "test.json"), data_dir)]
    if use_evqa:
        sets.append(("easy-VQA", os.path.join(evqa_dir, "easyvqa_test.json"), evqa_dir))
    results = {}
    with torch.no_grad():
        for name, path, root in sets:
            questions = read_json(path)
            results[name] = {blind: evaluate_vqa(model, tokenizer, questions[:size[n]], root, template=template,
                                                 blind=blind, batch_size=64)
                             for blind, n in ((False, "eval_questions"), (True, "blind_questions"))}
            results[name]["majority"] = world.answer_statistics(questions[:size["blind_questions"]])

    minutes = (time.time() - t0) / 60
    print(f"\n[6/6] report ({minutes:.1f} min wall, {threads} threads" +
          (f"; tiny bases and stage 2 as {processes} processes)" if processes > 1 else ")"))
    if base_stats:
        print(f"  tiny CLIP zero-shot retrieval {base_stats['clip_retrieval_top1']:.1%} (top-1 of "
              f"{base_stats['clip_retrieval_pool']}); tiny LLaMA held-out loss {base_stats['lm_heldout_loss']:.3f}")
    print(f"  stage 1 held-out caption loss: {caption_loss_start:.3f} at the start -> {caption_loss_end:.3f} at the end")
    print(f"  stage 2 mix: {', '.join(stage2[stage2.index('--data') + 1:stage2.index('--image-root')])} "
          f"(world samples of kind {', '.join(kinds)})")
    for name, res in results.items():
        seen, blind, majority = res[False], res[True], res["majority"]
        print(f"  {name}: accuracy {seen['overall']:.1%} with the image (n={seen['n']}); blind (blank image) "
              f"{blind['overall']:.1%} (first {blind['n']} questions)")
        print(f"    {'type':<12} {'image':>7} {'blind':>7} {'majority':>9}")
        for t in seen["per_type"]:
            print(f"    {t:<12} {seen['per_type'][t]:7.1%} {blind['per_type'].get(t, float('nan')):7.1%} "
                  f"{majority.get(t, {}).get('majority_rate', float('nan')):9.1%}   n={seen['count_per_type'][t]}")
    print(f"  model saved in {final}")
    print(f"  chat with it:  python chat.py --model {final}")
    return {"minutes": minutes, "caption_loss": (caption_loss_start, caption_loss_end), "final": final,
            "results": {k: {"seen": v[False]["overall"], "blind": v[True]["overall"],
                            "per_type": v[False]["per_type"], "blind_per_type": v[True]["per_type"]}
                        for k, v in results.items()}}
