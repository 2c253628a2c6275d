"""The tiny bases' tokenizer: a byte-fallback BPE with the structure of LLaMA's tokenizer.json, trained on the world's
text with the `tokenizers` library (weights/make_tiny.py, step 1).

    from weights.tiny_tokenizer import train_tokenizer
    train_tokenizer(texts, vocab_size=1024).save("tokenizer.json")      # read back by llava_mini.data.tokenizer.Tokenizer
"""
from __future__ import annotations

import json
import string

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from llava_mini.data.tokenizer import IMAGE_TOKEN

SPACE = "\u2581"                      # SentencePiece's visible space, as in LLaMA's tokenizer
SPECIALS = ["<unk>", "<s>", "</s>"]   # ids 0, 1, 2, as in LLaMA


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-fallback BPE tokenizer with LLaMA's structure, trained on `texts` with the `tokenizers` library.

    Like LLaMA's tokenizer.json: the normalizer prepends "▁" and turns spaces into "▁"; there is no pre-tokenizer;
    unknown characters fall back to <0xNN> byte tokens; the post-processor adds <s>. Merges are learned inside
    words only (we split on "▁" while training), as SentencePiece does. Unlike LLaMA's, a word and the punctuation
    after it may merge ("left," can be one piece on the world's small corpus); keeping them apart made the tiny
    LLaMA no better (docs/EXPERIMENTS.md, 2026-12-01 night). `vocab_size` is an upper bound: a small corpus runs
    out of merges first."""
    normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    learner = HFTokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizer
    learner.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")    # training only
    alphabet = list(string.ascii_letters + string.digits + string.punctuation) + [SPACE]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256 - 1, special_tokens=SPECIALS,
                                  initial_alphabet=alphabet, show_progress=False)
    learner.train_from_iterator(texts, trainer)
    learned = json.loads(learner.to_str())["model"]

    # Rebuild the vocabulary in LLaMA's order: specials, the 256 byte tokens, then the learned pieces.
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(SPECIALS + [IMAGE_TOKEN])       # <image> gets the next free id, after the vocabulary
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok
