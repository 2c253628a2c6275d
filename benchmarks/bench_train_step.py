"""Training speed side by side: a full step (forward + backward + AdamW) of our LLaMA against transformers', and
stage 2 on the real mix with padded, length-grouped and packed batches.

    python benchmarks/bench_train_step.py                                   # both parts, CPU
    python benchmarks/bench_train_step.py --part step --sizes classroom,smollm2-135m --json step.json
    python benchmarks/bench_train_step.py --part mix --model checkpoints/tiny/final --data data/shapes

Part "step": same random weights and tokens for every row, --batch x --seq tokens per step, one sample per row.
Rows: ours with the eager and sdpa attention, ours compiled (torch.compile of the whole model, sdpa), and
transformers' LlamaForCausalLM with eager and sdpa attention. Sizes: "classroom" (the tiny LLaMA of weights/tiny)
and "smollm2-135m" (SmolLM2-135M's shape: hidden 576, 30 layers, 9/3 heads, vocab 49152).

Part "mix": the default run's stage 2 (projector + LLM train, the tower frozen) on the world's stage-2 mix, global
batches of --mix-batch samples drawn the same way for every row: padded (random batches, each padded to its
longest sample), length-grouped (train.py --group-by-length: batches of similar length) and packed (train.py
--pack: random batches, samples packed whole into rows of 512 tokens). It reports trained tokens per second
(the batches' real tokens, padding excluded), the figure that says how fast a pipeline learns; and the
length-grouped batches once more with the language model under torch.compile (train.py --compile).

Rows alternate step by step, so a busy machine slows all of them alike; medians after a warm-up step. The step
part also reports each row's peak memory beyond the loaded model and its optimizer state (benchmarks/measure.py).
"""
from __future__ import annotations

import os
import random
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from benchmarks.measure import elapsed, peak_rss_growth, write_results  # noqa: E402
from llava_mini import cli  # noqa: E402
from llava_mini.model.attention import set_attention_backend  # noqa: E402
from llava_mini.model.config import TextConfig  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402

SIZES = {
    "classroom": dict(vocab_size=1024, hidden_size=96, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=3, num_key_value_heads=3, head_dim=32),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64),
}


def timed_step(model, opt, batch) -> float:
    def step():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return elapsed(step)


def alternate(rows: dict, batches, repeats: int) -> dict:
    """rows: name -> (model, optimizer). Median seconds per step of each, run in turn on the same batches."""
    times = {name: [] for name in rows}
    for i in range(repeats + 1):
        for name, (model, opt) in rows.items():
            t = timed_step(model, opt, batches(i, name))
            if i:                                         # step 0 is the warm-up (and the compile)
                times[name].append(t)
    return {name: statistics.median(t) for name, t in times.items()}


