"""The GPU check: one script, under five minutes on one GPU, that measures what a CPU cannot.

    python benchmarks/gpu_check.py --json gpu.json          # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry-run                # CPU, toy sizes: every part runs (no figures)

1. Training step of a 1B-class LLaMA (hidden 2048, 16 layers, 32/8 heads, SwiGLU 8192, vocab 32000; random weights)
   in bf16, forward + backward + AdamW, 8 x 2048 tokens: tokens/s and MFU, the model FLOPs (6 per parameter per
   token, plus the causal attention's 6 * layers * hidden * seq) over the GPU's bf16 dense peak. Rows: sdpa, flex,
   and the whole model under torch.compile (sdpa).
2. Attention alone, forward + backward, bf16 (8 x 32 heads x 2048 x 64): flex against sdpa on causal rows, and on
   packed rows (documents of 128 to 1024 tokens, flex with the document BlockMask) against the same documents
   padded one per row for sdpa.
3. Decoding at batch 1 with the static KV cache and the compiled step, against the HBM bound: the weights' bytes
   read per token over the copy bandwidth measured here.
4. train.py's CUDA path: `python train.py --quick` (both stages, toy size) in a temporary folder.

The GPU's peak comes from its name (H100/H200: 989 TFLOPS bf16 dense, A100: 312) or --peak-tflops.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from benchmarks.measure import timed, write_results  # noqa: E402
from llava_mini import cli  # noqa: E402
from llava_mini.model.attention import build_mask, flex_attention, sdpa_attention, set_attention_backend  # noqa: E402
from llava_mini.model.config import TextConfig  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
ONE_B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64)
TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16)


def train_steps(cfg: TextConfig, device, dtype, batch: int, seq: int, repeats: int, peak: float | None) -> dict:
    """Part 1: tokens/s and MFU of a full training step for each backend."""
    ids = torch.randint(3, cfg.vocab_size, (batch, seq), device=device)
    params_no_embed = None
    results = {}
    for row in ("sdpa", "flex", "compiled"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(device, dtype).train()
        params_no_embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
        set_attention_backend(model, "sdpa" if row == "compiled" else row)
        if row == "compiled":
            model.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            model(input_ids=ids, labels=ids, return_logits=False).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        try:
            t = timed(step, device, repeats, warmup=2)
        except Exception as e:                               # a row that cannot run here says why, the rest go on
            results[row] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"  train step {row}: {results[row]['error']}")
            continue
        flops = batch * seq * (6 * params_no_embed + 6 * cfg.num_hidden_layers * cfg.hidden_size * seq)
        results[row] = {"ms": t * 1000, "tokens_per_s": batch * seq / t,
                        "mfu": flops / t / (peak * 1e12) if peak else None}
        mfu = f", MFU {results[row]['mfu']:.1%}" if peak else ""
        print(f"  train step {row:8s}: {t * 1000:8.1f} ms, {batch * seq / t:9.0f} tokens/s{mfu}")
    return results


def documents(total: int, rng: random.Random) -> list[int]:
    lengths = []
    while sum(lengths) < total:
        lengths.append(min(rng.randint(128, 1024), total - sum(lengths)))
    return lengths


def attention_only(device, dtype, B: int, H: int, T: int, D: int, repeats: int) -> dict:
    """Part 2: flex vs sdpa, forward + backward, causal and packed."""
    def bench(fn, q, k, v):
        def run():
            out = fn(q, k, v)
            out.float().sum().backward()
        return timed(run, device, repeats, warmup=2)

    def qkv(b, t):
        return [torch.randn(b, H, t, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    results = {}
    q, k, v = qkv(B, T)
    results["causal_sdpa_ms"] = bench(lambda q, k, v: sdpa_attention(q, k, v, causal=True), q, k, v) * 1000
    results["causal_flex_ms"] = bench(lambda q, k, v: flex_attention(q, k, v, causal=True), q, k, v) * 1000
    # packed: the same documents, several per row (flex, document mask) or one per row padded (sdpa, causal)
    rng = random.Random(0)
    rows = [documents(T, rng) for _ in range(B)]
    seg = torch.tensor([[i + 1 for i, n in enumerate(row) for _ in range(n)] for row in rows], device=device)
    packed_mask = build_mask(seg)
    results["packed_flex_ms"] = bench(lambda q, k, v: flex_attention(q, k, v, packed_mask), q, k, v) * 1000
    docs = [n for row in rows for n in row]
    longest = max(docs)
    pq, pk, pv = qkv(len(docs), longest)
    pad_seg = torch.tensor([[1] * n + [0] * (longest - n) for n in docs], device=device)
    pad_mask = build_mask(pad_seg)
    results["padded_sdpa_ms"] = bench(lambda q, k, v: sdpa_attention(q, k, v, pad_mask), pq, pk, pv) * 1000
    results["documents"] = len(docs)
    results["flex_vs_sdpa_causal"] = results["causal_sdpa_ms"] / results["causal_flex_ms"]
    results["packed_flex_vs_padded_sdpa"] = results["padded_sdpa_ms"] / results["packed_flex_ms"]
    print(f"  attention causal: sdpa {results['causal_sdpa_ms']:.2f} ms, flex {results['causal_flex_ms']:.2f} ms "
          f"(flex speed {results['flex_vs_sdpa_causal']:.2f}x sdpa)")
    print(f"  attention packed ({len(docs)} documents): flex {results['packed_flex_ms']:.2f} ms, padded sdpa "
          f"{results['padded_sdpa_ms']:.2f} ms ({results['packed_flex_vs_padded_sdpa']:.2f}x)")
    return results


def copy_bandwidth(device, nbytes: int, repeats: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    return 2 * nbytes / timed(lambda: y.copy_(x), device, repeats, warmup=2)


def decode(cfg: TextConfig, device, dtype, new_tokens: int, repeats: int, bandwidth_bytes: int) -> dict:
    """Part 3: static-cache compiled decode at batch 1 against the HBM bound."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval().compile_decoding()
    prompt = torch.randint(3, cfg.vocab_size, (1, 128), device=device)
    t = timed(lambda: model.generate(prompt, max_new_tokens=new_tokens, stop_token_ids=()), device, repeats, warmup=1)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    bandwidth = copy_bandwidth(device, bandwidth_bytes, repeats)
    tps = new_tokens / t
    bound = bandwidth / weight_bytes
    print(f"  decode batch 1: {tps:.0f} tokens/s; bound {bound:.0f} tokens/s ({weight_bytes / 1e9:.2f} GB of weights "
          f"per token at {bandwidth / 1e9:.0f} GB/s copy bandwidth): {tps / bound:.0%} of it")
    return {"tokens_per_s": tps, "bound_tokens_per_s": bound, "share_of_bound": tps / bound,
            "weight_gb": weight_bytes / 1e9, "copy_bandwidth_gb_s": bandwidth / 1e9}


