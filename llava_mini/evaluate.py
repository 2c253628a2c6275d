"""Measure what the model learned: VQA accuracy with baselines, a LLaVA-Bench-style judged score, ScienceQA.

    python -m llava_mini.evaluate --model checkpoints/tiny/final --data data/shapes
    python -m llava_mini.evaluate --model checkpoints/tiny/final --data data/shapes --easyvqa data/easyvqa \
        --bench --judge rule --out report.json
    python -m llava_mini.evaluate --model DIR --data data/shapes --bench --judge openai \
        --judge-url http://127.0.0.1:8000/v1 --judge-model gpt-4o-mini
    python -m llava_mini.evaluate --model DIR --scienceqa tests/fixtures/scienceqa/test.json

Three measurements, each split into a scoring layer (plain functions over strings, easy to test by hand) and a
model layer (batched greedy generation):

1. VQA accuracy. The model answers held-out short-answer questions with LLaVA-1.5's short-answer prompt; an
   answer counts when it equals the reference after normalisation (lower case, no punctuation, no articles,
   number words as digits). Two baselines say how much of that accuracy comes from the image:
   - blind: every image is replaced by a blank mean-colour image. The projector still runs, so the LLM sees
     image tokens of the kind it was trained on, but they carry nothing. What remains is the language prior
     (e.g. "how many ...?" -> "2").
   - no projector: the projector's output is zeroed, so the image positions hold zero vectors. This is the
     same question asked more bluntly; it makes sense for a trained LLM (not for one whose only image signal is
     the projector bias) and is reported next to "blind" so the two can be compared.
2. LLaVA-Bench relative score. The model answers open questions; a judge that sees only the symbolic context
   (captions and boxes) scores the reference answer and the model's answer 1-10; the score is
   mean(model) / mean(reference) x 100 per category (conv, detail, complex) and overall. Judges: `RuleJudge`
   checks the facts it can parse (colours, shapes, counts, positions) against the scene; `LLMJudge` asks any
   OpenAI-compatible endpoint with a review prompt in the style of the paper.
3. ScienceQA in LLaVA's converted format: multiple choice, the model answers with a letter; accuracy over all
   questions and over those with an image.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import string
from collections import defaultdict
from dataclasses import dataclass

from llava_mini.config import read_json, write_json
from llava_mini.conversation import SHORT_ANSWER_PROMPT   # LLaVA-1.5's "\nAnswer the question using a single word ..."

LETTER_PROMPT = "\nAnswer with the option's letter from the given choices directly."

# ---------------------------------------------------------------------------------------------------------------
# 1. VQA scoring

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """'The Two.' -> '2', 'a Red circle!' -> 'red circle'. Apostrophes vanish ("don't" -> 'dont'), other
    punctuation separates words."""
    text = text.lower().replace("'", "")
    words = _PUNCTUATION.sub(" ", text).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(questions: list[dict], predictions: list[str]) -> dict:
    """Normalised exact match. questions: [{"answer", "question_type", ...}]; predictions: one string each.
    Returns {"overall", "n", "per_type": {type: accuracy}, "count_per_type": {type: n}}."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    hits, counts = defaultdict(int), defaultdict(int)
    for q, pred in zip(questions, predictions):
        qtype = q.get("question_type", "all")
        counts[qtype] += 1
        hits[qtype] += normalize_answer(pred) == normalize_answer(str(q["answer"]))
    n = sum(counts.values())
    return {"overall": sum(hits.values()) / n if n else 0.0, "n": n,
            "per_type": {t: hits[t] / counts[t] for t in sorted(counts)},
            "count_per_type": {t: counts[t] for t in sorted(counts)}}


# ---------------------------------------------------------------------------------------------------------------
# 2. LLaVA-Bench: relative score and judges

CATEGORIES = ("conv", "detail", "complex")


