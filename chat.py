"""Chat with a LLaVA model about an image, in the terminal (or with a text-only LLaMA, without one).

    python chat.py                                   # the model `python train.py` leaves + a shapes-world image
    python chat.py --model checkpoints/tiny/final --image data/shapes/images/test/shapes_test_000000.png
    python chat.py --model llava-1.5-7b-hf --image photo.jpg --device cuda      # HF llava layout
    python chat.py --model llava-v1.5-7b --vision-tower clip-vit-large-patch14-336 --image photo.jpg   # original
    python chat.py --prompt "What shapes do you see?"                            # one question, print, exit
    python chat.py --model checkpoints/smollm2 --prompt "What is the capital of France?"   # a text-only LLM
    python chat.py --model checkpoints/lora/final [--model-base checkpoints/tiny/stage1/final]  # a LoRA adapter

Commands inside the chat: /image PATH (a new image starts a new conversation), /reset, /quit.

The conversation's KV cache is kept across turns: each turn feeds only its own new tokens (for vicuna_v1
"USER: {question} ASSISTANT:"), and the cached keys/values of everything before are reused, so a turn costs the
same however long the conversation already is. Tokens are printed as they are generated.
"""
from __future__ import annotations

import glob
import io
import os
import sys

import torch

from llava_mini import cli
from llava_mini.data.conversation import TEMPLATES, get_template, stop_token_ids, tokenize_next_turn, tokenize_prompt
from llava_mini.data.images import load_image, preprocess_image
from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.model.attention import BACKENDS, set_attention_backend

DEFAULT_MODEL = "checkpoints/tiny/final"
DEFAULT_IMAGES = "data/shapes/images/test"


class StreamPrinter:
    """Prints tokens as they arrive. Decoding token by token would break characters split over several tokens
    (byte pieces) and lose SentencePiece's spaces, so we decode everything so far and print the new suffix,
    holding back while it ends in an incomplete character (U+FFFD)."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out = tokenizer, out
        self.ids, self.printed = [], ""

    def __call__(self, token_id: int):
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        new = text[len(self.printed):] if text.startswith(self.printed) else text
        self.out.write(new.lstrip() if not self.printed else new)
        self.out.flush()
        self.printed = text

    def finish(self) -> str:
        return self.tokenizer.decode(self.ids).strip()


class ChatSession:
    """One conversation about one image: the token history and the KV cache that holds it."""

    def __init__(self, model, tokenizer, template, *, device="cpu", max_new_tokens=256, temperature=0.0,
                 top_p=1.0, seed=None):
        self.model, self.tokenizer = model, tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.device, self.max_new_tokens, self.temperature, self.top_p = device, max_new_tokens, temperature, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        self.stop_ids = stop_token_ids(tokenizer, self.template)
        self.template_stop_id = tokenizer.token_to_id(self.template.stop)   # </s>, <|im_end|>: ends every answer
        self.text_only = not hasattr(model, "vision_tower")          # a plain LLM (SmolLM2, a tiny LLaMA): no images
        self.llm = model if self.text_only else model.language_model
        self.max_positions = self.llm.config.max_position_embeddings
        self.image = None
        self.reset()

    def reset(self):
        # The KV cache of every token so far (None before the first turn). A compiled decode step decodes into a
        # static cache: one of the whole context holds every turn, so the step compiles once per conversation.
        self.cache = self.llm.new_cache(1, self.max_positions, static=True) if self.llm.decoding_compiled else None
        self.history = []          # the token ids fed so far (the placeholder counts as one)
        self.turns = 0
        self.last_stopped = True   # did the last answer end with its stop token (which is then in the cache)?

    def set_image(self, path: str):
        """Load a new image (raises with a clear message if it cannot) and start a new conversation."""
        if self.text_only:
            raise ValueError(f"{path}: this model is text-only (no vision tower), it cannot take an image")
        image = load_image(path)
        self.image = preprocess_image(image, self.model.config.vision_config, self.model.config.image_aspect_ratio)
        self.reset()

    def _new_ids(self, question: str) -> list[int]:
        if self.turns == 0:
            text = ("<image>\n" if self.image is not None else "") + question
            return tokenize_prompt(self.tokenizer, [text], self.template)
        ids = tokenize_next_turn(self.tokenizer, question, self.template)
        # An answer cut off by max_new_tokens has no stop token yet; the template needs one before the next turn.
        return ids if self.last_stopped else [self.template_stop_id] + ids

    def ask(self, question: str, streamer=None) -> list[int]:
        """Answer one user turn; returns the answer's token ids. Raises ValueError if the conversation would no
        longer fit in the model's context (then /reset)."""
        ids = self._new_ids(question)
        n_image = self.model.config.num_image_tokens if self.turns == 0 and self.image is not None else 0
        used = len(self.cache or []) + len(ids) - (1 if n_image else 0) + n_image
        if used + self.max_new_tokens > self.max_positions:
            raise ValueError(f"this turn needs {used} positions + {self.max_new_tokens} new tokens, more than the "
                             f"model's context of {self.max_positions}; use /reset (or a shorter question, or a "
                             f"smaller --max-new-tokens)")
        pixel_values = self.image[None].to(self.device) if n_image else None
        if pixel_values is not None:
            pixel_values = pixel_values.to(next(self.model.vision_tower.parameters()).dtype)
        options = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                       stop_token_ids=self.stop_ids, streamer=streamer, past_key_values=self.cache,
                       generator=self.generator)
        input_ids = torch.tensor([ids], device=self.device)
        out = (self.model.generate(input_ids=input_ids, **options) if self.text_only
               else self.model.generate(input_ids, pixel_values, **options))
        answer = out.tokens[0]
        self.cache = out.past_key_values
        self.last_stopped = len(answer) < self.max_new_tokens
        self.history += ids + answer + ([self.template_stop_id] if self.last_stopped else [])
        self.turns += 1
        return answer


