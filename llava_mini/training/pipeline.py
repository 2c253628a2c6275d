"""The default job, `python train.py` with no arguments: the whole LLaVA recipe at classroom size on a CPU.

    python train.py                  # world data -> stage 1 -> stage 2 -> evaluation -> report, on the shipped bases
    python train.py --quick          # the same at toy size (a smoke test, ~15 s)
    python train.py --workdir DIR    # put data/ and checkpoints/ under DIR
    python train.py --seed 1         # the stages with another seed (how much a result is luck: docs/EXPERIMENTS.md)
    python train.py --processes 1    # the stages in this process (default on a multi-core CPU: 2 under torchrun)
    python train.py --make-bases     # train your own tiny bases first (weights/make_tiny.py, over an hour on 2 cores)

Each step prints the command that does it alone, so a student can rerun any one of them: `python -m
llava_mini.synth.world`, `python -m llava_mini.synth.easyvqa`, `python weights/make_tiny.py`, `python train.py --stage
1|2 --preset tiny`, `python -m llava_mini.eval.evaluate`. Every size comes from recipes.CLASSROOM (or QUICK), which
make_tiny and the `tiny` preset read too. The stages are loop.train(), the loop that also runs the paper's recipe on GPUs.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import torch

from llava_mini.data.dataset import shuffled_turns, with_unfamiliar_words
from llava_mini.eval.evaluate import (evaluate_bench, evaluate_descriptions, evaluate_followups, evaluate_missing,
                                      evaluate_vqa)
from llava_mini.eval.missing import missing_line, presence_line
from llava_mini.eval.judges import RuleJudge
from llava_mini.eval.scoring import lookup_line
from llava_mini.jsonio import read_json, write_json
from llava_mini.loading import model_folder
from llava_mini.loading.manifest import ManifestError, verify_manifest
from llava_mini.synth import easyvqa, world
from llava_mini.training.args import parse_args
from llava_mini.training.loop import train
from llava_mini.training.recipes import BASES_REPORT, CLASSROOM, QUICK, BaseSizes, Classroom

FOLLOWUP_IMAGES = 100      # held-out images whose questions are asked again after the model's own description
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_PY = os.path.join(REPO, "train.py")
MAKE_TINY_PY = os.path.join(REPO, "weights", "make_tiny.py")
SHIPPED_BASES = os.path.join(REPO, "weights", "tiny")   # the pretrained tiny CLIP and LLaMA, like CLIP and Vicuna


def run_command(cmd: list[str], script: str, threads: int) -> None:
    """Run `cmd` (which runs `script`) as a child process with `threads` threads per process. Raises SystemExit
    naming the script and the command if it fails."""
    # torchrun would set OMP_NUM_THREADS=1 itself, with a warning; say the thread count it gets
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()      # Ctrl-C reached the children too: let them write their resumable checkpoint
        raise
    if code != 0:
        raise SystemExit(f"error: {os.path.basename(script)} failed with exit code {code}: {' '.join(cmd)}")


def torchrun(script: str, argv: list[str], processes: int, threads: int) -> None:
    """`torchrun --standalone --nproc_per_node PROCESSES SCRIPT ARGV`, each process with `threads` threads, the way
    a multi-GPU run is launched."""
    run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 script] + argv, script, threads)


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


def make_bases(data_dir: str, base_dir: str, extra_text: list[str], sizes: BaseSizes, processes: int,
               threads: int) -> dict:
    """Stage 0, `python weights/make_tiny.py`: as one process, or under torchrun, where the processes share each
    batch (the CLIP gathers its features). Returns what it measured (make_tiny writes it to BASES_REPORT)."""
    argv = ["--data", data_dir, "--out", base_dir] + (["--extra-text"] + extra_text if extra_text else [])
    argv += [a for k, v in dataclasses.asdict(sizes).items() for a in ("--" + k.replace("_", "-"), str(v))]
    argv += ["--threads", str(threads)]
    print(f"[2/6] tiny bases: {launcher(processes)} weights/make_tiny.py " + " ".join(argv))
    if processes == 1:
        run_command([sys.executable, MAKE_TINY_PY] + argv, MAKE_TINY_PY, threads)
    else:
        torchrun(MAKE_TINY_PY, argv, processes, threads)
    return read_json(os.path.join(base_dir, BASES_REPORT))


def heldout_captions(data_dir: str, out_path: str) -> str:
    """Stage-1 style pairs (<image> + caption) for the held-out test scenes, written as LLaVA JSON."""
    scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    write_json([{"id": f"{s['id']}_caption", "image": s["image"], "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image concisely."},
        {"from": "gpt", "value": s["captions"][0]}]} for s in scenes], out_path)
    return out_path


def makes_bases(args) -> bool:
    """The run trains its own bases (stage 0) instead of starting from the shipped ones: --make-bases or
    --clip-steps."""
    return bool(args.make_bases or args.clip_steps)


def pipeline_dirs(args, size: Classroom) -> tuple[str, str, str, str]:
    """(world data, easy-VQA data, bases, run) folders under --workdir. The bases are the shipped weights/tiny, or
    with --make-bases checkpoints/base; a run on its own bases gets a run folder of its own (tiny-ownbases,
    tiny-clip4000 for --clip-steps 4000), so it never reuses or overwrites the default one."""
    tower = f"-clip{args.clip_steps}" if args.clip_steps and args.clip_steps != size.bases.clip_steps else ""
    own = tower or ("-ownbases" if makes_bases(args) else "")
    seed = f"-seed{args.seed}" if args.seed else ""
    data, checkpoints = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "checkpoints")
    bases = os.path.join(checkpoints, "base" + size.suffix + tower) if makes_bases(args) else SHIPPED_BASES
    return (os.path.join(data, "shapes" + size.suffix), os.path.join(data, "easyvqa"), bases,
            os.path.join(checkpoints, "tiny" + size.suffix + own + seed))


def shipped_bases(base_dir: str) -> dict:
    """The shipped bases, checked against their manifest (a changed or corrupt file is an error naming it, never a
    silent retrain); returns what make_tiny measured when it made them."""
    try:
        verify_manifest(base_dir)
    except ManifestError as e:
        raise SystemExit(f"error: the shipped tiny bases do not match their manifest: {e}")
    return read_json(os.path.join(base_dir, BASES_REPORT))


def stage2_mix(data_dir: str, kinds: tuple, evqa_dir: str | None, unfamiliar_word_rate: float = 0.0) -> list[str]:
    """The stage-2 data files: the world's samples of `kinds` and easy-VQA train, the turns of every short-answer
    sample shuffled (see shuffled_turns), and a made-up word in `unfamiliar_word_rate` of the questions (see
    with_unfamiliar_words)."""
    def prepared(entry: dict, shuffle: bool) -> dict:
        entry = shuffled_turns(entry, seed=0) if shuffle else entry
        return with_unfamiliar_words(entry, seed=0, rate=unfamiliar_word_rate)

    world_mix = os.path.join(data_dir, f"stage2_{'_'.join(kinds)}_shuffled.json")
    write_json([prepared(e, shuffle=e["id"].endswith("_vqa")) for e in read_json(os.path.join(data_dir, "stage2.json"))
                if e["id"].rsplit("_", 1)[1] in kinds], world_mix)
    if evqa_dir is None:
        return [world_mix]
    evqa_mix = os.path.join(evqa_dir, "easyvqa_train_shuffled.json")
    write_json([prepared(e, shuffle=True) for e in read_json(os.path.join(evqa_dir, "easyvqa_train.json"))], evqa_mix)
    return [world_mix, evqa_mix]


def run_pipeline(args) -> dict:
    """World data -> tiny bases (the shipped ones, checked) -> stage 1 -> stage 2 -> evaluation -> report. Each step
    prints the command that does it alone. The data, and with --make-bases the bases, are made only when missing
    (delete the folder to redo them); the two stages always run."""
    size = QUICK if args.quick else CLASSROOM
    t0 = time.time()
    data_dir, evqa_dir, base_dir, run_dir = pipeline_dirs(args, size)
    bases = dataclasses.replace(size.bases, clip_steps=args.clip_steps or size.bases.clip_steps)
    use_evqa = not args.no_easyvqa
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # The tiny bases and both stages as 2 processes of half the threads each on a CPU: the matrices are too small for
    # 2 threads to share one well (measured: 1.5x the tokens/s of one 2-thread process, docs/EXPERIMENTS.md).
    processes = args.processes or (2 if threads >= 2 and not args.quick and not torch.cuda.is_available() else 1)

    if not os.path.exists(os.path.join(data_dir, "stats.json")):
        print(f"[1/6] world data: python -m llava_mini.synth.world --out {data_dir} --train {size.world_train} "
              f"--test {size.world_test} --image-size {bases.image_size}")
        world.generate_dataset(data_dir, size.world_train, size.world_test, seed=0, image_size=bases.image_size,
                               quiet=args.quick)
    if use_evqa and not os.path.exists(os.path.join(evqa_dir, "easyvqa_test.json")):
        print(f"[1/6] easy-VQA: python -m llava_mini.synth.easyvqa --out {evqa_dir}")
        easyvqa.import_easyvqa(evqa_dir, progress=not args.quick)
    evqa_train = [os.path.join(evqa_dir, "easyvqa_train.json")] if use_evqa else []

    if not makes_bases(args):
        print(f"[2/6] tiny bases: the shipped {os.path.relpath(base_dir)} (checked against its SHA256SUMS; "
              f"python train.py --make-bases trains your own)")
        base_stats = shipped_bases(base_dir)
    elif not os.path.exists(os.path.join(base_dir, BASES_REPORT)):
        base_stats = make_bases(data_dir, base_dir, evqa_train, bases, processes, max(1, threads // processes))
    else:
        print(f"[2/6] tiny bases: {base_dir}, made earlier (delete the folder to make them again)")
        base_stats = read_json(os.path.join(base_dir, BASES_REPORT))

    # --seed reaches both stages (the projector's initialisation, the data order); the data and the bases keep seed 0
    common = ["--preset", size.preset, "--seed", str(args.seed)] + (["--quiet"] if args.quiet else [])
    heldout_json = heldout_captions(data_dir, os.path.join(args.workdir, "data", f"heldout_captions{size.suffix}.json"))
    stage1 = ["--stage", "1", "--data", os.path.join(data_dir, "stage1.json"), "--image-root", data_dir,
              "--vision", os.path.join(base_dir, "tiny-clip"), "--llm", os.path.join(base_dir, "tiny-llama"),
              "--out", os.path.join(run_dir, "stage1"), "--eval-data", heldout_json,
              "--threads", str(max(1, threads // processes))] + common
    print(f"[3/6] stage 1: {launcher(processes)} train.py " + " ".join(stage1))
    stage1_final = run_stage(stage1, processes)
    stage1_meta = read_json(os.path.join(stage1_final, "llava_mini.json"))
    caption_loss = (stage1_meta["heldout_loss_start"], stage1_meta["heldout_loss_end"])

    mix = stage2_mix(data_dir, size.stage2_kinds, evqa_dir if use_evqa else None, size.unfamiliar_word_rate)
    stage2 = ["--stage", "2", "--data", *mix, "--image-root", data_dir] + ([evqa_dir] if use_evqa else []) + \
             ["--init", stage1_final, "--out", run_dir, "--group-by-length",
              "--threads", str(max(1, threads // processes))] + common
    print(f"[4/6] stage 2: {launcher(processes)} train.py " + " ".join(stage2))
    final = run_stage(stage2, processes)

    print(f"[5/6] evaluation: python -m llava_mini.eval.evaluate --model {final} --data {data_dir}" +
          (f" --easyvqa {evqa_dir}" if use_evqa else ""))
    model, tokenizer, template = model_folder.load_checkpoint(final)
    world_questions = read_json(os.path.join(data_dir, "test.json"))
    sets = [("shapes world", world_questions, data_dir)]
    if use_evqa:
        sets.append(("easy-VQA", read_json(os.path.join(evqa_dir, "easyvqa_test.json")), evqa_dir))
    results = {}
    with torch.no_grad():
        for name, questions, root in sets:
            results[name] = {blind: evaluate_vqa(model, tokenizer, questions[:n], root, template=template,
                                                 blind=blind, batch_size=64)
                             for blind, n in ((False, size.eval_questions), (True, size.blind_questions))}
            results[name]["majority"] = world.answer_statistics(questions[:size.blind_questions])
        # The same questions as a student asks them in chat.py: no prompt, the answer read from the sentence
        chat = evaluate_vqa(model, tokenizer, world_questions[:size.chat_questions], data_dir, template=template,
                            chat=True, batch_size=64)
        # What a visual assistant is measured by: open questions (rule judge) and "Describe the image."
        items = read_json(os.path.join(data_dir, "bench.json"))
        references = {it["id"]: it["reference"] for it in items}
        bench = evaluate_bench(model, tokenizer, items, data_dir, judge=RuleJudge(), template=template, batch_size=64)
        scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
        described = evaluate_descriptions(model, tokenizer, scenes, data_dir, template=template, batch_size=64)
        missing = evaluate_missing(model, tokenizer, scenes, world.vocabulary(world.WorldConfig()), data_dir,
                                   template=template, batch_size=64)
        # ... and a conversation: the same short-answer questions, asked after the model's own description
        cold = results["shapes world"][False]["predictions"]
        followups = evaluate_followups(
            model, tokenizer, world_questions[:len(cold)],
            {d["image"]: d["answer"] for d in described["descriptions"][:FOLLOWUP_IMAGES]},
            data_dir, template=template, batch_size=64, asked_first={p["id"]: p["prediction"] for p in cold})

    minutes = (time.time() - t0) / 60
    stage2_meta = read_json(os.path.join(final, "llava_mini.json"))
    timing = {"stage1": {k: stage1_meta.get(k) for k in ("train_seconds", "seconds_per_step", "tokens_per_s")},
              "stage2": {k: stage2_meta.get(k) for k in ("train_seconds", "seconds_per_step", "tokens_per_s")},
              "stage2_steps": stage2_meta["step"], "stage2_processes": processes}
    # three held-out images, one of each category: conversation on the first, description on the second, reasoning
    # on the third (bench.json holds conv, detail, complex per image, in that order)
    picked = [bench["records"][i] for i in (0, 4, 8) if i < len(bench["records"])] or bench["records"][:3]
    examples = [{"image": r["image"], "question": r["question"], "answer": r["answer"], "truth": references[r["id"]]}
                for r in picked]
    report = {"minutes": minutes, "threads": threads, "timing": timing, "caption_loss": caption_loss, "final": final,
              "bases": base_stats, "stage2_mix": mix, "stage2_kinds": list(size.stage2_kinds),
              "results": {k: {"image": v[False]["overall"], "blind": v[True]["overall"],
                              "per_type": v[False]["per_type"], "blind_per_type": v[True]["per_type"],
                              "per_phrasing": v[False].get("per_phrasing"),
                              "off_type": v[False]["off_type"],
                              "off_type_per_phrasing": v[False].get("off_type_per_phrasing"),
                              "off_type_per_type": v[False]["off_type_per_type"],
                              "lookup": v[False].get("lookup"),
                              "majority_per_type": {t: m["majority_rate"] for t, m in v["majority"].items()}}
                          for k, v in results.items()},
              "chat": {k: chat.get(k) for k in ("overall", "n", "per_type", "per_phrasing", "off_type")},
              "bench": bench["scores"], "bench_per_phrasing": bench.get("per_phrasing"),
              "describe": {k: v for k, v in described.items() if k != "descriptions"},
              "missing": {k: v for k, v in missing.items() if not k.endswith("examples")},
              "describe_examples": [{k: d[k] for k in ("id", "answer", "captions")} for d in described["descriptions"][:3]],
              "followups": {"n": followups["n"], "after_description": followups["overall"],
                            "asked_first": followups["asked_first"]["overall"], "per_type": followups["per_type"],
                            "per_type_asked_first": followups["asked_first"]["per_type"]},
              "examples": examples}
    print_report(report, results)
    write_json(report, os.path.join(final, "report.json"))
    print(f"  report written to {os.path.join(final, 'report.json')}")
    return report


def print_report(report: dict, results: dict) -> None:
    """The report as the run's last screen: what the bases could do, what each stage did, and the model's scores."""
    t, bases = report["timing"], report["bases"]
    print(f"\n[6/6] report ({report['minutes']:.1f} min wall, {report['threads']} threads; stage 2: "
          f"{t['stage2_steps']} steps, {t['stage2']['seconds_per_step']} s each, as {t['stage2_processes']} processes)")
    if bases:
        print(f"  bases ({bases.get('llama_dir', '')}): tiny CLIP retrieval {bases['clip_retrieval_top1']:.1%} (top-1 of "
              f"{bases['clip_retrieval_pool']}); tiny LLaMA held-out loss {bases['lm_heldout_loss']:.3f}")
        if "tower_probes" in bases:
            print("    tower probes (layer -2 patch features): " +
                  ", ".join(f"{k} {v:.1%}" for k, v in bases["tower_probes"].items()))
        if "text_qa" in bases:
            qa = bases["text_qa"]
            print(f"    text-only premise (the LLM, the scene in words): {qa['overall']:.1%} on the held-out questions (" +
                  ", ".join(f"{k} phrasings {v:.1%}" for k, v in qa["per_phrasing"].items()) + ")")
    loss = report["caption_loss"]
    print(f"  stage 1 held-out caption loss: {loss[0]:.3f} at the start -> {loss[1]:.3f} at the end")
    print(f"  stage 2 mix: {', '.join(report['stage2_mix'])} (world samples of kind {', '.join(report['stage2_kinds'])})")
    for name, res in results.items():
        seen, blind, majority = res[False], res[True], res["majority"]
        print(f"  {name}: accuracy {seen['overall']:.1%} with the image (n={seen['n']}); blind (blank image) "
              f"{blind['overall']:.1%} (first {blind['n']} questions)" +
              "".join(f"; {k} phrasings {v:.1%}" for k, v in seen.get("per_phrasing", {}).items()))
        print(f"    replies of another type (a shape for \"where?\"): {seen['off_type']:.1%}" +
              "".join(f"; {k} phrasings {v:.1%}" for k, v in seen.get("off_type_per_phrasing", {}).items()))
        if seen.get("lookup"):
            print(f"    {lookup_line(seen['lookup'])}")
        print(f"    {'type':<12} {'image':>7} {'blind':>7} {'majority':>9}")
        for q in seen["per_type"]:
            print(f"    {q:<12} {seen['per_type'][q]:7.1%} {blind['per_type'].get(q, float('nan')):7.1%} "
                  f"{majority.get(q, {}).get('majority_rate', float('nan')):9.1%}   n={seen['count_per_type'][q]}")
    c = report["chat"]
    print(f"  the same questions asked as in chat (no prompt; the answer read from the sentence): {c['overall']:.1%} "
          f"(first {c['n']})" + "".join(f"; {k} phrasings {v:.1%}" for k, v in (c["per_phrasing"] or {}).items()))
    print("    " + ", ".join(f"{t} {v:.1%}" for t, v in c["per_type"].items()))
    scores = report["bench"]
    print("  LLaVA-Bench-style relative score (rule judge): " +
          ", ".join(f"{c} {s['relative']:.1f}%" for c, s in scores.items()) + f" (n={scores['overall']['n']})" +
          "".join(f"; {k} phrasings {v:.1f}%" for k, v in (report["bench_per_phrasing"] or {}).items()))
    d = report["describe"]
    print(f"  \"{d['prompt']}\" on {d['n']} held-out images: object recall {d['recall']:.1%}, precision "
          f"{d['precision']:.1%}; every object named in {d['all_named']:.1%}, exactly {d['exact']:.1%}")
    print(f"  {missing_line(report['missing'])}")
    print(f"  {presence_line(report['missing']['presence'])}")
    f = report["followups"]
    print(f"  short answers asked after that description: {f['after_description']:.1%} (n={f['n']}; the same "
          f"questions asked first: {f['asked_first']:.1%})")
    for e in report["examples"]:
        print(f"  example ({e['image']}): {e['question']!r}\n    model: {e['answer']!r}\n    truth: {e['truth']!r}")
    print(f"  model saved in {report['final']}")
    print(f"  chat with it:  python chat.py --model {report['final']}")
