"""Measure what the model learned: VQA accuracy with baselines, a LLaVA-Bench-style judged score, ScienceQA.

    python -m llava_mini.eval.evaluate --model checkpoints/tiny/final --data data/shapes
    python -m llava_mini.eval.evaluate --model checkpoints/tiny/final --data data/shapes --easyvqa data/easyvqa \
        --bench --judge rule --out report.json
    python -m llava_mini.eval.evaluate --model DIR --data data/shapes --bench --judge openai \
        --judge-url http://127.0.0.1:8000/v1 --judge-model gpt-4o-mini
    python -m llava_mini.eval.evaluate --model DIR --scienceqa tests/fixtures/scienceqa/test.json
    python -m llava_mini.eval.evaluate --model checkpoints/tiny/final --data data/shapes --confusion position   # how it errs
    python -m llava_mini.eval.evaluate --model checkpoints/tiny/final --data data/shapes --describe --missing --chat
    # --describe: "Describe the image.", then the short answers (with --bench the open questions) again after it;
    # --missing: objects that are not there; --chat: the short answers asked with no prompt, as chat.py asks them

Three measurements, each split into a scoring layer (plain functions over strings, easy to test by hand) and a
model layer (batched greedy generation):

1. VQA accuracy. The model answers held-out short-answer questions with LLaVA-1.5's short-answer prompt; an
   answer counts when it equals the reference after normalisation (lower case, no punctuation, no articles,
   number words as digits). Two baselines say how much of that accuracy comes from the image:
   - blind: every image is replaced by a blank mean-colour image. The projector still runs, so the LLM sees
     image tokens of the kind it was trained on, but they carry nothing. What remains is the language prior
     (e.g. "how many ...?" -> "2").
   - no projector: the projector's output is zeroed, so the image positions hold zero vectors: the same question
     asked more bluntly, for a trained LLM (not one whose only image signal is the projector bias).
   Asked with no prompt (--chat), the model answers in a sentence; the answer it states is scored the same way.
2. LLaVA-Bench relative score. The model answers open questions; a judge that sees only the symbolic context
   (captions and boxes) scores the reference answer and the model's answer 1-10; the score is
   mean(model) / mean(reference) x 100 per category (conv, detail, complex) and overall. The judges are in
   judges.py: `RuleJudge` checks the facts it can parse (colours, shapes, counts, positions) against the scene;
   `LLMJudge` asks any OpenAI-compatible endpoint with a review prompt in the style of the paper.
3. ScienceQA in LLaVA's converted format: multiple choice, the model answers with a letter; accuracy over all
   questions and over those with an image.
"""
from __future__ import annotations

import contextlib
import os

# SHORT_ANSWER_PROMPT: LLaVA-1.5's "\nAnswer the question using a single word or phrase."
from llava_mini import cli
from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, TEMPLATES, stop_token_ids
from llava_mini.eval.missing import (missing_line, missing_object_questions, missing_summary, presence_line,
                                     presence_questions, presence_summary)
from llava_mini.eval.scoring import (answer_confusion, answer_in_sentence, lookup_line, read_scienceqa,
                                     scienceqa_accuracy, vqa_accuracy)
from llava_mini.jsonio import read_json, write_json
from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.safepath import path_inside

LETTER_PROMPT = "\nAnswer with the option's letter from the given choices directly."
DESCRIBE_PROMPT = "Describe the image."

# ---------------------------------------------------------------------------------------------------------------
# The model layer: load a checkpoint, answer prompts in batches

def blank_image(vision_config):
    """The blind baseline's image: one flat mean colour, i.e. all zeros after normalisation."""
    from PIL import Image

    from llava_mini.data.images import mean_color
    return Image.new("RGB", (vision_config.image_size, vision_config.image_size), mean_color(vision_config))


@contextlib.contextmanager
def zeroed_projector(model):
    """Inside this block the projector outputs zeros: the image positions are there, but carry nothing."""
    handle = model.multi_modal_projector.register_forward_hook(lambda module, args, output: output * 0)
    try:
        yield model
    finally:
        handle.remove()


