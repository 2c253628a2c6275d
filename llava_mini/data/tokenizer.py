"""Tokenizer: a thin wrapper over a `tokenizers.Tokenizer` read from a tokenizer.json.

It adds what LLaVA needs on top of the plain tokenizer: the special token ids (bos, eos, pad, unk) and the image
placeholder `<image>`, a dedicated added token whose single position the model replaces by the image features
(docs/ARCHITECTURE.md). Like the HF llava checkpoints, the placeholder gets the first id after the base vocabulary:
32000 for the LLaMA / Vicuna tokenizer.

    tok = Tokenizer.from_file("tokenizer.json")
    ids = tok.encode("A chat between ...", add_bos=True)
    text = tok.decode(ids)

Which string is bos / eos / pad / unk is read from a `tokenizer_config.json` beside the file when there is one (HF ships
one), else guessed from the usual names (`<s>`, `</s>`, `<unk>`, `<pad>`, `<|im_end|>`, ...), and can always be given.
"""
from __future__ import annotations

import json
import os
import re

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from llava_mini.jsonio import read_json

IMAGE_TOKEN = "<image>"

# Usual names of the special tokens, tried in order when tokenizer_config.json does not say.
_BOS_NAMES = ("<s>", "<|begin_of_text|>")
_EOS_NAMES = ("</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")
_UNK_NAMES = ("<unk>", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>")


class Tokenizer:
    """encode / decode plus the special ids. `vocab_size` counts the added tokens (the `<image>` placeholder too),
    so it is the smallest embedding table that can hold every id this tokenizer produces."""

    IMAGE_TOKEN = IMAGE_TOKEN

    def __init__(self, tokenizer: HFTokenizer, bos_token: str | None = None, eos_token: str | None = None,
                 unk_token: str | None = None, pad_token: str | None = None):
        self._tok = tokenizer
        self._text_tok = None      # the copy that reads special tokens as text (_text_tokenizer)
        if tokenizer.token_to_id(IMAGE_TOKEN) is None:
            # normalized=False: matched in the raw text, before the normalizer can touch it (e.g. prepend "▁").
            tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
        self.image_token_id: int = tokenizer.token_to_id(IMAGE_TOKEN)

        self.bos_id = self._find(bos_token, _BOS_NAMES)
        self.eos_id = self._find(eos_token, _EOS_NAMES)
        self.unk_id = self._find(unk_token, _UNK_NAMES)
        # LLaMA has no pad token; LLaVA pads with <unk>. Padded positions are masked anyway (labels -100,
        # attention segment id 0), so the id only has to be a valid one.
        self.pad_id = self._find(pad_token, _PAD_NAMES)
        if self.pad_id is None:
            self.pad_id = self.unk_id if self.unk_id is not None else self.eos_id
        if self.eos_id is None:
            raise ValueError("tokenizer has no end-of-sequence token (tried %s); pass eos_token=" % (_EOS_NAMES,))

        # Ids of the added special tokens (<s>, </s>, <image>, <|im_end|>, ...): text after one of them starts a
        # new "chunk" for the normalizer, which matters for the prefix space (see conversation.py).
        self.special_ids = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        # Every special token string and its id (<s>, </s>, <image>, <|im_start|>, ...), and a pattern that finds
        # them in template text (longest first), made once: conversation.py uses both for every segment.
        self.special_tokens: dict[str, int] = {tokenizer.id_to_token(i): i for i in self.special_ids}
        self.special_pattern = re.compile("|".join(re.escape(t) for t in sorted(self.special_tokens, key=len,
                                                                                  reverse=True)) or "(?!)")

        # SentencePiece-style tokenizers (LLaMA) turn "a" into "▁a": they add a space in front of every chunk
        # of text. Byte-level BPE tokenizers (GPT-2, SmolLM2) usually do not: "a" stays "a".
        # Look only at the first token's first character: a small vocabulary may split "▁a" into "▁", "a".
        first = tokenizer.encode("a", add_special_tokens=False).tokens[0]
        self.adds_prefix_space: bool = first.startswith(("▁", "Ġ"))

    @classmethod
    def from_file(cls, path: str, **special_tokens) -> "Tokenizer":
        """Read tokenizer.json (or a folder holding it). A tokenizer_config.json beside it names the specials."""
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = HFTokenizer.from_file(path)
        except Exception as e:   # tokenizers raises a bare Exception on a bad file
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.exists(config_path):
            config = read_json(config_path)
            for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
                value = config.get(name)
                if isinstance(value, dict):        # older files store {"content": "<s>", ...}
                    value = value.get("content")
                if value and special_tokens.get(name) is None:
                    special_tokens[name] = value
        return cls(tok, **special_tokens)

    def _find(self, given: str | None, names: tuple) -> int | None:
        if given is not None:
            token_id = self._tok.token_to_id(given)
            if token_id is None:
                raise ValueError(f"special token {given!r} is not in the tokenizer's vocabulary")
            return token_id
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. With `special_tokens` (template markup), special tokens written in the text (`</s>`,
        `<|im_end|>`) become their single ids. Without (what a user or a data file wrote), they are plain text:
        a question holding "</s>" cannot end its turn early. `<image>` is the single id either way, since data files
        write it on purpose to place the image. The BOS is added here, not by the tokenizer.json's post-processor, so
        every tokenizer behaves the same."""
        tok = self._tok if special_tokens else self._text_tokenizer()
        ids = tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        return ids

    def _text_tokenizer(self) -> HFTokenizer:
        """A copy of the tokenizer that reads every special token but `<image>` as plain text (made on first use)."""
        if self._text_tok is None:
            spec = json.loads(self._tok.to_str())
            markup = [t["content"] for t in spec["added_tokens"] if t["special"] and t["content"] != IMAGE_TOKEN]
            for added in spec["added_tokens"]:
                # a non-special added token is still matched, and encode_special_tokens leaves it alone
                added["special"] = added["special"] and added["content"] != IMAGE_TOKEN
            model = spec["model"]
            if model.get("type") == "BPE":
                # A BPE trained on rendered chats (ours) has merges that spell "</s>" (even "</s>USER:"), so the text
                # "</s>" would still come out as the stop token's id. Without them it is spelled in smaller pieces;
                # text that does not contain such a spelling never uses those merges, so it encodes as before.
                pair = (lambda m: m.split(" ", 1)) if model["merges"] and isinstance(model["merges"][0], str) \
                    else (lambda m: m)
                model["merges"] = [m for m in model["merges"] if not any(t in "".join(pair(m)) for t in markup)]
            self._text_tok = HFTokenizer.from_str(json.dumps(spec))
            self._text_tok.encode_special_tokens = True
        return self._text_tok

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def save(self, path: str) -> None:
        """Write tokenizer.json (with the `<image>` token) atomically."""
        tmp = f"{path}.tmp{os.getpid()}"
        self._tok.save(tmp)
        os.replace(tmp, path)

    def check_image_token(self, image_token_index: int, where: str) -> None:
        """The model splices image features at `image_token_index`; the tokenizer must write that very id for
        `<image>`, or every image would silently land nowhere. `where` names the checkpoint or file for the error."""
        if self.image_token_id != image_token_index:
            raise ValueError(f"{where}: the tokenizer's {IMAGE_TOKEN} id is {self.image_token_id} but the model's "
                             f"image_token_index is {image_token_index}")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id}, "
                f"unk={self.unk_id}, image={self.image_token_id}, prefix_space={self.adds_prefix_space})")
