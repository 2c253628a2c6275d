"""Conversation templates and the labels of a conversation (docs/ARCHITECTURE.md, "Templates and labels").

A conversation is a list of strings that alternate user, assistant, user, ... (the first is a user turn). A template
renders it as `Segment`s, each a piece of the prompt text with a flag saying whether the model is trained to say it:

    vicuna_v1, turns ["<image>\\nWhat is it?", "A cat.", "Why?", "Fur."]:
      Segment("{system} USER: <image>\\nWhat is it? ASSISTANT:", train=False)
      Segment(" A cat.</s>", train=True)
      Segment("USER: Why? ASSISTANT:", train=False)
      Segment(" Fur.</s>", train=True)

`tokenize_conversation` tokenizes the segments one by one, so the labels are exact (-100 on every untrained token),
and checks that the concatenated segment tokens equal the tokenization of the whole text: if a token straddled a
segment boundary the labels would be wrong, and that is an error naming the sample (the original LLaVA printed a
"tokenization mismatch" warning and silently masked the whole sample).

The prefix-space trap. The LLaMA tokenizer.json prepends "▁" (a space) to every chunk of text: at the start and
after each special token, so "</s>USER" -> ["</s>", "▁US", "ER"] (the legacy SentencePiece behaviour LLaVA was
trained with). Tokenized alone, a segment in the middle of a chunk would get a "▁" it does not have in the whole.
So the templates cut the text only (a) right after a special token (`</s>`, `<image>`, `<|im_end|>`), where the
whole text gets the "▁" too, or (b) right before a space, which the prepended "▁" then stands for: " A cat.</s>" is
encoded as "A cat.</s>" -> ["▁A", "▁cat", ".", "</s>"], exactly the tokens of "... ASSISTANT: A cat.</s>" after ":".
Tokenizers without a prefix space (byte-level BPE, chatml) encode every segment as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from llava_mini.data.tokenizer import IMAGE_TOKEN, Tokenizer

IGNORE_INDEX = -100   # label of a position with no loss (PyTorch's cross_entropy default ignore_index)

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# LLaVA-1.5's prompt for short-answer VQA, appended to the question.
SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."


class TokenizationMismatch(ValueError):
    """The segment-by-segment tokens differ from the tokens of the whole text, so the labels would be wrong."""


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool          # True: the model learns to say this text (its tokens keep their labels)
    turn_spans: tuple[tuple[int, int], ...] = ()   # (start, end) of each turn's own words in `text`


class Turn(str):
    """A turn's own words (what a user typed, what a data file holds) inside a template's markup. They are
    tokenized as text: a question holding "</s>" or "<|im_end|>" cannot end its turn or start a new one. Only
    `<image>` keeps its id, because data files write it on purpose to place the image."""


def segment(train: bool, *parts: str) -> Segment:
    """A Segment from markup strings and Turn texts, remembering where the Turns lie."""
    text, spans = "", []
    for part in parts:
        if isinstance(part, Turn):
            spans.append((len(text), len(text) + len(part)))
        text += part
    return Segment(text, train, tuple(spans))


@dataclass(frozen=True)
class Template:
    """One prompt format. `style` picks the rendering rule: "plain" (stage 1), "sep" (vicuna_v1 / llava_v1), "chatml"."""
    name: str
    style: str
    system: str = ""
    add_bos: bool = True          # start the token sequence with BOS
    stop: str = "</s>"            # ends every answer; generation stops at this token

    def render(self, turns: list[str]) -> list[Segment]:
        """Segments of a conversation. If `turns` ends with a user turn, the rendering ends with the generation
        prompt (what the model sees before it answers)."""
        if not turns:
            raise ValueError("a conversation needs at least one user turn")
        if self.style == "plain":
            segments = self._render_plain(turns)
        elif self.style == "sep":
            segments = self._render_sep(turns)
        elif self.style == "chatml":
            segments = self._render_chatml(turns)
        else:
            raise ValueError(f"template {self.name!r}: unknown style {self.style!r}")
        return [s for s in segments if s.text]

    def _render_plain(self, turns):
        # Stage 1: `<image>` + caption + "\n". The instruction text ("Describe the image.") is dropped.
        if len(turns) > 2:
            raise ValueError(f"template 'plain' takes one instruction and one caption, got {len(turns)} turns")
        image = IMAGE_TOKEN * turns[0].count(IMAGE_TOKEN)
        segments = [Segment(image, False)]
        if len(turns) == 2:
            segments.append(segment(True, Turn(turns[1]), "\n"))
        return segments

    def _render_sep(self, turns):
        # "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
        # The space after "ASSISTANT:" belongs to the answer segment (cut before a space, see the module docstring);
        # a new user turn follows "</s>", a special token, so it can start a segment as it is.
        segments = []
        for i in range(0, len(turns), 2):
            head = f"{self.system} " if i == 0 else ""
            segments.append(segment(False, f"{head}USER: ", Turn(turns[i]), " ASSISTANT:"))
            if i + 1 < len(turns):
                segments.append(segment(True, " ", Turn(turns[i + 1]), self.stop))
        return segments

    def _render_chatml(self, turns):
        # "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q1}<|im_end|>\n<|im_start|>assistant\n{a1}<|im_end|>\n"
        # Loss on the answer and its <|im_end|>; the "\n" after it starts the next untrained segment.
        segments, pending = [], ""
        if self.system:
            pending = f"<|im_start|>system\n{self.system}<|im_end|>\n"
        for i in range(0, len(turns), 2):
            segments.append(segment(False, pending, "<|im_start|>user\n", Turn(turns[i]),
                                    "<|im_end|>\n<|im_start|>assistant\n"))
            pending = ""
            if i + 1 < len(turns):
                segments.append(segment(True, Turn(turns[i + 1]), self.stop))
                pending = "\n"
        segments.append(Segment(pending, False))
        return segments

    def generation_prompt(self, turns: list[str]) -> str:
        """The prompt text for the model to answer the last user turn (e.g. ends with "ASSISTANT:")."""
        if len(turns) % 2 != 1:
            raise ValueError("a generation prompt needs a conversation that ends with a user turn")
        return "".join(s.text for s in self.render(turns))


TEMPLATES = {
    "plain": Template("plain", "plain", add_bos=True, stop="\n"),
    "vicuna_v1": Template("vicuna_v1", "sep", VICUNA_SYSTEM),
    "llava_v1": Template("llava_v1", "sep", LLAVA_SYSTEM),
    "chatml": Template("chatml", "chatml", SMOLLM_SYSTEM, add_bos=False, stop="<|im_end|>"),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def _encode(tokenizer: Tokenizer, text: str, turn_spans=()) -> list[int]:
    """Token ids of template text: the markup's special tokens are their ids, the turns' words (`turn_spans`) are
    tokenized as text (Turn). The text is cut only at the markup's special tokens, where the tokenizer starts a new
    chunk anyway, so text without special tokens in its turns encodes exactly as tokenizer.encode(text)."""
    specials = tokenizer.special_tokens
    ids, start = [], 0
    for m in tokenizer.special_pattern.finditer(text):
        if any(a <= m.start() < b for a, b in turn_spans):
            continue                                    # written by the user: text
        if start < m.start():
            ids += tokenizer.encode(text[start:m.start()], special_tokens=False)
        ids.append(specials[m.group()])
        start = m.end()
    if start < len(text):
        ids += tokenizer.encode(text[start:], special_tokens=False)
    return ids


def _joined(segments: list[Segment]) -> tuple[str, list[tuple[int, int]]]:
    """The segments' text as one, with their turn spans moved to where they land in it."""
    text, spans = "", []
    for seg in segments:
        spans += [(a + len(text), b + len(text)) for a, b in seg.turn_spans]
        text += seg.text
    return text, spans