def relative_scores(records: list[dict]) -> dict:
    """records: [{"category", "score_reference", "score_model"}]. Returns per category and "overall":
    {"relative": mean(model) / mean(reference) x 100, "model": mean, "reference": mean, "n"}."""
    groups = defaultdict(list)
    for r in records:
        groups[r["category"]].append(r)
        groups["overall"].append(r)
    out = {}
    for name in [c for c in CATEGORIES if c in groups] + sorted(set(groups) - set(CATEGORIES) - {"overall"}) + ["overall"]:
        rs = groups.get(name, [])
        if not rs:
            continue
        model = sum(r["score_model"] for r in rs) / len(rs)
        ref = sum(r["score_reference"] for r in rs) / len(rs)
        out[name] = {"relative": 100.0 * model / ref if ref else 0.0, "model": model, "reference": ref, "n": len(rs)}
    return out


COLOR_WORDS = {"red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray",
               "grey", "cyan", "magenta", "violet", "teal"}
SHAPE_WORDS = {"circle", "square", "triangle", "rectangle", "star", "ellipse", "oval", "hexagon", "pentagon",
               "diamond", "cross", "heart"}
OBJECT_WORDS = {"shape", "object", "thing", "item"}        # "three shapes": a count over every object
# A clause with one of these talks about a changed or imagined scene ("adding one more makes 3 circles",
# "one object would be left"): it is arithmetic, not a statement about this image, so it is not checked.
HYPOTHETICAL_WORDS = {"would", "could", "if", "adding", "add", "removing", "remove", "makes", "leaves", "after"}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top", "above": "top",
                  "bottom": "bottom", "lower": "bottom", "below": "bottom", "center": "center",
                  "centre": "center", "middle": "center"}


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2] in {"cross"}:
        return word[:-2]
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPE_WORDS | OBJECT_WORDS else word


@dataclass(frozen=True)
class Claim:
    """One checkable statement parsed from an answer. kind: "object" (an object of this colour/shape exists),
    "color" (something has this colour), "count" (exactly `number` such objects), "position" (such an object
    lies in region `where`)."""
    kind: str
    color: str | None = None
    shape: str | None = None
    number: int | None = None
    where: str | None = None


def extract_claims(text: str) -> set[Claim]:
    """Parse the facts a rule judge can check: "two red circles", "a blue square on the left", "no stars",
    "the background is white". Deliberately simple: a word window, clause by clause."""
    claims = set()
    for clause in re.split(r"[.;,!?\n]|\band\b|\bbut\b", text.lower()):
        words = [_singular(w) for w in re.findall(r"[a-z0-9]+", clause)]
        if "=" in clause or HYPOTHETICAL_WORDS & set(words):
            continue
        objects_here, colors_used = [], set()
        for i, w in enumerate(words):
            if w not in SHAPE_WORDS | OBJECT_WORDS:
                continue
            shape = w if w in SHAPE_WORDS else None
            before = range(i - 1, max(0, i - 3) - 1, -1)            # up to 3 words back: "three small red circles"
            color_at = next((j for j in before if words[j] in COLOR_WORDS), None)
            color = words[color_at] if color_at is not None else None
            colors_used.add(color_at)
            number_word = next((words[j] for j in before if words[j] in NUMBER_WORDS or words[j].isdigit()
                                or words[j] == "no"), None)
            number = None if number_word is None else 0 if number_word == "no" else int(NUMBER_WORDS.get(number_word, number_word))
            if number is not None:
                claims.add(Claim("count", color, shape, number=number))
            if number != 0 and (shape or color):
                claims.add(Claim("object", color, shape))
                objects_here.append((color, shape))
        # A colour not attached to a shape: "it is red", "the background is white".
        claims |= {Claim("color", w) for i, w in enumerate(words) if w in COLOR_WORDS and i not in colors_used}
        wheres = {POSITION_WORDS[w] for w in words if w in POSITION_WORDS}
        if len(objects_here) == 1 and objects_here[0][1] and wheres:      # one object, its place: "top left"
            color, shape = objects_here[0]
            claims.add(Claim("position", color, shape, where=" ".join(sorted(wheres))))
    return claims


