"""Data: images -> pixel tensors, LLaVA-JSON files -> samples, samples -> batches (padded or packed).

    ds = LlavaDataset("data/shapes/stage2.json", "data/shapes", tokenizer, "vicuna_v1", config, max_length=512)
    batch = collate([ds[0], ds[1]], tokenizer.pad_id)       # right padding
    batch = pack([ds[i] for i in range(8)], max_length=512, pad_id=tokenizer.pad_id)   # several samples per row

A sample (docs/ARCHITECTURE.md) is a dict: `id`, `input_ids` (T,), `labels` (T,), `pixel_values` (n_images, 3, H, W),
`length` (the length inside the LLM, after each `<image>` placeholder is expanded to num_image_tokens positions).
Batches carry `attention_mask` as segment ids: 0 padding, 1..k the k-th sample of the row.

Bad data is never silent: a malformed line, a missing or broken image, a conversation that does not alternate, a
placeholder count that does not match the images, a sample too long to keep its image or left with nothing to train
on: each is an error naming the file / sample, or, with `skip_bad=True`, skipped, counted and summarised.
"""
from __future__ import annotations

import json
import os
import random
import string
import sys
from collections import Counter

import torch
from tqdm import tqdm

from llava_mini.data.conversation import IGNORE_INDEX, TokenizationMismatch, get_template, tokenize_conversation
from llava_mini.data.images import load_image, preprocess_image
from llava_mini.data.tokenizer import IMAGE_TOKEN, Tokenizer
from llava_mini.jsonio import not_utf8, read_json
from llava_mini.model.config import LlavaConfig
from llava_mini.safepath import path_inside

# ---------------------------------------------------------------------------------------------------------------
# Conversations from LLaVA JSON

def expanded_length(input_ids, image_token_id: int, num_image_tokens: int) -> int:
    """Length inside the LLM: each placeholder becomes num_image_tokens positions."""
    ids = torch.as_tensor(input_ids)
    k = int((ids == image_token_id).sum())
    return len(ids) - k + k * num_image_tokens