def default_image() -> str | None:
    images = sorted(glob.glob(os.path.join(DEFAULT_IMAGES, "*.png")))
    return images[0] if images else None


def run_chat(session: ChatSession, lines, out=sys.stdout) -> None:
    """The interactive loop over `lines` (stdin): questions and /commands."""
    print("Type a message; /reset, /quit." if session.text_only else
          "Type a question about the image; /image PATH, /reset, /quit.", file=out)
    while True:
        out.write("\nUSER: ")
        out.flush()
        line = lines.readline()
        if not line:                     # end of input
            out.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if "\ufffd" in line:             # bytes that are not UTF-8 (see main): say so, and ask it as it reads
            print("(some of that line was not UTF-8 text; it is read with \ufffd in those places)", file=out)
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            print("(conversation reset; same image)", file=out)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                session.set_image(path)
                print(f"(new image: {path}; new conversation)", file=out)
            except (OSError, ValueError) as e:
                print(f"(could not open the image: {e}; keeping the current one)", file=out)
            continue
        if line.startswith("/"):
            print(f"(unknown command {line.split()[0]}; use /image PATH, /reset or /quit)", file=out)
            continue
        out.write("ASSISTANT: ")
        printer = StreamPrinter(session.tokenizer, out)
        try:
            session.ask(line, streamer=printer)
        except ValueError as e:
            print(f"\n({e})", file=out)
            continue
        out.write("\n")


def main(argv=None):
    p = cli.ArgumentParser(description="Chat with a LLaVA model about an image.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint folder (default {DEFAULT_MODEL})")
    cli.add_checkpoint_arguments(p)
    p.add_argument("--image", help=f"image file (default: the first image in {DEFAULT_IMAGES})")
    p.add_argument("--template", choices=sorted(TEMPLATES),
                   help="conversation template (default: the one stored with the checkpoint)")
    p.add_argument("--temperature", type=cli.non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=cli.probability, default=1.0, help="sample from the smallest set of tokens with this mass")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=256, help="length limit of each answer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=cli.non_negative_int, default=0, help="for sampling (temperature > 0)")
    p.add_argument("--prompt", help="ask one question, print the answer and exit")
    p.add_argument("--attention", choices=BACKENDS, default="sdpa",
                   help="attention backend (flex: FlexAttention compiled per 128-token block; slower on a CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decode step over a static KV cache: the first answer waits for "
                        "the compile, then tokens come faster (benchmarks/bench_decode.py)")
    args = p.parse_args(argv)

    if not os.path.isdir(args.model):
        hint = " Train one first: python train.py" if args.model == DEFAULT_MODEL else ""
        sys.exit(f"error: no model at {args.model}.{hint}")
    dtype = torch.bfloat16 if str(args.device).startswith("cuda") else None
    model, tokenizer, template = load_checkpoint(args.model, args.vision_tower, args.device, dtype, text_only_ok=True,
                                                 model_base=args.model_base)
    set_attention_backend(model, args.attention)
    text_only = not hasattr(model, "vision_tower")
    if text_only and args.image:
        raise ValueError(f"{args.model} is a text-only model (no vision tower): it cannot take --image; "
                         "chat without it")
    if args.compile:
        (model if text_only else model.language_model).compile_decoding()
        print("(--compile: the first answer waits for the compile, under a minute on a CPU)", file=sys.stderr)
    session = ChatSession(model, tokenizer, args.template or template, device=args.device,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)
    image = None if text_only else args.image or default_image()
    if image is not None:
        session.set_image(image)
    elif not text_only:
        print(f"(no --image and no images in {DEFAULT_IMAGES}; chatting without an image. "
              f"Make the shapes world with: python -m llava_mini.synth.world --out data/shapes)", file=sys.stderr)

    if args.prompt is not None:
        answer = session.ask(args.prompt)
        print(tokenizer.decode(answer).strip())
        return
    print(f"model: {args.model} (template {session.template.name}); " +
          ("text only" if text_only else f"image: {image}"))
    # A byte that is not UTF-8 (a terminal in another encoding, a pasted binary) must not end the conversation.
    lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace") if hasattr(sys.stdin, "buffer") \
        else sys.stdin
    run_chat(session, lines)


if __name__ == "__main__":
    cli.run(main)