def _in_region(bbox, where: str) -> bool:
    """bbox normalised (x1, y1, x2, y2); where: region words joined by spaces, all must hold ("left top")."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    region = {"left": cx < 0.5, "right": cx > 0.5, "top": cy < 0.5, "bottom": cy > 0.5,
              "center": abs(cx - 0.5) < 0.25 and abs(cy - 0.5) < 0.25}
    return all(region[w] for w in where.split())


def check_claim(claim: Claim, scene: dict) -> bool:
    """Is the claim true of the scene? (scene: world.py's dict with "objects" and "background")."""
    def norm_color(c):
        return "gray" if c == "grey" else c
    matches = [o for o in scene.get("objects", [])
               if (claim.shape is None or o["shape"] == claim.shape)
               and (claim.color is None or norm_color(o["color"]) == norm_color(claim.color))]
    if claim.kind == "object":
        return bool(matches)
    if claim.kind == "count":
        return len(matches) == claim.number
    if claim.kind == "color":
        background = [norm_color(w) for w in str(scene.get("background", "")).split()]    # "pale blue"
        return bool(matches) or norm_color(claim.color) in background
    if claim.kind == "position":
        return any(_in_region(o["bbox"], claim.where) for o in matches)
    raise ValueError(f"unknown claim kind {claim.kind!r}")


def _token_f1(a: str, b: str) -> float:
    wa, wb = normalize_answer(a).split(), normalize_answer(b).split()
    common = sum(min(wa.count(w), wb.count(w)) for w in set(wa))
    if not wa or not wb or not common:
        return 0.0
    p, r = common / len(wa), common / len(wb)
    return 2 * p * r / (p + r)


class RuleJudge:
    """A deterministic judge for the shapes world: it checks what an answer says against the scene.

    score = 1 + 9 x precision x (0.5 + 0.5 x recall), where precision is the share of the answer's claims that
    are true of the scene (hallucinations cost) and recall the share of the reference's true claims the answer
    also makes (saying little costs, but less). An answer with no checkable claims gets at most 5, by word
    overlap with the reference; when the reference has none either (a "why" question), word overlap decides
    on the full 1-10 scale."""

    def score_answer(self, answer: str, reference: str, scene: dict) -> float:
        claims, ref_claims = extract_claims(answer), extract_claims(reference)
        ref_true = {c for c in ref_claims if check_claim(c, scene)}
        if not claims:
            return 1.0 + (9.0 if not ref_claims else 4.0) * _token_f1(answer, reference)
        precision = sum(check_claim(c, scene) for c in claims) / len(claims)
        recall = len(claims & ref_true) / len(ref_true) if ref_true else 1.0
        return 1.0 + 9.0 * precision * (0.5 + 0.5 * recall)

    def score(self, item: dict, answer: str) -> tuple[float, float]:
        """(reference score, model score), the same order as the LLM judge's 'score1 score2'."""
        if "scene" not in item:
            raise ValueError(f"bench item {item.get('id')!r} has no 'scene'; the rule judge needs it")
        return (self.score_answer(item["reference"], item["reference"], item["scene"]),
                self.score_answer(answer, item["reference"], item["scene"]))


JUDGE_SYSTEM = "You are a careful and fair reviewer of answers written by AI assistants."
JUDGE_INSTRUCTIONS = (
    "Two AI assistants answered the user's question about an image. You cannot see the image; the text under "
    "[Context] describes it (captions, and objects with bounding boxes as normalised x1, y1, x2, y2). "
    "Rate each answer for helpfulness, relevance, accuracy with respect to the context, and level of detail, "
    "with an overall score from 1 to 10 (higher is better).\n"
    "On the first line write only the two scores, Assistant 1 then Assistant 2, separated by a space. "
    "From the second line on, explain your rating; the order in which the answers appear must not affect it.")


def format_context(context: dict) -> str:
    return "\n".join(context.get("captions", [])) + "\n\n" + "\n".join(context.get("boxes", []))


def judge_messages(item: dict, answer_1: str, answer_2: str) -> list[dict]:
    content = (f"[Context]\n{format_context(item.get('context', {}))}\n\n[Question]\n{item['question']}\n\n"
               f"[Assistant 1]\n{answer_1}\n[End of Assistant 1]\n\n[Assistant 2]\n{answer_2}\n"
               f"[End of Assistant 2]\n\n[Instructions]\n{JUDGE_INSTRUCTIONS}\n")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_judge_scores(text: str) -> tuple[float, float]:
    """The first line must hold two numbers ("8 6", "8, 6", "8.5 6"); anything else is an error quoting it."""
    first = text.strip().split("\n")[0]
    numbers = re.findall(r"\d+(?:\.\d+)?", first)
    if len(numbers) != 2:
        raise ValueError(f"judge reply does not start with two scores: {first[:200]!r}")
    return float(numbers[0]), float(numbers[1])


class LLMJudge:
    """Asks an OpenAI-compatible model (llm_client.ChatClient). Assistant 1 is the reference, 2 the model."""

    def __init__(self, client):
        self.client = client

    def score(self, item: dict, answer: str) -> tuple[float, float]:
        return parse_judge_scores(self.client.chat(judge_messages(item, item["reference"], answer), temperature=0))


def score_bench(items: list[dict], answers: list[str], judge) -> dict:
    """Judge every answer; an unparseable judge reply is counted and left out, never scored as 0."""
    records, failures = [], []
    for item, answer in zip(items, answers):
        try:
            ref_score, model_score = judge.score(item, answer)
        except ValueError as e:
            failures.append({"id": item.get("id"), "error": str(e)})
            continue
        records.append({"id": item.get("id"), "category": item["category"], "question": item["question"],
                        "answer": answer, "score_reference": ref_score, "score_model": model_score})
    return {"scores": relative_scores(records), "records": records, "judge_failures": failures}


# ---------------------------------------------------------------------------------------------------------------
# 3. ScienceQA (LLaVA's converted format)

_OPTION = re.compile(r"\(([A-Z])\)")
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.?")


def parse_letter(text: str, options: str) -> str | None:
    """The letter a reply chooses, as LLaVA reads it: a bare letter ("B"), a letter then ". " ("B. red"), or
    exactly one "The answer is B." anywhere. None if it names no option."""
    text = text.strip()
    if text in options:
        return text or None
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    if len(text) == 2 and text[0] in options and text[1] in ".)":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 and found[0] in options else None


def read_scienceqa(path: str) -> list[dict]:
    """LLaVA's converted ScienceQA: [{"id", "image"?, "conversations": [{"from": "human", "value": "Context: ...
    Question: ... Options: (A) ... (B) ..."}, {"from": "gpt", "value": "B" or "... The answer is B."}]}].
    Returns [{"id", "image" or None, "prompt", "answer", "options"}]."""
    out = []
    for entry in read_json(path):
        sid = entry.get("id", "?")
        try:
            human, gpt = entry["conversations"][0]["value"], entry["conversations"][1]["value"]
        except (KeyError, IndexError):
            raise ValueError(f"{path}: sample {sid!r} needs two conversation turns") from None
        options = "".join(_OPTION.findall(human.split("Options:")[-1]))
        answer = parse_letter(gpt, options)
        if not options or answer is None:
            raise ValueError(f"{path}: sample {sid!r} has no options or no answer letter ({gpt[:80]!r})")
        prompt = human.replace("<image>", "").strip()
        out.append({"id": sid, "image": entry.get("image"), "prompt": prompt, "answer": answer, "options": options})
    return out


def scienceqa_accuracy(samples: list[dict], predictions: list[str]) -> dict:
    """Accuracy overall and on questions with an image. A reply naming no option is wrong (LLaVA guesses at
    random instead; we count it, in "unparsed", so the number is deterministic)."""
    correct = [parse_letter(p, s["options"]) == s["answer"] for s, p in zip(samples, predictions)]
    with_image = [c for c, s in zip(correct, samples) if s["image"]]
    return {"accuracy": sum(correct) / len(correct) if correct else 0.0, "n": len(correct),
            "image_accuracy": sum(with_image) / len(with_image) if with_image else 0.0, "n_image": len(with_image),
            "unparsed": sum(parse_letter(p, s["options"]) is None for s, p in zip(samples, predictions))}


# ---------------------------------------------------------------------------------------------------------------
# The model layer: load a checkpoint, answer prompts in batches

def load_checkpoint(path: str, vision_tower: str | None = None, device: str = "cpu", dtype=None):
    """A checkpoint folder (ours, HF llava, or original LLaVA + `vision_tower`) -> (model, tokenizer, template name).
    The template comes from our llava_mini.json; other layouts get vicuna_v1 (LLaVA-1.5's)."""
    from llava_mini.tokenizer import Tokenizer
    from llava_mini.weights import load_llava
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {path}")
    model = load_llava(path, dtype=dtype, device=device, vision_tower=vision_tower).eval()
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"{path} has no tokenizer.json (needed to turn text into token ids)")
    tokenizer = Tokenizer.from_file(path)
    if tokenizer.image_token_id != model.config.image_token_index:
        raise ValueError(f"{path}: the tokenizer's <image> id is {tokenizer.image_token_id} but config.json says "
                         f"image_token_index={model.config.image_token_index}")
    meta_path = os.path.join(path, "llava_mini.json")
    template = read_json(meta_path).get("template", "vicuna_v1") if os.path.exists(meta_path) else "vicuna_v1"
    model.requires_grad_(False)          # inference only: no autograd graph (local, unlike set_grad_enabled)
    return model, tokenizer, template


