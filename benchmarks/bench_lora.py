"""Stage 2 with full fine-tuning against stage 2 with LoRA, side by side: trainable parameters, optimizer-state
memory and step time, on the classroom model and on SmolLM2-135M behind the tiny CLIP (train.py --preset smol).

    python benchmarks/bench_lora.py                        # classroom with r 8; SmolLM2 with r 8 and r 128 (LLaVA's)
    python benchmarks/bench_lora.py --models smol --ranks 16 --json lora.json

Each row builds the model from the same random weights (the shipped tiny CLIP's and tiny LLaMA's shapes, or
SmolLM2's): the projector + whole LLM trainable, or LoRA on every linear layer of the LLM (alpha = 2 r, dropout 0.05
as LLaVA's; once more without dropout, which on a CPU costs more than the adapters' matmuls) + the projector, the
tower frozen in every row, as train.py sets them. A step is forward + backward + AdamW on one
batch of --batch samples of --seq tokens, each with one image. Rows alternate step by step, medians after a warm-up
step; optimizer state is what AdamW actually holds after the steps (exp_avg and exp_avg_sq, fp32). The last table
is computed, not run: the same counts for LLaVA-1.5-7B (Vicuna-7B), whose weights would not fit here.
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from benchmarks.measure import elapsed, write_results  # noqa: E402
from llava_mini import cli  # noqa: E402
from llava_mini.loading.safetensors_io import parameters_on_meta  # noqa: E402
from llava_mini.model.config import LlavaConfig, llava_1_5_7b, read_config, smollm2_135m  # noqa: E402
from llava_mini.model.llava import LlavaForConditionalGeneration  # noqa: E402
from llava_mini.model.lora import apply_lora  # noqa: E402
from llava_mini.training.model_setup import set_trainable  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "weights", "tiny")
DEFAULT_RANKS = {"classroom": [8], "smol": [8, 128]}


def model_config(name: str) -> LlavaConfig:
    vision = read_config(os.path.join(TINY, "tiny-clip")).vision_config
    text = read_config(os.path.join(TINY, "tiny-llama")) if name == "classroom" else smollm2_135m()
    return LlavaConfig(vision_config=vision, text_config=text, projector_type="mlp2x_gelu", image_aspect_ratio="pad",
                       image_token_index=text.vocab_size - 1)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)


def build(config: LlavaConfig, state: dict | None, rank: int | None, dropout: float = 0.05):
    model = LlavaForConditionalGeneration(config)
    if state is not None:
        model.load_state_dict(state)
    if rank is not None:
        apply_lora(model.language_model, rank, 2.0 * rank, dropout)
    params = set_trainable(model, 2)
    model.train()
    model.vision_tower.eval()
    return model, torch.optim.AdamW(params, lr=1e-4)


def compare(name: str, ranks: list[int], batch: int, seq: int, repeats: int) -> dict:
    config = model_config(name)
    torch.manual_seed(0)
    state = LlavaForConditionalGeneration(config).state_dict()
    rows = {"full": build(config, state, None), **{f"LoRA r {r}": build(config, state, r) for r in ranks},
            f"r {ranks[0]}, no drop": build(config, state, ranks[0], dropout=0.0)}
    size = config.vision_config.image_size
    ids = torch.randint(3, config.text_config.vocab_size - 1, (batch, seq - config.num_image_tokens + 1))
    ids[:, 1] = config.image_token_index
    step_inputs = {"input_ids": ids, "labels": ids.masked_fill(ids == config.image_token_index, -100),
                   "pixel_values": torch.randn(batch, 3, size, size), "return_logits": False}

    def step(model, optimizer):
        model(**step_inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    times = {row: [] for row in rows}
    for i in range(repeats + 1):
        for row, (model, optimizer) in rows.items():
            t = elapsed(lambda: step(model, optimizer))
            if i:
                times[row].append(t)
    total = sum(p.numel() for p in rows["full"][0].parameters())
    print(f"\n{name}: {total / 1e6:.1f}M parameters; a step is {batch} x {seq} positions (one image each), "
          f"fp32, {torch.get_num_threads()} threads")
    print(f"{'':14s} {'trainable':>12s} {'share':>7s} {'AdamW state MB':>15s} {'ms/step':>9s} {'x full':>7s}")
    full_ms = statistics.median(times["full"]) * 1000
    out = {}
    for row, (model, optimizer) in rows.items():
        ms = statistics.median(times[row]) * 1000
        out[row] = {"trainable": trainable(model), "adam_state_mb": optimizer_bytes(optimizer) / 2 ** 20,
                    "ms_per_step": ms, "speedup": full_ms / ms}
        print(f"{row:14s} {out[row]['trainable']:12,d} {out[row]['trainable'] / total:7.2%} "
              f"{out[row]['adam_state_mb']:15.1f} {ms:9.1f} {full_ms / ms:6.2f}x")
    return out


def vicuna_7b_counts(ranks: list[int]) -> dict:
    """LLaVA-1.5-7B on the meta device: trainable parameters, and the bytes that training them costs beyond the
    weights (fp32 gradient + AdamW's two fp32 moments = 12 bytes per trainable parameter)."""
    out = {}
    print("\nLLaVA-1.5-7B (computed on the meta device; 12 bytes per trainable parameter: fp32 grad + 2 AdamW moments)")
    print(f"{'':12s} {'trainable':>15s} {'share':>7s} {'grad + AdamW GB':>16s}")
    for rank in [None, *ranks]:
        with parameters_on_meta():
            model = LlavaForConditionalGeneration(llava_1_5_7b())
        if rank is not None:
            with parameters_on_meta():
                apply_lora(model.language_model, rank, 2.0 * rank)
        set_trainable(model, 2)
        total, n = sum(p.numel() for p in model.parameters()), trainable(model)
        row = "full" if rank is None else f"LoRA r {rank}"
        out[row] = {"trainable": n, "total": total, "grad_adam_gb": 12 * n / 1e9}
        print(f"{row:12s} {n:15,d} {n / total:7.2%} {12 * n / 1e9:16.1f}")
    return out


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="classroom,smol", help="comma-separated: classroom, smol")
    p.add_argument("--ranks", help="comma-separated LoRA ranks (default: 8 for classroom, 8,128 for smol)")
    p.add_argument("--batch", type=cli.positive_int, default=8)
    p.add_argument("--seq", type=cli.positive_int, default=256, help="positions per sample, image tokens included")
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    names = args.models.split(",")
    unknown = set(names) - {"classroom", "smol"}
    if unknown:
        p.error(f"--models: unknown {', '.join(sorted(unknown))} (classroom, smol)")
    ranks = {name: [int(r) for r in args.ranks.split(",")] if args.ranks else DEFAULT_RANKS[name] for name in names}
    results = {name: compare(name, ranks[name], args.batch, args.seq, args.repeats) for name in names}
    results["llava-1.5-7b"] = vicuna_7b_counts([128])
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    cli.run(main)