def train_py(timeout: int) -> dict:
    """Part 4: the pipeline's CUDA path at toy size, in a temporary folder."""
    with tempfile.TemporaryDirectory() as work:
        start = time.time()
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--quick", "--workdir", work],
                              capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    print(f"  train.py --quick: exit {proc.returncode} in {time.time() - start:.0f} s; " + " | ".join(tail))
    return {"returncode": proc.returncode, "seconds": time.time() - start, "tail": tail}


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check that every part runs")
    p.add_argument("--peak-tflops", type=cli.positive_float, help="the GPU's bf16 dense peak (default: from its name)")
    p.add_argument("--parts", default="train,attention,decode,train.py", help="comma-separated parts to run")
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU here; --dry-run runs the parts at toy size on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    name = "cpu" if args.dry_run else torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"device: {name}; bf16 peak {peak or 'unknown'} TFLOPS; torch {torch.__version__}")
    cfg = TextConfig(**(TOY if args.dry_run else ONE_B), max_position_embeddings=4096)
    parts = args.parts.split(",")
    results = {"device": name, "peak_tflops": peak, "torch": torch.__version__}
    if "train" in parts:
        print("1. training step, 1B-class LLaMA, bf16:" if not args.dry_run else "1. training step (toy):")
        results["train_step"] = train_steps(cfg, device, dtype, 2 if args.dry_run else 8,
                                            64 if args.dry_run else 2048, args.repeats, peak)
    if "attention" in parts:
        print("2. attention alone, forward + backward:")
        if args.dry_run:                 # flex has no backward on the CPU: only the shapes are exercised
            print("  (skipped in --dry-run: FlexAttention has no backward pass on the CPU)")
        else:
            results["attention"] = attention_only(device, dtype, 8, 32, 2048, 64, args.repeats)
    if "decode" in parts:
        print("3. decoding, static cache + compiled step:")
        results["decode"] = decode(cfg, device, dtype, 16 if args.dry_run else 128, args.repeats,
                                   2 ** 24 if args.dry_run else 2 ** 31)
    if "train.py" in parts:
        print("4. the pipeline's CUDA path:")
        results["train_py"] = train_py(timeout=600)
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    cli.run(main)