def stop_token_ids(tokenizer, template) -> tuple[int, ...]:
    """Generation stops at the template's stop token (</s>, <|im_end|>) and at the tokenizer's EOS."""
    ids = {tokenizer.eos_id, tokenizer.token_to_id(template.stop)}
    return tuple(sorted(i for i in ids if i is not None))


def blank_image(vision_config):
    """The blind baseline's image: one flat mean colour, i.e. all zeros after normalisation."""
    from PIL import Image

    from llava_mini.data import mean_color
    return Image.new("RGB", (vision_config.image_size, vision_config.image_size), mean_color(vision_config))


@contextlib.contextmanager
def zeroed_projector(model):
    """Inside this block the projector outputs zeros: the image positions are there, but carry nothing."""
    handle = model.multi_modal_projector.register_forward_hook(lambda module, args, output: output * 0)
    try:
        yield model
    finally:
        handle.remove()


def generate_answers(model, tokenizer, prompts: list[str], images: list, *, template, batch_size: int = 16,
                     max_new_tokens: int = 16, device: str = "cpu", desc: str = "answering") -> list[str]:
    """Greedy answers to single-turn prompts. images[i] is a PIL image (the prompt gets `<image>\\n` in front) or
    None. Prompts of similar length are batched together (right-padded, segment id 0 on the padding)."""
    import torch
    from tqdm import tqdm

    from llava_mini.conversation import get_template, tokenize_prompt
    from llava_mini.data import preprocess_image
    template = get_template(template) if isinstance(template, str) else template
    vision = model.config.vision_config
    ids = [tokenize_prompt(tokenizer, [("<image>\n" if img is not None else "") + p], template)
           for p, img in zip(prompts, images)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    answers = [None] * len(ids)
    stop = stop_token_ids(tokenizer, template)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=len(order) <= batch_size):
        batch = order[start:start + batch_size]
        T = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), T), tokenizer.pad_id, dtype=torch.long)
        segment_ids = torch.zeros(len(batch), T, dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            segment_ids[row, :len(ids[i])] = 1
        pixels = [preprocess_image(images[i], vision, model.config.image_aspect_ratio) for i in batch
                  if images[i] is not None]
        pixel_values = torch.stack(pixels).to(device, next(model.vision_tower.parameters()).dtype) if pixels else None
        out = model.generate(input_ids.to(device), pixel_values, segment_ids.to(device),
                             max_new_tokens=max_new_tokens, stop_token_ids=stop)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out.tokens[row]).strip()
    return answers


