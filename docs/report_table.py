"""The README's results table, printed from a default run's report.json (so no figure is copied by hand).

    python docs/report_table.py checkpoints/tiny/final/report.json
    python docs/report_table.py checkpoints/tiny/final/report.json checkpoints/tiny-seed1/final/report.json ...

With several reports (seeds), each accuracy is followed by the mean over all of them.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava_mini import cli  # noqa: E402
from llava_mini.jsonio import read_json  # noqa: E402


def rows(reports: list[dict]) -> list[tuple[str, str]]:
    first = reports[0]

    def both(get, fmt="{:.1%}"):
        values = [get(r) for r in reports]
        mean = sum(values) / len(values)
        return fmt.format(values[0]) + (f" (mean of {len(values)}: {fmt.format(mean)})" if len(values) > 1 else "")

    bases, world, evqa = first["bases"], first["results"]["shapes world"], first["results"].get("easy-VQA")
    probes = ", ".join(f"{k} {v:.1%}" for k, v in bases["tower_probes"].items())
    premise = bases["text_qa"]
    out = [("the shipped tiny CLIP: layer -2 probes of each held-out object", probes),
           ("the shipped tiny LLaMA: held-out questions from the scene in words (text only)",
            f"{premise['overall']:.1%} (held-out phrasings {premise['per_phrasing'].get('heldout', 0):.1%})"),
           ("stage 1 held-out caption loss", f"{first['caption_loss'][0]:.3f} -> {first['caption_loss'][1]:.3f}"),
           (f"shapes world, held-out short answers ({sum(1 for _ in world['per_type'])} types)",
            "**" + both(lambda r: r["results"]["shapes world"]["image"]) + f"** with the image, "
            f"{world['blind']:.1%} blind"),
           ("... worded as in training / in held-out phrasings",
            " / ".join(f"{world['per_phrasing'][k]:.1%}" for k in ("seen", "heldout"))),
           *([("... replies that answer another type of question (seen / held-out phrasings)",
                " / ".join(f"{world['off_type_per_phrasing'][k]:.1%}" for k in ("seen", "heldout")))]
             if world.get("off_type_per_phrasing") else []),   # reports before the measure have none
           ("... per type (image / blind)",
            ", ".join(f"{t} {v:.0%}/{world['blind_per_type'].get(t, 0):.0%}" for t, v in world["per_type"].items())),
           *([("... look-ups: colour, shape and position where the scene offers 2+ answers (per type: model / picking)",
               "**" + both(lambda r: r["results"]["shapes world"]["lookup"]["accuracy"]) + "**, picking one of the "
               f"scene's: {world['lookup']['chance']:.1%} (" +
               ", ".join(f"{t} {v['accuracy']:.0%}/{v['chance']:.0%}" for t, v in world["lookup"]["per_type"].items())
               + ")")] if world.get("lookup") else [])]     # reports before the measure have none
    c = first.get("chat")
    if c:               # reports made before the chat score have none
        out.append((f"... the same questions asked as in chat: no prompt, the answer read from the sentence "
                    f"(first {c['n']})", "**" + both(lambda r: r["chat"]["overall"]) + "** (" +
                    ", ".join(f"{t} {v:.0%}" for t, v in c["per_type"].items()) + ")"))
    if evqa:
        out.append(("easy-VQA test", "**" + both(lambda r: r["results"]["easy-VQA"]["image"]) +
                    f"** with the image, {evqa['blind']:.1%} blind"))
    bench = first["bench"]
    out.append(("LLaVA-Bench-style relative score, rule judge (50 held-out images x 3)",
                "**" + both(lambda r: r["bench"]["overall"]["relative"], "{:.1f}%") + "** (" +
                ", ".join(f"{c} {bench[c]['relative']:.1f}" for c in ("conv", "detail", "complex") if c in bench) +
                "; the paper: 85.1%)"))
    d = first["describe"]
    out.append((f"\"{d['prompt']}\" on {d['n']} held-out images",
                "every object named in **" + both(lambda r: r["describe"]["all_named"]) +
                f"**; object recall {d['recall']:.1%}, precision {d['precision']:.1%}"))
    f = first.get("followups")
    if f:               # reports made before the follow-ups were measured have none
        out.append((f"... then, as the next turn, short answers ({f['n']} questions)",
                    "**" + both(lambda r: r["followups"]["after_description"]) + f"** (the same questions asked "
                    f"first: {f['asked_first']:.1%})"))
    m = first.get("missing")
    if m:               # reports made before the questions about absent objects have none
        out.append(("\"Where is the X?\" about an object the image does not have",
                    "\"there is none\" in **" + both(lambda r: r["missing"]["absent_denied"]) + "** of "
                    f"{m['n_absent']} ({m['absent_hard_denied']:.1%} where it shares a colour or a shape with one "
                    f"there); about one it has, {m['present_denied']:.1%}"))
    pr = m and m.get("presence")
    if pr:              # nor do those made before the questions about one attribute alone
        out.append(("\"Is there a star?\", \"Is anything red?\", \"Which object is the largest?\" (no prompt; "
                    f"{pr['n']} questions, half in held-out wordings)",
                    "**" + both(lambda r: r["missing"]["presence"]["right"]) + "** (seen wordings "
                    f"{pr['per_phrasing']['seen']['right']:.1%}, held-out {pr['per_phrasing']['heldout']['right']:.1%};"
                    " " + ", ".join(f"{t} {v['right']:.0%}" for t, v in pr["per_truth"].items()) + ")"))
    return out


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="report.json files; the first is the one shown")
    paths = p.parse_args(argv).reports
    reports = [read_json(path) for path in paths]
    try:
        table = rows(reports)
        t = reports[0]["timing"]
        footer = (f"\n{reports[0]['minutes']:.1f} min wall; stage 2 {t['stage2_steps']} steps at "
                  f"{t['stage2']['seconds_per_step']} s/step ({t['stage2_processes']} processes)")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{' or '.join(paths)}: not a pipeline report.json (no {e})") from None
    print("| measurement | result |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    print(footer)


if __name__ == "__main__":
    cli.run(main)
