"""CPU greedy-decoding speed of SmolLM2-135M-Instruct: llava_mini vs transformers on the same weights, against the
memory-bandwidth bound of this machine.

    python benchmarks/bench_decode_smollm2.py [--new-tokens 64] [--repeats 3] [--threads 2] [--json out.json]
    python benchmarks/bench_decode_smollm2.py --profile        # also: where an eager decode step spends its time

Every model loads the folder made by llava_mini.loading.hub.get_smollm2() (float32, converted from the GGUF on PyPI),
gets the same chatml prompt, and decodes greedily with a KV cache for exactly --new-tokens tokens (no early stop).
Rows: ours eager (growing cache), ours with the static cache and the compiled decode step (compiled in a warm-up
call, not timed), transformers' generate. A run's time covers the prompt (prefill) and every decoding step. The
runs alternate so that a busy machine slows all alike; the best of --repeats is reported.

The bound: a decode step must read every weight once (the tied embedding only for the one row it looks up, but
as the LM head in full), so tokens/s <= read bandwidth / weight bytes; the read bandwidth is a torch sum over a
256 MB tensor, measured here with the same threads. Needs transformers (requirements-dev.txt).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.measure import write_results  # noqa: E402
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


def read_bandwidth(repeats: int = 5, nbytes: int = 256 * 2 ** 20) -> float:
    """Bytes per second that a torch reduction reads from memory (the best of `repeats`)."""
    x = torch.ones(nbytes // 4)
    x.sum()
    best = min(timed(x.sum)[0] for _ in range(repeats))
    return nbytes / best


def profile_step(model, ids, n: int, rows: int = 12) -> str:
    """torch.profiler over an eager decode: the ops that take the time, and how many ops a token costs."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_ours(model, ids, n)
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"{ops / n:.0f} aten calls per generated token (prefill included)\n{table}"


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main(argv=None):
    p = cli.ArgumentParser()
    p.add_argument("--new-tokens", type=cli.positive_int, default=64)
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--threads", type=cli.positive_int, default=torch.get_num_threads())
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of an eager decode")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import transformers
    folder = hub.get_smollm2()
    tokenizer = Tokenizer.from_file(folder)
    ids = torch.tensor([tokenize_prompt(tokenizer, ["Write a short story about a robot who learns to paint."],
                                        "chatml")])
    ours = load_llama(folder, dtype=torch.float32).eval()
    compiled = load_llama(folder, dtype=torch.float32).eval().compile_decoding()
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = {"llava_mini eager": (decode_ours, ours), "llava_mini compiled": (decode_ours, compiled),
            "transformers": (decode_transformers, theirs)}

    with torch.inference_mode():
        for fn, model in rows.values():           # warm-up: first calls allocate, pick kernels, compile
            fn(model, ids, args.new_tokens)
        best, tokens = {name: float("inf") for name in rows}, {}
        for _ in range(args.repeats):
            for name, (fn, model) in rows.items():
                t, tokens[name] = timed(fn, model, ids, args.new_tokens)
                best[name] = min(best[name], t)
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())   # tied: counted once
        bound = read_bandwidth() / weight_bytes

    print(f"SmolLM2-135M-Instruct fp32, CPU, {args.threads} threads, prompt {ids.shape[1]} tokens, "
          f"{args.new_tokens} new tokens greedy, best of {args.repeats}")
    print(f"  bound: {weight_bytes / 1e6:.0f} MB of weights per token at {bound * weight_bytes / 1e9:.1f} GB/s "
          f"read = {bound:.0f} tokens/s")
    results = {"bound_tokens_per_s": bound, "weight_mb": weight_bytes / 1e6, "rows": {}}
    for name, t in best.items():
        tps = args.new_tokens / t
        first_diff = next((i for i, (a, b) in enumerate(zip(tokens[name], tokens["transformers"])) if a != b), None)
        results["rows"][name] = {"tokens_per_s": tps, "vs_transformers": best["transformers"] / t,
                                 "share_of_bound": tps / bound, "same_tokens": first_diff is None}
        print(f"  {name:20s} {tps:7.1f} tokens/s  {best['transformers'] / t:5.2f}x transformers  "
              f"{tps / bound:5.1%} of the bound  same tokens as transformers: "
              f"{'yes' if first_diff is None else f'no, from new token {first_diff}'}")
    print("  llava_mini says:", repr(tokenizer.decode(tokens["llava_mini eager"])[:120]))
    if args.profile:
        with torch.inference_mode():
            print(profile_step(ours, ids, args.new_tokens))
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    cli.run(main)