def _load_images(paths: list[str], image_root: str) -> list:
    from llava_mini.data import load_image
    cache = {}
    for p in paths:
        if p is not None and p not in cache:
            cache[p] = load_image(os.path.join(image_root, p))
    return [cache[p] if p is not None else None for p in paths]


def evaluate_vqa(model, tokenizer, questions: list[dict], image_root: str, *, template, blind: bool = False,
                 batch_size: int = 16, device: str = "cpu", max_new_tokens: int = 16) -> dict:
    """Accuracy on short-answer questions ({"id", "image", "question", "answer", "question_type"}), with
    LLaVA-1.5's short-answer prompt. blind=True shows a blank mean-colour image instead of the real one."""
    if blind:
        images = [blank_image(model.config.vision_config)] * len(questions)
    else:
        images = _load_images([q["image"] for q in questions], image_root)
    prompts = [q["question"] + SHORT_ANSWER_PROMPT for q in questions]
    predictions = generate_answers(model, tokenizer, prompts, images, template=template, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, device=device,
                                   desc="blind VQA" if blind else "VQA")
    result = vqa_accuracy(questions, predictions)
    result["predictions"] = [{"id": q["id"], "answer": q["answer"], "prediction": p}
                             for q, p in zip(questions, predictions)]
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


def main(argv=None):
    p = argparse.ArgumentParser(description="VQA accuracy with baselines, LLaVA-Bench relative score, ScienceQA")
    p.add_argument("--model", required=True, help="checkpoint folder (ours, HF llava, or original LLaVA)")
    p.add_argument("--vision-tower", help="CLIP folder, for the original LLaVA layout")
    p.add_argument("--data", help="shapes world folder with test.json and bench.json (e.g. data/shapes)")
    p.add_argument("--easyvqa", help="easy-VQA folder with easyvqa_test.json (python -m llava_mini.easyvqa)")
    p.add_argument("--bench", action="store_true", help="also run the LLaVA-Bench-style judged score on bench.json")
    p.add_argument("--judge", choices=("rule", "openai"), default="rule")
    p.add_argument("--judge-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="gpt-4o-mini")
    p.add_argument("--scienceqa", help="ScienceQA in LLaVA's converted format (images relative to its folder)")
    p.add_argument("--no-projector-baseline", action="store_true",
                   help="also score with the projector's output zeroed (see the module docstring)")
    p.add_argument("--limit", type=int, help="use only the first N questions of each set")
    p.add_argument("--bench-max-new-tokens", type=int, default=128, help="length limit of the bench answers")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--template", help="override the template stored with the checkpoint")
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)

    model, tokenizer, template = load_checkpoint(args.model, args.vision_tower, args.device)
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
        if args.no_projector_baseline:
            with zeroed_projector(model):
                runs["no projector"] = evaluate_vqa(model, tokenizer, questions, root, **common)
        report[name] = runs
        _print_vqa_table(name, runs)

    if args.bench:
        if not args.data:
            p.error("--bench needs --data (bench.json lives there)")
        items = read_json(os.path.join(args.data, "bench.json"))[:args.limit]
        images = _load_images([it["image"] for it in items], args.data)
        answers = generate_answers(model, tokenizer, [it["question"] for it in items], images,
                                   max_new_tokens=args.bench_max_new_tokens, desc="bench", **common)
        if args.judge == "rule":
            judge = RuleJudge()
        else:
            from llava_mini.llm_client import ChatClient
            judge = LLMJudge(ChatClient(args.judge_url, args.judge_model))
        report["bench"] = score_bench(items, answers, judge)
        print(f"\nLLaVA-Bench-style relative score ({args.judge} judge): mean(model) / mean(reference) x 100")
        for cat, s in report["bench"]["scores"].items():
            print(f"  {cat:<10}{s['relative']:>8.1f}%   model {s['model']:.2f} / reference {s['reference']:.2f}"
                  f"   n={s['n']}")
        if report["bench"]["judge_failures"]:
            print(f"  ({len(report['bench']['judge_failures'])} judge replies could not be parsed; left out)")

    if args.scienceqa:
        samples = read_scienceqa(args.scienceqa)[:args.limit]
        report["scienceqa"] = evaluate_scienceqa(model, tokenizer, samples, os.path.dirname(args.scienceqa), **common)
        s = report["scienceqa"]
        print(f"\nScienceQA: accuracy {s['accuracy']:.1%} (n={s['n']}), with images {s['image_accuracy']:.1%} "
              f"(n={s['n_image']}), unparsed replies {s['unparsed']}")

    if not (sets or args.bench or args.scienceqa):
        p.error("nothing to evaluate: give --data, --easyvqa, --bench or --scienceqa")
    if args.out:
        write_json(report, args.out)
        print(f"\nreport written to {args.out}")
    return report


if __name__ == "__main__":
    main()