def _tokenize_segments(tokenizer: Tokenizer, segments: list[Segment], start_ids: list[int]):
    """Tokens of each segment, encoded alone (see the module docstring for the prefix-space rule)."""
    pieces = []
    after_special = True    # the start of the text is a chunk start, like the text after a special token
    if start_ids:
        after_special = start_ids[-1] in tokenizer.special_ids
    for seg in segments:
        text, spans = seg.text, seg.turn_spans
        if tokenizer.adds_prefix_space and not after_special and text.startswith(" "):
            # the "▁" the tokenizer prepends stands for this space
            text, spans = text[1:], tuple((max(0, a - 1), b - 1) for a, b in spans)
        ids = _encode(tokenizer, text, spans)
        pieces.append(ids)
        if ids:
            after_special = ids[-1] in tokenizer.special_ids
    return pieces


def _check_same(tokenizer, segments, ids, whole, sample_id):
    if ids == whole:
        return
    i = next((k for k, (a, b) in enumerate(zip(ids, whole)) if a != b), min(len(ids), len(whole)))
    seg_tokens = [tokenizer.id_to_token(t) for t in ids[max(0, i - 3): i + 3]]
    whole_tokens = [tokenizer.id_to_token(t) for t in whole[max(0, i - 3): i + 3]]
    raise TokenizationMismatch(
        f"sample {sample_id}: tokenizing the template segments one by one differs from tokenizing the whole text "
        f"at token {i}: segments give {seg_tokens}, the whole text gives {whole_tokens} (segments: "
        f"{[s.text[:40] for s in segments]}). The labels would be wrong; fix the text (e.g. an empty answer or "
        f"one starting with whitespace) or the template.")


