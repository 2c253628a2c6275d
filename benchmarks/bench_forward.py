"""Speed of our LLaMA decoder next to transformers' LlamaForCausalLM, same random weights, same process.

    python benchmarks/bench_forward.py                      # CPU, fp32, a small model
    python benchmarks/bench_forward.py --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --heads 16 \
        --kv-heads 16 --vocab 32000 --seq 1024 --batch 4 --new-tokens 64

For each attention backend (eager, sdpa, flex), and compiled, it times
- prefill: one forward pass over a (batch, seq) prompt, and
- decode: greedy generation of --new-tokens tokens with a KV cache (batch 1, the chat case),
and prints milliseconds for both implementations and the ratio ours / transformers (< 1 means we are faster).
Ours with flex runs against transformers with sdpa (its fastest on a CPU); the first call of each padded shape pays
for the compile and is left out as the warm-up. "compiled" is ours with sdpa and the whole decoder under
`torch.compile(dynamic=True)` (what `train.py --compile` does), against transformers with sdpa; decoding with the
static cache and the compiled one-token step (`chat.py --compile`) is benchmarks/bench_decode.py.
Our generate() also feeds the last token into the cache so that a chat can continue; that one extra step is
included in our decode time. Needs `transformers` (requirements-dev.txt). Runs from anywhere.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from benchmarks.measure import timed  # noqa: E402
from llava_mini import cli  # noqa: E402
from llava_mini.model.attention import set_attention_backend  # noqa: E402
from llava_mini.model.config import TextConfig  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--hidden", type=cli.positive_int, default=256)
    parser.add_argument("--intermediate", type=cli.positive_int, default=None, help="default: about 2.7 x hidden")
    parser.add_argument("--layers", type=cli.positive_int, default=4)
    parser.add_argument("--heads", type=cli.positive_int, default=4)
    parser.add_argument("--kv-heads", type=cli.positive_int, default=2)
    parser.add_argument("--vocab", type=cli.positive_int, default=2048)
    parser.add_argument("--batch", type=cli.positive_int, default=2)
    parser.add_argument("--seq", type=cli.positive_int, default=256)
    parser.add_argument("--new-tokens", type=cli.positive_int, default=32)
    parser.add_argument("--repeats", type=cli.positive_int, default=3)
    parser.add_argument("--backends", default="eager,sdpa,flex,compiled",
                        help="comma-separated: attention backends, and compiled (sdpa + torch.compile)")
    args = parser.parse_args(argv)

    import transformers  # the reference; only needed here and in the tests

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = TextConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     intermediate_size=args.intermediate or (args.hidden * 8 // 3 + 63) // 64 * 64,
                     num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                     max_position_embeddings=max(4096, args.seq + args.new_tokens + 1))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf())).to(device, dtype).eval()
    ours = LlamaForCausalLM(cfg).to(device, dtype).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"model: {n_params / 1e6:.1f}M params, {args.layers} layers, hidden {args.hidden}, heads {args.heads}/"
          f"{args.kv_heads} kv, vocab {args.vocab}; device {device}, {args.dtype}")
    print(f"prefill: batch {args.batch} x {args.seq} tokens; decode: batch 1, {args.seq}-token prompt, "
          f"{args.new_tokens} new tokens; median of {args.repeats}")

    prompt = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    single = prompt[:1]
    print(f"\n{'backend':8s} {'phase':8s} {'ours ms':>10s} {'hf ms':>10s} {'ours/hf':>8s}")
    for backend in args.backends.split(","):
        set_attention_backend(ours, "sdpa" if backend == "compiled" else backend)
        hf.set_attn_implementation("sdpa" if backend in ("flex", "compiled") else backend)
        if backend == "compiled":
            ours.model.compile(dynamic=True)      # in place: the module and its state dict keys stay as they are
        with torch.no_grad():
            diff = (ours(prompt).logits.float() - hf(prompt).logits.float()).abs().max().item()
            runs = {
                "prefill": (lambda: ours(prompt), lambda: hf(prompt)),
                "decode": (lambda: ours.generate(single, max_new_tokens=args.new_tokens, stop_token_ids=()),
                           lambda: hf.generate(single, attention_mask=torch.ones_like(single), do_sample=False,
                                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                               eos_token_id=None, pad_token_id=0)),
            }
            for phase, (ours_fn, hf_fn) in runs.items():
                t_ours, t_hf = (timed(fn, device, args.repeats) * 1000 for fn in (ours_fn, hf_fn))
                print(f"{backend:8s} {phase:8s} {t_ours:10.1f} {t_hf:10.1f} {t_ours / t_hf:8.2f}")
        print(f"{backend:8s} max |logits ours - hf| = {diff:.2e}")


if __name__ == "__main__":
    cli.run(main)