def step_part(args) -> dict:
    import transformers
    results = {}
    for size in args.sizes.split(","):
        cfg = TextConfig(**SIZES[size], max_position_embeddings=max(2048, args.seq), tie_word_embeddings=True)
        torch.manual_seed(0)
        hf_state = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf())).state_dict()
        rows = {}
        for name in ("ours eager", "ours sdpa", "ours compiled", "transformers eager", "transformers sdpa"):
            if name.startswith("ours"):
                model = LlamaForCausalLM(cfg)
                set_attention_backend(model, "eager" if name == "ours eager" else "sdpa")
            else:
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf()))
                model.set_attn_implementation(name.split()[1])
            model.load_state_dict(hf_state, strict=True)
            model.train()
            if name == "ours compiled":
                model.compile()                     # in place: same module, same state dict keys
            rows[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        ids = torch.randint(3, cfg.vocab_size, (args.batch, args.seq))
        seconds = alternate(rows, lambda i, name: {"input_ids": ids, "labels": ids}, args.repeats)
        memory = {name: peak_rss_growth(lambda: timed_step(model, opt, {"input_ids": ids, "labels": ids}))
                  for name, (model, opt) in rows.items()}
        tokens = args.batch * args.seq
        best_hf = min(seconds["transformers eager"], seconds["transformers sdpa"])
        print(f"\n{size}: {sum(p.numel() for p in rows['ours eager'][0].parameters()) / 1e6:.1f}M params, "
              f"batch {args.batch} x {args.seq} tokens, fp32, {torch.get_num_threads()} threads")
        print(f"{'':20s} {'ms/step':>9s} {'tokens/s':>9s} {'x best transformers':>20s} {'peak MB':>8s}")
        results[size] = {}
        for name, t in seconds.items():
            results[size][name] = {"ms_per_step": t * 1000, "tokens_per_s": tokens / t, "speedup": best_hf / t,
                                   "peak_mb": memory[name]}
            peak = "n/a" if memory[name] is None else f"{memory[name]:.0f}"
            print(f"{name:20s} {t * 1000:9.1f} {tokens / t:9.0f} {best_hf / t:19.2f}x {peak:>8s}")
    return results


def mix_part(args) -> dict:
    from llava_mini.data.dataset import LengthGroupedBatchSampler, LlavaDataset, micro_batches
    from llava_mini.loading.model_folder import load_checkpoint
    from llava_mini.training.loop import model_inputs
    from llava_mini.training.model_setup import set_trainable
    from llava_mini.training.recipes import TINY_STAGE2
    model, tokenizer, template = load_checkpoint(args.model)
    data = os.path.join(args.data, "stage2_conv_detail_complex_vqa_shuffled.json")
    dataset = LlavaDataset(data, args.data, tokenizer, template, model.config, max_length=TINY_STAGE2.max_length)
    lengths, B = dataset.lengths, args.mix_batch
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [order[i:i + B] for i in range(0, len(order) - B + 1, B)]
    grouped = LengthGroupedBatchSampler(lengths, B, seed=0, drop_last=True).batches()
    plans = {"padded": (random_batches, None), "length-grouped": (grouped, None),
             "length-grouped, compiled": (grouped, None), "packed": (random_batches, TINY_STAGE2.max_length)}
    rows, real = {}, {name: [] for name in plans}
    for name in plans:
        m = load_checkpoint(args.model)[0]
        if name.endswith("compiled"):
            m.language_model.compile(dynamic=True)          # what train.py --compile does
        params = set_trainable(m, 2)
        m.train()
        m.vision_tower.eval()
        rows[name] = (m, torch.optim.AdamW(params, lr=1e-5))

    def batches(i, name):
        plan, pack_length = plans[name]
        samples = [dataset[j] for j in plan[i % len(plan)]]
        mb = micro_batches(samples, len(samples), tokenizer.pad_id, model.config.image_token_index, pack_length)[0]
        if i:
            # (positions the LLM computes for real tokens, image features included; token ids and their grid)
            real[name].append((sum(s["length"] for s in samples), sum(len(s["input_ids"]) for s in samples),
                               mb["input_ids"].numel()))
        return {**model_inputs(mb, "cpu"), "return_logits": False}

    seconds = alternate(rows, batches, args.repeats)
    print(f"\nstage 2 on {data}: {len(lengths)} samples, global batch {B}, one micro-batch, fp32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':26s} {'ms/step':>9s} {'trained tok/s':>14s} {'ids grid':>10s} {'padding':>8s} {'x padded':>9s}")
    results = {}
    for name, t in seconds.items():
        tok = statistics.mean(r[0] for r in real[name])
        padding = 1 - sum(r[1] for r in real[name]) / sum(r[2] for r in real[name])
        results[name] = {"ms_per_step": t * 1000, "tokens_per_s": tok / t, "padding_share": padding}
    for name, r in results.items():
        r["speedup_vs_padded"] = r["tokens_per_s"] / results["padded"]["tokens_per_s"]
        print(f"{name:26s} {r['ms_per_step']:9.1f} {r['tokens_per_s']:14.0f} "
              f"{statistics.mean(x[2] for x in real[name]):10.0f} {r['padding_share']:8.1%} "
              f"{r['speedup_vs_padded']:8.2f}x")
    return results


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["step", "mix", "all"], default="all")
    p.add_argument("--sizes", default="classroom,smollm2-135m", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--batch", type=cli.positive_int, default=4)
    p.add_argument("--seq", type=cli.positive_int, default=256)
    p.add_argument("--model", default="checkpoints/tiny/final", help="the mix part: a trained classroom model")
    p.add_argument("--data", default="data/shapes", help="the mix part: the world with its stage-2 mix")
    p.add_argument("--mix-batch", type=cli.positive_int, default=8, help="samples per step (the default run's 8)")
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--threads", type=cli.positive_int, default=None)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise ValueError(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    if args.part in ("step", "all"):
        results["step"] = step_part(args)
    if args.part in ("mix", "all"):
        results["mix"] = mix_part(args)
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    cli.run(main)