def right_pad(ids: list[list[int]], pad_id: int):
    """Token-id lists as one right-padded batch: input_ids (B, T) and segment ids (B, T), 1 on tokens, 0 on padding."""
    import torch
    T = max(map(len, ids))
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    segment_ids = torch.zeros(len(ids), T, dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)], segment_ids[row, :len(x)] = torch.tensor(x), 1
    return input_ids, segment_ids


def generate_answers(model, tokenizer, prompts: list, images: list, *, template, batch_size: int = 16,
                     max_new_tokens: int = 16, device: str = "cpu", desc: str = "answering") -> list[str]:
    """Greedy answers to prompts: a user turn, or a conversation so far as its turn texts [user, assistant, ...,
    user]. images[i] is a PIL image (the first turn gets `<image>\\n` in front) or None. Prompts of similar length
    are batched together (right-padded, segment id 0 on the padding)."""
    import torch
    from tqdm import tqdm

    from llava_mini.data.conversation import get_template, tokenize_prompt
    from llava_mini.data.images import preprocess_image
    template = get_template(template) if isinstance(template, str) else template
    vision = model.config.vision_config
    turns = [[p] if isinstance(p, str) else list(p) for p in prompts]
    ids = [tokenize_prompt(tokenizer, [("<image>\n" if img is not None else "") + t[0], *t[1:]], template)
           for t, img in zip(turns, images)]
    context = model.config.text_config.max_position_embeddings
    for i, (x, img) in enumerate(zip(ids, images)):
        used = len(x) + (model.config.num_image_tokens - 1 if img is not None else 0)   # <image> -> the patches
        if used + max_new_tokens > context:         # past the context, positions have no rotary angle trained
            raise ValueError(f"prompt {i} ({turns[i][-1][:60]!r}) needs {used} positions + {max_new_tokens} new "
                             f"tokens, more than the model's context of {context}")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    answers = [None] * len(ids)
    stop = stop_token_ids(tokenizer, template)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=len(order) <= batch_size):
        batch = order[start:start + batch_size]
        input_ids, segment_ids = right_pad([ids[i] for i in batch], tokenizer.pad_id)
        pixels = [preprocess_image(images[i], vision, model.config.image_aspect_ratio) for i in batch
                  if images[i] is not None]
        pixel_values = torch.stack(pixels).to(device, next(model.vision_tower.parameters()).dtype) if pixels else None
        out = model.generate(input_ids.to(device), pixel_values, segment_ids.to(device),
                             max_new_tokens=max_new_tokens, stop_token_ids=stop)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out.tokens[row]).strip()
    return answers


def _load_images(paths: list[str], image_root: str) -> list:
    from llava_mini.data.images import load_image
    cache = {}
    for p in paths:
        if p is not None and p not in cache:
            cache[p] = load_image(path_inside(image_root, p, "a question's image"))
    return [cache[p] if p is not None else None for p in paths]


def evaluate_vqa(model, tokenizer, questions: list[dict], image_root: str, *, template, blind: bool = False,
                 chat: bool = False, batch_size: int = 16, device: str = "cpu",
                 max_new_tokens: int | None = None) -> dict:
    """Accuracy on short-answer questions ({"id", "image", "question", "answer", "question_type"}), with
    LLaVA-1.5's short-answer prompt. blind=True shows a blank mean-colour image instead of the real one.
    chat=True asks as a student does in chat.py: the bare question, so the model answers in a sentence ("The star
    is blue."), and scoring.answer_in_sentence reads the short answer it states (shapes-world question types)."""
    if blind:
        images = [blank_image(model.config.vision_config)] * len(questions)
    else:
        images = _load_images([q["image"] for q in questions], image_root)
    prompts = [q["question"] + ("" if chat else SHORT_ANSWER_PROMPT) for q in questions]
    replies = generate_answers(model, tokenizer, prompts, images, template=template, batch_size=batch_size,
                               max_new_tokens=max_new_tokens or (48 if chat else 16), device=device,
                               desc="chat" if chat else "blind VQA" if blind else "VQA")
    predictions = [answer_in_sentence(q["question_type"], r) for q, r in zip(questions, replies)] if chat else replies
    result = vqa_accuracy(questions, predictions)
    result["predictions"] = [{"id": q["id"], "answer": q["answer"], "prediction": p, **({"reply": r} if chat else {})}
                             for q, p, r in zip(questions, predictions, replies)]
    return result


