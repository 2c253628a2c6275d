"""The paper's teacher, run for real: a language-only model writes conversation, detailed-description and
complex-reasoning samples from world scenes' captions and boxes; each sample is fact-checked against the scene.

    python serve.py --model checkpoints/smollm2 --port 8001 --quiet &          # SmolLM2-135M-Instruct, offline
    python -m llava_mini.eval.teacher_run --url http://127.0.0.1:8001/v1 --model smollm2 --data data/shapes \\
        --scenes 12 --out data/shapes/llm_teacher.json [--reply-format lines]   # lines: for a small model

It prints how many samples were written and rejected, and why (a reply that is not the JSON list of turns the
prompt asks for; a claim that is false of the scene: an object, count, colour or place), one example of each, and
the seconds per sample. The kept samples are LLaVA JSON, like stage2.json.
"""
from __future__ import annotations

import os
import time

from tqdm import tqdm

from llava_mini import cli
from llava_mini.eval.fact_check import fact_check
from llava_mini.jsonio import read_json, write_json
from llava_mini.synth.llm_client import ChatClient
from llava_mini.synth.llm_teacher import LLMTeacher
from llava_mini.synth.world import symbolic_context

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


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8001/v1", help="an OpenAI-compatible endpoint (serve.py)")
    p.add_argument("--model", default="smollm2", help="the model's name at that endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable with its key, if any")
    p.add_argument("--data", default="data/shapes", help="the world: its scenes_train.json")
    p.add_argument("--scenes", type=cli.positive_int, default=12, help="how many train scenes to write for")
    p.add_argument("--out", help="write the kept samples here (LLaVA JSON), and the report beside it")
    p.add_argument("--timeout", type=cli.positive_float, default=300.0, help="seconds per request")
    p.add_argument("--reply-format", choices=("json", "lines"), default="json",
                   help="json: the paper's list of turns; lines: Q:/A: lines, which a small model can copy")
    args = p.parse_args(argv)
    scenes = read_json(os.path.join(args.data, "scenes_train.json"))[:args.scenes]
    client = ChatClient(args.url, args.model, api_key_env=args.api_key_env, timeout=args.timeout, max_retries=1)
    kept, report = run_teacher(LLMTeacher(client, check=fact_check, reply_format=args.reply_format), scenes)
    print(f"LLM teacher ({args.model} at {args.url}) on {len(scenes)} scenes: {report['written']} of "
          f"{report['asked']} samples written, {report['asked'] - report['written']} rejected; "
          f"{report['seconds_per_sample']:.1f} s per sample")
    for reason, n in report["reasons"].items():
        example = report["examples"][reason]
        print(f"  rejected {n}x: {reason}; e.g. ({example['kind']}) {example['why']}")
    if args.out:
        write_json(kept, args.out)
        write_json(report, os.path.splitext(args.out)[0] + "_report.json")
        print(f"wrote {args.out} and its report")
    return kept, report


if __name__ == "__main__":
    cli.run(main)
