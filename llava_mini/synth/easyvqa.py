"""Import the easy-VQA data set (PyPI `easy-vqa==1.0`: 64x64 shape images, 4,000 train / 1,000 test) into our formats.

    python -m llava_mini.synth.easyvqa --out data/easyvqa

writes under --out:
    images/{train,test}/{image_id}.png  copies of the package's images
    easyvqa_train.json   LLaVA JSON: one sample per image, all its questions as short-answer turns
                         (question + "\\nAnswer the question using a single word or phrase.")
    easyvqa_test.json    evaluation questions {"id", "image", "question", "answer", "question_type"} (the test.json
                         format of docs/ARCHITECTURE.md); images are relative to --out.

The package has no question types, so they are derived from the answer: yes/no -> "yes_no", a shape name -> "shape",
otherwise "color" (its 13 answers are 2 yes/no, 3 shapes and 8 colours).
"""
from __future__ import annotations

import os
import shutil
from collections import Counter

from tqdm import tqdm

from llava_mini import cli
from llava_mini.data.conversation import SHORT_ANSWER_PROMPT
from llava_mini.jsonio import write_json

EASYVQA_SHAPES = {"circle", "rectangle", "triangle"}


def question_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes_no"
    return "shape" if answer in EASYVQA_SHAPES else "color"


def _load_split(split: str):
    try:
        import easy_vqa  # optional dependency (requirements.txt); imported here so the rest of llava_mini works without it
    except ImportError:
        raise ImportError("the easy-VQA importer needs the package: pip install easy-vqa==1.0") from None
    texts, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    return list(zip(texts, answers, image_ids)), paths


def import_easyvqa(out_dir: str, progress: bool = True) -> dict:
    """Copy images and write easyvqa_train.json and easyvqa_test.json; returns counts per split and question type."""
    stats = {}
    for split in ("train", "test"):
        questions, paths = _load_split(split)
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        for image_id in tqdm(sorted(paths), desc=f"easy-VQA {split} images", disable=not progress):
            shutil.copyfile(paths[image_id], os.path.join(out_dir, "images", split, f"{image_id}.png"))
        by_image: dict[int, list] = {}
        for k, (text, answer, image_id) in enumerate(questions):
            if image_id not in paths:
                raise ValueError(f"easy-VQA {split} question {k} ({text!r}) refers to missing image {image_id}")
            by_image.setdefault(image_id, []).append((k, text.strip(), answer.strip().lower()))
        image = lambda i: f"images/{split}/{i}.png"  # noqa: E731
        if split == "train":
            records = []
            for image_id, qs in sorted(by_image.items()):
                turns = []
                for n, (_, text, answer) in enumerate(qs):
                    prefix = "<image>\n" if n == 0 else ""
                    turns += [{"from": "human", "value": prefix + text[0].upper() + text[1:] + SHORT_ANSWER_PROMPT},
                              {"from": "gpt", "value": answer}]
                records.append({"id": f"easyvqa_train_{image_id}", "image": image(image_id), "conversations": turns})
        else:
            records = [{"id": f"easyvqa_test_{k}", "image": image(image_id), "question": text[0].upper() + text[1:],
                        "answer": answer, "question_type": question_type(answer)}
                       for image_id, qs in sorted(by_image.items()) for k, text, answer in qs]
        write_json(records, os.path.join(out_dir, f"easyvqa_{split}.json"))
        stats[split] = {"images": len(paths), "questions": len(questions),
                        "per_type": dict(Counter(question_type(a) for _, a, _ in questions))}
    return stats


def main(argv=None):
    p = cli.ArgumentParser(description="import easy-VQA into LLaVA JSON and test.json format")
    p.add_argument("--out", default="data/easyvqa")
    args = p.parse_args(argv)
    stats = import_easyvqa(args.out)
    for split, s in stats.items():
        print(f"{split}: {s['images']} images, {s['questions']} questions, per type {s['per_type']}")


if __name__ == "__main__":
    cli.run(main)