def evaluate_bench(model, tokenizer, items: list[dict], image_root: str, *, judge, template, batch_size: int = 16,
                   device: str = "cpu", max_new_tokens: int = 128, after: dict | None = None) -> dict:
    """The LLaVA-Bench-style relative score: the model answers each open question of bench.json, the judge scores
    its answer and the reference (judges.score_bench). The answers are kept beside the scores. With `after` (image
    path -> the model's answer to DESCRIBE_PROMPT), each question is asked as the turn after that description."""
    from llava_mini.eval.judges import score_bench
    images = _load_images([it["image"] for it in items], image_root)
    prompts = [it["question"] if after is None else [DESCRIBE_PROMPT, after[it["image"]], it["question"]]
               for it in items]
    answers = generate_answers(model, tokenizer, prompts, images, template=template,
                               batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, desc="bench")
    return score_bench(items, answers, judge)


def evaluate_descriptions(model, tokenizer, scenes: list[dict], image_root: str, *, template, batch_size: int = 16,
                          device: str = "cpu", max_new_tokens: int = 96, prompt: str = DESCRIBE_PROMPT) -> dict:
    """Ask `prompt` about every scene's image and score each answer against the scene (eval/describe.py): object
    recall and precision, the share of images with every object named, and described exactly."""
    from llava_mini.eval.describe import description_score, description_summary
    images = _load_images([s["image"] for s in scenes], image_root)
    answers = generate_answers(model, tokenizer, [prompt] * len(scenes), images, template=template,
                               batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, desc="describe")
    scores = [description_score(a, s) for a, s in zip(answers, scenes)]
    return {**description_summary(scores), "prompt": prompt,
            "descriptions": [{"id": s["id"], "image": s["image"], "answer": a, "captions": s["captions"], **sc}
                             for s, a, sc in zip(scenes, answers, scores)]}


def evaluate_missing(model, tokenizer, scenes: list[dict], vocabulary: list[str], image_root: str, *, template,
                     batch_size: int = 16, device: str = "cpu", max_new_tokens: int = 32) -> dict:
    """"Where is the X?" about an object each scene does not have, and about one it has (eval/missing.py): how often
    the model says there is none, where it should and where it should not; and, as "presence", questions about one
    attribute alone ("Is there a star?")."""
    questions, asked = missing_object_questions(scenes, vocabulary), presence_questions(scenes, vocabulary)
    images = _load_images([q["image"] for q in questions + asked], image_root)
    answers = generate_answers(model, tokenizer, [q["question"] for q in questions + asked], images,
                               template=template, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               device=device, desc="missing")
    where, attribute = answers[:len(questions)], answers[len(questions):]
    return {**missing_summary(questions, where), "presence": presence_summary(asked, attribute),
            "examples": [{**q, "answer": a} for q, a in zip(questions[:6], where)],
            "presence_examples": [{**q, "answer": a} for q, a in zip(asked[:6], attribute)]}