def read_records(path: str, on_bad_line=None) -> list:
    """The entries of a LLaVA JSON file (a list) or JSONL file (one object per line). A bad JSONL line is an error
    naming the file and line number, or, given `on_bad_line(error)`, handed to it and left out."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.endswith(".jsonl"):
        records = read_json(path)
    else:
        records = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise not_utf8(f"{path}:{n}", e) from None
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        error = ValueError(f"{path}:{n}: not valid JSON ({e})")
                        if on_bad_line is None:
                            raise error from None
                        on_bad_line(error)
        return records
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def conversation_turns(record: dict) -> tuple[str, list[str], list[str]]:
    """(id, turns, image paths) of one LLaVA-JSON entry, checked and with the placeholder normalised:
    one image -> the first user turn becomes "<image>\\n" + its text without the placeholder."""
    if not isinstance(record, dict):
        raise ValueError(f"a sample must be a JSON object with 'conversations', got {str(record)[:80]!r}")
    sample_id = str(record.get("id", "?"))
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"sample {sample_id}: 'conversations' must be a non-empty list")
    turns = []
    for i, turn in enumerate(conv):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise ValueError(f"sample {sample_id}: turn {i} should be from {expected!r} with a string 'value', "
                             f"got {got!r} (turns must alternate human, gpt, human, ...)")
        turns.append(turn["value"])
    if len(turns) % 2:
        raise ValueError(f"sample {sample_id}: the conversation ends with a human turn (no answer to train on)")
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    n_placeholders = sum(t.count(IMAGE_TOKEN) for t in turns)
    if any(IMAGE_TOKEN in t for t in turns[1::2]):
        raise ValueError(f"sample {sample_id}: {IMAGE_TOKEN} in an answer")
    if len(images) == 1 and n_placeholders <= 1:
        # LLaVA data has it before or after the question, or (rarely) not at all; put it in one place.
        rest = turns[0].replace(IMAGE_TOKEN, "").strip()
        turns[0] = f"{IMAGE_TOKEN}\n{rest}"
    elif n_placeholders != len(images):
        raise ValueError(f"sample {sample_id}: {n_placeholders} {IMAGE_TOKEN} placeholders for {len(images)} images")
    return sample_id, turns, images


class TooLong(ValueError):
    """A sample that truncation would ruin; `reason` names the kind for the skip summary."""
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class LlavaDataset(torch.utils.data.Dataset):
    """Samples from a LLaVA JSON / JSONL file, image paths relative to `image_folder`.

    Stage 1 uses template "plain", stage 2 "vicuna_v1" (or another, see conversation.py). All entries are checked
    and tokenized once, up front (fast, no images), so `lengths` is known for length-grouped batching and every bad
    entry is reported before training starts; the token ids are kept (int32) and reused every epoch. Images are
    loaded in __getitem__; with skip_bad=True a broken one makes __getitem__ return None (collate drops it) and is
    counted.
    """

    def __init__(self, path: str, image_folder: str, tokenizer: Tokenizer, template: str, config: LlavaConfig,
                 max_length: int | None = None, skip_bad: bool = False, aspect: str | None = None):
        self.path, self.image_folder, self.tokenizer = path, image_folder, tokenizer
        self.template = get_template(template)
        self.config, self.max_length, self.skip_bad = config, max_length, skip_bad
        self.aspect = aspect or config.image_aspect_ratio
        self.skipped: Counter = Counter()      # reason -> count
        self.examples: list[str] = []          # one example message per reason, for the summary
        tokenizer.check_image_token(config.image_token_index, path)

        records = read_records(path, (lambda e: self._bad("malformed JSON line", e)) if skip_bad else None)
        self.samples, self.lengths = [], []
        for record in tqdm(records, desc=f"checking {os.path.basename(path)}", disable=len(records) < 5000):
            try:
                sample = self._tokenize(record)
                for image in sample["images"]:
                    if not os.path.exists(image):
                        raise FileNotFoundError(f"sample {sample['id']}: image not found: {image}")
            except (ValueError, FileNotFoundError) as e:
                self._bad(_reason(e), e)
                continue
            sample["input_ids"] = torch.tensor(sample["input_ids"], dtype=torch.int32)
            sample["labels"] = torch.tensor(sample["labels"], dtype=torch.int32)
            self.samples.append(sample)
            self.lengths.append(sample["length"])
        if self.skipped:
            self.print_summary()

    def _bad(self, reason: str, error: Exception):
        if not self.skip_bad:
            raise error
        if reason not in self.skipped:
            self.examples.append(f"{reason}: {error}")
        self.skipped[reason] += 1

    def print_summary(self, file=None):
        """Say what was skipped and why (called after loading, and by the training loop at the end)."""
        if not self.skipped:
            return
        file = file or sys.stderr
        print(f"{self.path}: skipped {sum(self.skipped.values())} samples: " +
              ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()), file=file)
        for example in self.examples:
            print(f"  e.g. {example}", file=file)

    def _tokenize(self, record: dict) -> dict:
        sample_id, turns, images = conversation_turns(record)
        input_ids, labels = tokenize_conversation(self.tokenizer, turns, self.template, sample_id)
        n_image = self.config.num_image_tokens
        image_id = self.tokenizer.image_token_id
        if self.max_length is not None and expanded_length(input_ids, image_id, n_image) > self.max_length:
            # Cut at the end, counting each placeholder as n_image positions; never through an image.
            keep, used = 0, 0
            for t in input_ids:
                step = n_image if t == image_id else 1
                if used + step > self.max_length:
                    break
                keep, used = keep + 1, used + step
            if image_id in input_ids[keep:]:
                raise TooLong("too long to keep its image",
                              f"sample {sample_id}: max_length {self.max_length} cuts through its image")
            input_ids, labels = input_ids[:keep], labels[:keep]
        # The first label never counts (nothing predicts position 0), so look from position 1.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            cut = f" after truncation to max_length {self.max_length}" if self.max_length is not None else ""
            raise TooLong("no trained token left", f"sample {sample_id}: no trained token left{cut}")
        return {"id": sample_id, "input_ids": input_ids, "labels": labels,
                "images": [path_inside(self.image_folder, p, f"sample {sample_id}: image") for p in images],
                "length": expanded_length(input_ids, image_id, n_image)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        try:
            pixels = [preprocess_image(load_image(p), self.config.vision_config, self.aspect) for p in sample["images"]]
        except (ValueError, FileNotFoundError) as e:
            if not self.skip_bad:
                raise ValueError(f"sample {sample['id']}: {e} (--skip-bad skips such samples)") from None
            self._bad("bad image", e)
            print(f"skipping sample {sample['id']}: {e}", file=sys.stderr)
            return None
        size = self.config.vision_config.image_size
        return {"id": sample["id"],
                "input_ids": sample["input_ids"].long(),
                "labels": sample["labels"].long(),
                "pixel_values": torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size),
                "length": sample["length"]}


def _reason(error: Exception) -> str:
    if isinstance(error, TooLong):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "missing image"
    if isinstance(error, TokenizationMismatch):
        return "tokenization mismatch"
    return "malformed sample"


# ---------------------------------------------------------------------------------------------------------------
# Batches

def _stack_images(samples):
    images = [s["pixel_values"] for s in samples if s["pixel_values"].shape[0] > 0]
    return torch.cat(images) if images else None


def collate(samples: list, pad_id: int) -> dict:
    """One sample per row, right-padded. None samples (skipped bad images) are dropped."""
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("collate: every sample of the batch was skipped")
    T = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), T), dtype=torch.long)      # segment ids: 1 = the sample, 0 = pad
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "pixel_values": _stack_images(samples), "ids": [s["id"] for s in samples]}


def pack_groups(lengths: list[int], max_length: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows whose total length is at most max_length."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > max_length:
            raise ValueError(f"sample {i} has length {lengths[i]} > max_length {max_length}")
        row = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([]); room.append(max_length)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def pack(samples: list, max_length: int, pad_id: int) -> dict:
    """Several samples per row (first-fit on their expanded `length`), right-padded to the longest row.
    attention_mask holds segment ids 1..k within each row, so the model keeps the samples apart and restarts
    positions at each; the loss is then the same as for the padded batch."""
    samples = [s for s in samples if s is not None]
    rows = [[samples[i] for i in sorted(group)] for group in pack_groups([s["length"] for s in samples], max_length)]
    T = max(sum(len(s["input_ids"]) for s in row) for row in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for segment, s in enumerate(row, 1):
            n = len(s["input_ids"])
            input_ids[r, start:start + n] = s["input_ids"]
            labels[r, start:start + n] = s["labels"]
            # A sample's first token is never a target (in a padded row nothing precedes it); keep it so here,
            # where the previous sample's last token would otherwise "predict" it.
            labels[r, start] = IGNORE_INDEX
            attention_mask[r, start:start + n] = segment
            start += n
    ordered = [s for row in rows for s in row]          # placeholder order: row by row, left to right
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "pixel_values": _stack_images(ordered), "ids": [s["id"] for s in ordered]}


def micro_batches(samples: list, micro_batch_size: int, pad_id: int, image_token_id: int,
                  pack_length: int | None = None) -> list[dict]:
    """A process's share of a global batch as model inputs: padded micro-batches, or with `pack_length` rows packed
    to that length, fed micro_batch_size rows at a time."""
    if pack_length:
        rows = pack(samples, pack_length, pad_id)
        n = rows["input_ids"].shape[0]
        return [slice_rows(rows, s, s + micro_batch_size, image_token_id) for s in range(0, n, micro_batch_size)]
    return [collate(samples[s:s + micro_batch_size], pad_id) for s in range(0, len(samples), micro_batch_size)]


def slice_rows(rows: dict, start: int, stop: int, image_token_id: int) -> dict:
    """Rows start:stop of a batch, with their images (pixel_values are in placeholder order, row by row)."""
    ids = rows["input_ids"]
    images_before = int((ids[:start] == image_token_id).sum())
    images_in = int((ids[start:stop] == image_token_id).sum())
    pixels = rows["pixel_values"]
    return {"input_ids": ids[start:stop], "labels": rows["labels"][start:stop],
            "attention_mask": rows["attention_mask"][start:stop],
            "pixel_values": None if pixels is None or images_in == 0 else pixels[images_before:images_before + images_in]}


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length (less padding): shuffle, cut into mega-batches of `batch_size * group` indices,
    sort each by length, split into batches, shuffle the batches. Deterministic given seed and epoch."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool = True, seed: int = 0, group: int = 50,
                 drop_last: bool = False):
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.seed, self.group, self.drop_last, self.epoch = seed, group, drop_last, 0
        self._cached = None                   # (epoch, batches): the training loop asks for them every step

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._make_batches())
        return self._cached[1]

    def _make_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        mega = self.batch_size * self.group
        batches = []
        for m in range(0, len(order), mega):
            chunk = sorted(order[m:m + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# ---------------------------------------------------------------------------------------------------------------
# Data order

def shuffled_turns(entry: dict, seed: int) -> dict:
    """A short-answer sample with its question-answer pairs in random order; `<image>` stays in the first question.

    The teachers ask in a fixed order ("How many objects?" first, "Where is ...?" fifth, ...), and a tiny LLM learns
    that order as a shortcut, taking the answer type from the turn number instead of the question; evaluation then
    asks every question as the first turn. Shuffled, every kind of question appears in every turn."""
    rng = random.Random(f"{seed}:{entry['id']}")
    turns = entry["conversations"]
    pairs = [[dict(turns[i]), dict(turns[i + 1])] for i in range(0, len(turns) - 1, 2)]
    first = pairs[0][0]["value"]
    pairs[0][0]["value"] = first.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "")
    rng.shuffle(pairs)
    pairs[0][0]["value"] = "<image>\n" + pairs[0][0]["value"]
    return {**entry, "conversations": [t for pair in pairs for t in pair]}


def with_unfamiliar_words(entry: dict, seed: int, rate: float) -> dict:
    """The sample with, in each question (with probability `rate`), one made-up word ("zqvetk") put somewhere among
    its words; the answers are unchanged.

    A student's question holds words the tiny LLM never read ("Whereabouts is the star?"), and the tokenizer writes
    each as a run of rare pieces (Where|a|b|out|s). A model that met none in training is thrown by them and answers
    another question (a shape to "whereabouts"); one that met made-up words learns to answer from the words it
    knows. The made-up words are 5 to 9 random letters, so practically never a word of the data."""
    rng = random.Random(f"{seed}:{entry['id']}:unfamiliar")
    turns = []
    for turn in entry["conversations"]:
        turn = dict(turn)
        if turn["from"] == "human" and rng.random() < rate:
            lines = turn["value"].split("\n")
            i = next((k for k, line in enumerate(lines) if line.strip() and "<image>" not in line), None)
            if i is not None:                 # the question's line: not the placeholder, not LLaVA-1.5's prompt line
                words = lines[i].split(" ")
                made_up = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 9)))
                words.insert(rng.randint(0, len(words)), made_up)
                lines[i] = " ".join(words)
                turn["value"] = "\n".join(lines)
        turns.append(turn)
    return {**entry, "conversations": turns}
