"""The paper's teacher, run for real: a language-only model writes conversation, detailed-description and
complex-reasoning samples from world scenes' captions and boxes; each sample is fact-checked against the scene.

    python serve.py --model checkpoints/smollm2 --port 8001 --quiet &          # SmolLM2-135M-Instruct, offline
    python -m llava_mini.synth.world --out data/shapes --llm-teacher http://127.0.0.1:8001/v1 --llm-model smollm2 \\
        --llm-scenes 12 --llm-reply-format lines                          # a new world, and the teacher on it
    python -m llava_mini.synth.teacher_run --data data/shapes --llm-teacher http://127.0.0.1:8001/v1 \\
        --llm-model smollm2 --llm-scenes 12 --llm-reply-format lines      # the teacher on a world already written

Either writes `llm_teacher.json` (the kept samples, LLaVA JSON like stage2.json) and `llm_teacher_report.json`
into the world's folder and prints how many samples were written and rejected, and why (a reply that is not in
the format the prompt asks for; a claim that is false of the scene: an object, count, colour or place), one
example of each, and the seconds per sample. lines: Q:/A: lines, which a small model can copy; json: the paper's
list of turns.
"""
from __future__ import annotations

import argparse
import os
import time

from tqdm import tqdm

from llava_mini import cli
from llava_mini.jsonio import read_json, write_json
from llava_mini.synth.fact_check import fact_check
from llava_mini.synth.llm_client import ChatClient
from llava_mini.synth.llm_teacher import REPLY_FORMATS, LLMTeacher
from llava_mini.synth.teacher import symbolic_context

KINDS = ("conversation", "detail", "complex")


def run_teacher(teacher: LLMTeacher, scenes: list[dict]) -> tuple[list[dict], dict]:
    """Every kind for every scene: (kept LLaVA samples, a report of written / rejected / why / seconds)."""
    kept, start = [], time.time()
    for scene in tqdm(scenes, desc="LLM teacher", unit="scene"):
        context = symbolic_context(scene)
        for kind in KINDS:
            turns = getattr(teacher, kind)(context)
            if turns is not None:
                kept.append({"id": f"{scene['id']}_llm_{kind}", "image": scene["image"], "conversations": turns})
    asked = len(scenes) * len(KINDS)
    report = {"asked": asked, "written": len(kept), "rejected": dict(teacher.rejected),
              "reasons": dict(teacher.reasons.most_common()),
              "seconds_per_sample": (time.time() - start) / max(1, asked),
              "examples": {reason: {"kind": kind, "why": why, "reply": reply[:600]}
                           for reason, (kind, reply, why) in teacher.examples.items()}}
    return kept, report


def add_teacher_arguments(p: argparse.ArgumentParser, url_default: str | None) -> None:
    """The flags of both commands that run the teacher (url_default None: the teacher runs only when asked)."""
    p.add_argument("--llm-teacher", metavar="URL", default=url_default,
                   help="an OpenAI-compatible endpoint (serve.py) whose model writes samples from the scenes")
    p.add_argument("--llm-model", default="smollm2", help="the model's name at that endpoint")
    p.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable with its key, if any")
    p.add_argument("--llm-scenes", type=cli.positive_int, default=12, help="how many train scenes to write for")
    p.add_argument("--llm-timeout", type=cli.positive_float, default=300.0, help="seconds per request")
    p.add_argument("--llm-reply-format", choices=sorted(REPLY_FORMATS), default="json",
                   help="json: the paper's list of turns; lines: Q:/A: lines, which a small model can copy")


def teach_world(args: argparse.Namespace, data_dir: str) -> tuple[list[dict], dict]:
    """Run the teacher the flags name on the world in `data_dir`; write its samples and report there; print it."""
    scenes = read_json(os.path.join(data_dir, "scenes_train.json"))[:args.llm_scenes]
    client = ChatClient(args.llm_teacher, args.llm_model, api_key_env=args.llm_api_key_env,
                        timeout=args.llm_timeout, max_retries=1)
    kept, report = run_teacher(LLMTeacher(client, check=fact_check, reply_format=args.llm_reply_format), scenes)
    print(f"LLM teacher ({args.llm_model} at {args.llm_teacher}) on {len(scenes)} scenes: {report['written']} of "
          f"{report['asked']} samples written, {report['asked'] - report['written']} rejected; "
          f"{report['seconds_per_sample']:.1f} s per sample")
    for reason, n in report["reasons"].items():
        example = report["examples"][reason]
        print(f"  rejected {n}x: {reason}; e.g. ({example['kind']}) {example['why']}")
    out = os.path.join(data_dir, "llm_teacher.json")
    write_json(kept, out)
    write_json(report, os.path.join(data_dir, "llm_teacher_report.json"))
    print(f"wrote {out} and llm_teacher_report.json")
    return kept, report


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/shapes", help="the world: its scenes_train.json; the samples go here")
    add_teacher_arguments(p, url_default="http://127.0.0.1:8001/v1")
    args = p.parse_args(argv)
    return teach_world(args, args.data)


if __name__ == "__main__":
    cli.run(main)
