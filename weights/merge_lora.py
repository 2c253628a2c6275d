"""Merge a LoRA adapter (stage 2 with --lora-r) into its base: one whole checkpoint in the HF llava layout, which
transformers, chat.py and evaluation load like any other, at full speed and without the base folder.

    python weights/merge_lora.py --adapter checkpoints/lora/final --out checkpoints/lora-merged
    python weights/merge_lora.py --adapter checkpoints/lora/final --model-base elsewhere/stage1/final --out ...

Every adapted layer becomes W + (alpha / r) B A (llava_mini/model/lora.py's merge_lora), and the adapter's projector
replaces the base's. --model-base is LLaVA's flag of the same name: the checkpoint the adapter was trained on, when
it is no longer where adapter_config.json says. The adapter's llava_mini.json (template, training record) comes along.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from llava_mini import cli  # noqa: E402
from llava_mini.jsonio import read_json  # noqa: E402
from llava_mini.loading.adapters import ADAPTER_CONFIG, is_adapter, load_adapter  # noqa: E402
from llava_mini.loading.weights import save_llava  # noqa: E402
from llava_mini.model.lora import merge_lora  # noqa: E402


def merge(adapter: str, out: str, model_base: str | None = None) -> str:
    if not is_adapter(adapter):
        raise FileNotFoundError(f"{adapter} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    model = load_adapter(adapter, base=model_base)
    n = merge_lora(model)
    meta = read_json(os.path.join(adapter, "llava_mini.json"))
    meta.update(merged_from=os.path.abspath(adapter))
    save_llava(model, out, os.path.join(adapter, "tokenizer.json"), {"llava_mini.json": meta})
    print(f"merged {n} LoRA layers of {adapter} into {meta.get('base') if model_base is None else model_base}; "
          f"wrote {out}")
    return out


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="the adapter folder (adapter_config.json, adapter_model.safetensors)")
    p.add_argument("--model-base", help="the base checkpoint (default: the one adapter_config.json names)")
    p.add_argument("--out", required=True, help="folder to write the merged checkpoint to")
    args = p.parse_args(argv)
    return merge(args.adapter, args.out, args.model_base)


if __name__ == "__main__":
    cli.run(main)
