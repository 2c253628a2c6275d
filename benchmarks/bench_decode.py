"""Decoding speed side by side: our generate() (growing cache; static cache + compiled step) against transformers'
generate() (dynamic cache; static cache + torch.compile), same random weights, same prompts, one process.

    python benchmarks/bench_decode.py                                  # the classroom LLM's shape, CPU, fp32
    python benchmarks/bench_decode.py --json decode.json               # also write the table as JSON
    python benchmarks/bench_decode.py --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --heads 16 \
        --kv-heads 8 --vocab 32000 --image-tokens 576

The prompt is what a chat turn with an image gives the language model: --image-tokens embeddings (where the image
features go) followed by --text-tokens token embeddings, fed as inputs_embeds. For each batch size in --batches it
times greedy decoding of exactly --new-tokens tokens (no early stop) and reports tokens per second per run
(batch x new tokens / seconds), the peak memory one run needs beyond the loaded models (benchmarks/measure.py), and
the prefill latency (one forward pass over the prompt). The compiled rows pay
their compile in a warm-up call that is not timed; the compile time is printed. The rows alternate run by run, so
a busy machine slows all of them alike; the median of --repeats is reported. Needs transformers.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from benchmarks.measure import elapsed, peak_rss_growth, write_results  # noqa: E402
from llava_mini import cli  # noqa: E402
from llava_mini.model.config import TextConfig  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402


def hf_generate(model, embeds, n, **kwargs):
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, max_new_tokens=n,
                          min_new_tokens=n, eos_token_id=None, pad_token_id=0, **kwargs)


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hidden", type=cli.positive_int, default=96)
    p.add_argument("--layers", type=cli.positive_int, default=4)
    p.add_argument("--heads", type=cli.positive_int, default=3)
    p.add_argument("--kv-heads", type=cli.positive_int, default=3, help="3: one per query head, as the tiny LLaMA")
    p.add_argument("--head-dim", type=cli.positive_int, default=32)
    p.add_argument("--vocab", type=cli.positive_int, default=1024)
    p.add_argument("--image-tokens", type=cli.non_negative_int, default=64,
                   help="64: the classroom tower's 8x8 patches")
    p.add_argument("--text-tokens", type=cli.positive_int, default=40)
    p.add_argument("--new-tokens", type=cli.positive_int, default=64)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--threads", type=cli.positive_int, default=None)
    p.add_argument("--skip-hf-compile", action="store_true", help="leave out transformers' static cache + compile")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    T = args.image_tokens + args.text_tokens
    cfg = TextConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     intermediate_size=(args.hidden * 8 // 3 + 63) // 64 * 64, num_attention_heads=args.heads,
                     num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                     max_position_embeddings=max(512, T + args.new_tokens + 1), tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf())).to(device, dtype).eval()
    hf.set_attn_implementation("sdpa")
    eager = LlamaForCausalLM(cfg).to(device, dtype).eval()
    eager.load_state_dict(hf.state_dict(), strict=True)
    compiled = LlamaForCausalLM(cfg).to(device, dtype).eval()
    compiled.load_state_dict(hf.state_dict(), strict=True)
    compiled.compile_decoding()
    n = args.new_tokens
    rows = {
        "ours, growing cache": lambda e: eager.generate(inputs_embeds=e, max_new_tokens=n, stop_token_ids=()),
        "ours, static cache + compiled step": lambda e: compiled.generate(inputs_embeds=e, max_new_tokens=n,
                                                                          stop_token_ids=()),
        "transformers, dynamic cache": lambda e: hf_generate(hf, e, n),
    }
    if not args.skip_hf_compile:
        hf_compiled = transformers.LlamaForCausalLM(hf.config).to(device, dtype).eval()
        hf_compiled.load_state_dict(hf.state_dict())
        hf_compiled.forward = torch.compile(hf_compiled.forward, fullgraph=True)    # transformers' recipe
        rows["transformers, static cache + compile"] = lambda e: hf_generate(hf_compiled, e, n,
                                                                             cache_implementation="static")
    print(f"model: {sum(x.numel() for x in eager.parameters()) / 1e6:.2f}M params, {args.layers} layers, hidden "
          f"{args.hidden}, heads {args.heads}/{args.kv_heads} kv; {device}, {args.dtype}, {torch.get_num_threads()} "
          f"threads; prompt {args.image_tokens} image + {args.text_tokens} text tokens, {n} new tokens, median of "
          f"{args.repeats}")
    results = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "batches": {}}
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            embeds = torch.randn(batch, T, args.hidden, device=device, dtype=dtype) * 0.02
            reference = eager.generate(inputs_embeds=embeds, max_new_tokens=n, stop_token_ids=()).tokens
            warmup, same = {}, {}
            for name, fn in rows.items():                          # warm-up: compiles, first allocations
                start = time.perf_counter()
                out = fn(embeds)
                warmup[name] = time.perf_counter() - start
                # transformers returns only the new tokens when given inputs_embeds
                same[name] = (out.tokens if hasattr(out, "tokens") else out.tolist()) == reference
            times = {name: [] for name in rows}
            for _ in range(args.repeats):
                for name, fn in rows.items():
                    times[name].append(elapsed(lambda: fn(embeds), device))
            prefill = {"ours": statistics.median(elapsed(lambda: eager(inputs_embeds=embeds), device)
                                                 for _ in range(args.repeats)),
                       "transformers": statistics.median(elapsed(lambda: hf(inputs_embeds=embeds), device)
                                                         for _ in range(args.repeats))}
            memory = {name: peak_rss_growth(lambda: fn(embeds), device) for name, fn in rows.items()}
            base = statistics.median(times["transformers, dynamic cache"])
            print(f"\nbatch {batch}: prefill of {T} positions: ours {prefill['ours'] * 1000:.1f} ms, transformers "
                  f"{prefill['transformers'] * 1000:.1f} ms")
            print(f"{'':38s} {'tokens/s':>9s} {'x transformers':>15s} {'warm-up s':>10s} {'peak MB':>8s} "
                  f"{'tokens':>7s}")
            table = {}
            for name in rows:
                t = statistics.median(times[name])
                table[name] = {"tokens_per_s": batch * n / t, "speedup_vs_transformers": base / t,
                               "warmup_s": warmup[name], "peak_mb": memory[name], "tokens_equal_ours_eager": same[name]}
                peak = "n/a" if memory[name] is None else f"{memory[name]:.1f}"
                print(f"{name:38s} {batch * n / t:9.0f} {base / t:14.2f}x {warmup[name]:10.1f} {peak:>8s} "
                      f"{'same' if same[name] else 'differ':>7s}")
            results["batches"][str(batch)] = {"prefill_ms": {k: v * 1000 for k, v in prefill.items()}, "decode": table}
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    cli.run(main)