def _check_special(tokenizer: Tokenizer, template: Template):
    for token in (template.stop, "<|im_start|>") if template.style == "chatml" else (template.stop,):
        if template.style != "plain" and tokenizer.token_to_id(token) not in tokenizer.special_ids:
            raise ValueError(f"template {template.name!r} needs {token!r} as a special token of the tokenizer")


def tokenize_conversation(tokenizer: Tokenizer, turns: list[str], template: Template | str,
                          sample_id: str = "?") -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation: labels equal input_ids on the trained segments and are -100 on
    BOS, system text, user turns and image placeholders. Raises TokenizationMismatch naming `sample_id`."""
    if isinstance(template, str):
        template = get_template(template)
    _check_special(tokenizer, template)
    segments = template.render(turns)
    start = [tokenizer.bos_id] if template.add_bos else []
    input_ids, labels = list(start), [IGNORE_INDEX] * len(start)
    for seg, ids in zip(segments, _tokenize_segments(tokenizer, segments, start)):
        input_ids += ids
        labels += [t if seg.train and t != tokenizer.image_token_id else IGNORE_INDEX for t in ids]
    whole = start + _encode(tokenizer, *_joined(segments))
    _check_same(tokenizer, segments, input_ids, whole, sample_id)
    return input_ids, labels


def tokenize_prompt(tokenizer: Tokenizer, turns: list[str], template: Template | str) -> list[int]:
    """Token ids of the generation prompt for the last user turn (what chat and evaluation feed the model)."""
    if isinstance(template, str):
        template = get_template(template)
    if len(turns) % 2 != 1:
        raise ValueError("a generation prompt needs a conversation that ends with a user turn")
    ids, _ = tokenize_conversation(tokenizer, turns, template, sample_id="prompt")
    return ids


def tokenize_next_turn(tokenizer: Tokenizer, question: str, template: Template | str) -> list[int]:
    """Token ids to append, after an answer and its stop token, to ask `question` in the same conversation.

    Chat keeps its KV cache across turns: cached tokens (previous prompt + answer + stop token) followed by these
    ids equal the tokens of the whole conversation's generation prompt, so nothing is re-encoded. For vicuna_v1
    this is "USER: {question} ASSISTANT:", for chatml "\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n".
    """
    if isinstance(template, str):
        template = get_template(template)
    if template.style == "plain":
        raise ValueError("the plain template has a single turn; it cannot continue a conversation")
    _check_special(tokenizer, template)
    # Render a stand-in conversation and keep the segments after its (last) answer.
    segments = template.render(["?", "?", question])
    last_answer = max(i for i, s in enumerate(segments) if s.train)
    answer_ids = tokenizer.encode(template.stop)    # the previous answer ends with this special token
    pieces = _tokenize_segments(tokenizer, segments[last_answer + 1:], answer_ids)
    return [t for ids in pieces for t in ids]


def stop_token_ids(tokenizer, template) -> tuple[int, ...]:
    """Generation stops at the template's stop token (</s>, <|im_end|>) and at the tokenizer's EOS."""
    ids = {tokenizer.eos_id, tokenizer.token_to_id(template.stop)}
    return tuple(sorted(i for i in ids if i is not None))