def evaluate_followups(model, tokenizer, questions: list[dict], descriptions: dict, image_root: str, *, template,
                       batch_size: int = 16, device: str = "cpu", max_new_tokens: int = 16,
                       asked_first: dict | None = None) -> dict:
    """Short-answer questions asked as the second turn of a chat, after the model's own answer to DESCRIBE_PROMPT
    (descriptions: image path -> that answer, from evaluate_descriptions): does it still answer about the image
    once a long answer of its own stands between the image and the question? Scored like evaluate_vqa; with
    `asked_first` (question id -> the model's answer when the question opened the chat, from evaluate_vqa), the
    same questions scored that way too, as "asked_first"."""
    questions = [q for q in questions if q["image"] in descriptions]
    if not questions:
        raise ValueError("no question is about a described image")
    images = _load_images([q["image"] for q in questions], image_root)
    chats = [[DESCRIBE_PROMPT, descriptions[q["image"]], q["question"] + SHORT_ANSWER_PROMPT] for q in questions]
    predictions = generate_answers(model, tokenizer, chats, images, template=template, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, device=device, desc="follow-ups")
    result = vqa_accuracy(questions, predictions)
    result["predictions"] = [{"id": q["id"], "answer": q["answer"], "prediction": p}
                             for q, p in zip(questions, predictions)]
    if asked_first is not None:
        result["asked_first"] = vqa_accuracy(questions, [asked_first[q["id"]] for q in questions])
    return result


def evaluate_scienceqa(model, tokenizer, samples: list[dict], image_root: str, *, template, batch_size: int = 16,
                       device: str = "cpu") -> dict:
    images = _load_images([s["image"] for s in samples], image_root)
    prompts = [s["prompt"] + LETTER_PROMPT for s in samples]
    predictions = generate_answers(model, tokenizer, prompts, images, template=template, batch_size=batch_size,
                                   max_new_tokens=16, device=device, desc="ScienceQA")
    return {**scienceqa_accuracy(samples, predictions), "predictions": predictions}


# ---------------------------------------------------------------------------------------------------------------
# Command line

def _print_vqa_table(name: str, runs: dict) -> None:
    """One row per question type, one column per run (model, blind, no projector)."""
    types = sorted(next(iter(runs.values()))["per_type"])
    print(f"\n{name}: accuracy (normalised exact match)")
    print(f"  {'question type':<16}{'n':>6}" + "".join(f"{r:>14}" for r in runs))
    first = next(iter(runs.values()))
    for t in types:
        print(f"  {t:<16}{first['count_per_type'][t]:>6}" + "".join(f"{runs[r]['per_type'][t]:>14.1%}" for r in runs))
    print(f"  {'overall':<16}{first['n']:>6}" + "".join(f"{runs[r]['overall']:>14.1%}" for r in runs))
    for k in first.get("per_phrasing", {}):
        print(f"  {k + ' phrasings':<22}" + "".join(f"{runs[r]['per_phrasing'][k]:>14.1%}" for r in runs))
    # replies that answer no question of their type: the question, not the image, was misread
    print(f"  {'off-type replies':<22}" + "".join(f"{runs[r]['off_type']:>14.1%}" for r in runs))
    for k in first.get("off_type_per_phrasing", {}):
        print(f"  {'... ' + k + ' phrasings':<22}" +
              "".join(f"{runs[r]['off_type_per_phrasing'][k]:>14.1%}" for r in runs))
    if first.get("lookup"):
        print(f"  {lookup_line(first['lookup'])}")


def main(argv=None):
    p = cli.ArgumentParser(description="VQA accuracy with baselines, LLaVA-Bench relative score, ScienceQA")
    p.add_argument("--model", required=True, help="checkpoint folder (ours, HF llava, or original LLaVA)")
    cli.add_checkpoint_arguments(p)
    p.add_argument("--data", help="shapes world folder with test.json and bench.json (e.g. data/shapes)")
    p.add_argument("--easyvqa", help="easy-VQA folder with easyvqa_test.json (python -m llava_mini.synth.easyvqa)")
    p.add_argument("--bench", action="store_true", help="also run the LLaVA-Bench-style judged score on bench.json")
    p.add_argument("--describe", action="store_true",
                   help="also ask 'Describe the image.' about every held-out scene and score the objects it names")
    p.add_argument("--chat", action="store_true", help="also ask the world's short answers with no prompt, as chat")
    p.add_argument("--missing", action="store_true", help="also ask 'Where is the X?' about an object each held-out "
                   "scene does not have (and one it has) and count the answers that say there is none")
    p.add_argument("--judge", choices=("rule", "openai"), default="rule")
    p.add_argument("--judge-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="gpt-4o-mini")
    p.add_argument("--judge-max-tokens", type=cli.positive_int, help="cut the judge's reply after N tokens")
    p.add_argument("--scienceqa", help="ScienceQA in LLaVA's converted format (images relative to its folder)")
    p.add_argument("--no-projector-baseline", action="store_true", help="also score with the projector's output zeroed")
    p.add_argument("--limit", type=cli.positive_int, help="use only the first N questions of each set")
    p.add_argument("--bench-max-new-tokens", type=cli.positive_int, default=128, help="length limit of the bench answers")
    p.add_argument("--batch-size", type=cli.positive_int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="decode with the compiled one-token step over a static KV cache (compiles once per batch "
                        "size and 128-token cache length; pays off on long runs)")
    p.add_argument("--template", choices=sorted(TEMPLATES), help="override the template stored with the checkpoint")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--confusion", metavar="TYPE", help="also print the replies to each answer of one question type")
    args = p.parse_args(argv)
    if not (args.data or args.easyvqa or args.scienceqa):
        p.error("nothing to evaluate: give --data (with --bench for the judged score), --easyvqa or --scienceqa")
    if (args.bench or args.describe or args.missing or args.chat) and not args.data:
        p.error("--bench, --describe, --missing and --chat need --data (the shapes world's folder)")

    try:
        model, tokenizer, template = load_checkpoint(args.model, args.vision_tower, args.device,
                                                     model_base=args.model_base)
    except (OSError, ValueError) as e:
        p.exit(1, f"error: cannot load the model: {e}\n")
    if args.compile:
        model.language_model.compile_decoding()
    template = args.template or template
    common = dict(template=template, batch_size=args.batch_size, device=args.device)
    report = {"model": args.model, "template": template}
    sets = []
    if args.data:
        sets.append(("shapes", os.path.join(args.data, "test.json"), args.data))
    if args.easyvqa:
        sets.append(("easyvqa", os.path.join(args.easyvqa, "easyvqa_test.json"), args.easyvqa))
    for name, path, root in sets:
        questions = read_json(path)[:args.limit]
        runs = {"model": evaluate_vqa(model, tokenizer, questions, root, **common),
                "blind": evaluate_vqa(model, tokenizer, questions, root, blind=True, **common)}
        if args.chat and name == "shapes":
            runs["chat"] = evaluate_vqa(model, tokenizer, questions, root, chat=True, **common)
        if args.no_projector_baseline:
            with zeroed_projector(model):
                runs["no projector"] = evaluate_vqa(model, tokenizer, questions, root, **common)
        report[name] = runs
        _print_vqa_table(name, runs)
        if args.confusion:
            table = answer_confusion(questions, [p["prediction"] for p in runs["model"]["predictions"]], args.confusion)
            print(f"  {args.confusion}: right answer -> the model's replies, most common first")
            for answer, replies in table.items():
                print(f"    {answer:<14}" + ", ".join(f"{r or '(empty)'} {n}" for r, n in replies.most_common()))

    if args.bench:
        from llava_mini.eval.judges import LLMJudge, RuleJudge
        items = read_json(os.path.join(args.data, "bench.json"))[:args.limit]
        if args.judge == "rule":
            judge = RuleJudge()
        else:
            from llava_mini.synth.llm_client import ChatClient
            judge = LLMJudge(ChatClient(args.judge_url, args.judge_model), max_tokens=args.judge_max_tokens)
        from llava_mini.synth.llm_client import ChatError
        try:
            report["bench"] = evaluate_bench(model, tokenizer, items, args.data, judge=judge,
                                             max_new_tokens=args.bench_max_new_tokens, **common)
        except ChatError as e:          # the judge's endpoint failed: keep every score measured before it
            report["bench"] = {"error": str(e)}
            if args.out:
                write_json(report, args.out)
            p.exit(1, f"error: the judge failed, so there is no bench score: {e}\n" +
                   (f"the scores measured before it are in {args.out}\n" if args.out else ""))
        print(f"\nLLaVA-Bench-style relative score ({args.judge} judge): mean(model) / mean(reference) x 100")
        for cat, s in report["bench"]["scores"].items():
            print(f"  {cat:<10}{s['relative']:>8.1f}%   model {s['model']:.2f} / reference {s['reference']:.2f}"
                  f"   n={s['n']}")
        for phrasing, relative in report["bench"]["per_phrasing"].items():
            print(f"  {phrasing + ' phrasings':<18}{relative:>8.1f}%")
        if report["bench"]["judge_failures"]:
            print(f"  ({len(report['bench']['judge_failures'])} judge replies could not be parsed; left out)")

    if args.describe:
        scenes = read_json(os.path.join(args.data, "scenes_test.json"))[:args.limit]
        report["describe"] = d = evaluate_descriptions(model, tokenizer, scenes, args.data, **common)
        print(f"\n\"{d['prompt']}\" on {d['n']} held-out images: object recall {d['recall']:.1%}, precision "
              f"{d['precision']:.1%}; every object named {d['all_named']:.1%}, exactly {d['exact']:.1%}")
        for example in d["descriptions"][:3]:
            print(f"  {example['id']}: {example['answer']!r}\n    truth: {example['captions'][0]}")
        described = {x["image"]: x["answer"] for x in d["descriptions"]}
        if "shapes" in report:          # the short answers again, each asked after its image's description
            first = report["shapes"]["model"]["predictions"]
            report["followups"] = f = evaluate_followups(
                model, tokenizer, read_json(os.path.join(args.data, "test.json"))[:len(first)], described,
                args.data, asked_first={x["id"]: x["prediction"] for x in first}, **common)
            print(f"  short answers asked after that description: {f['overall']:.1%} (n={f['n']}; the same "
                  f"questions asked first: {f['asked_first']['overall']:.1%})")
        items = [it for it in read_json(os.path.join(args.data, "bench.json"))[:args.limit]
                 if it["category"] != "detail" and it["image"] in described] if args.bench else []
        if items:               # the open questions too, but for "describe" a second time
            try:
                report["bench_after_description"] = later = evaluate_bench(
                    model, tokenizer, items, args.data, judge=judge, after=described,
                    max_new_tokens=args.bench_max_new_tokens, **common)
            except ChatError as e:
                report["bench_after_description"] = {"error": str(e)}
                print(f"  the judge failed on the bench questions asked after the description: {e}")
            else:
                print("  bench questions asked after that description: " + ", ".join(
                    f"{c} {later['scores'][c]['relative']:.1f}% (asked first "
                    f"{report['bench']['scores'][c]['relative']:.1f}%)" for c in ("conv", "complex")
                    if c in later["scores"]))

    if args.missing:
        from llava_mini.synth.world import WorldConfig, vocabulary
        scenes = read_json(os.path.join(args.data, "scenes_test.json"))[:args.limit]
        report["missing"] = m = evaluate_missing(model, tokenizer, scenes, vocabulary(WorldConfig()), args.data,
                                                 **common)
        print(f"\n{missing_line(m)}\n{presence_line(m['presence'])}")
        for example in m["examples"][:4]:
            print(f"  {example['question']!r} ({'there' if example['present'] else 'not there'}): {example['answer']!r}")

    if args.scienceqa:
        samples = read_scienceqa(args.scienceqa)[:args.limit]
        report["scienceqa"] = evaluate_scienceqa(model, tokenizer, samples, os.path.dirname(args.scienceqa), **common)
        s = report["scienceqa"]
        print(f"\nScienceQA: accuracy {s['accuracy']:.1%} (n={s['n']}), with images {s['image_accuracy']:.1%} "
              f"(n={s['n_image']}), unparsed replies {s['unparsed']}")

    if args.out:
        write_json(report, args.out)
        print(f"\nreport written to {args.out}")
    return report


if __name__ == "__main__":
    cli.run(main)
