"""Peak memory of loading a checkpoint: llava_mini.loading.weights.load_llama against the naive path.

    python benchmarks/bench_load_memory.py                        # ~670 MB fp32 random Llama, written to /tmp
    python benchmarks/bench_load_memory.py --layers 16 --hidden 1536 --intermediate 4096   # bigger

The naive path is what a first version usually does: read the whole state dict into memory (safetensors load_file,
like torch.load), build the model normally (which allocates and randomly initialises every parameter), then
load_state_dict copies one into the other. That needs two copies of the model at once. Ours builds the model on
the meta device and adopts the tensors as they are read, so its peak should be close to one copy.

Each method runs in a fresh subprocess, which reports its own peak resident set size (VmHWM, Linux). A subprocess that
only imports torch and llava_mini (and builds a toy model on the meta device, a one-time cost of ~65 MB) gives the
baseline, subtracted to get what the load itself costs.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)          # run from anywhere without installing the package

from llava_mini import cli  # noqa: E402

CHILD = r"""
import json, re, sys, time
import torch
from llava_mini.model.config import TextConfig, read_config
from llava_mini.model.llama import LlamaForCausalLM
from llava_mini.loading.weights import load_llama, parameters_on_meta
method, path = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
with parameters_on_meta():   # torch's meta-device machinery costs ~65 MB once per process: count it in the baseline
    LlamaForCausalLM(TextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                num_attention_heads=1))
start = time.perf_counter()
if method == "ours":
    model = load_llama(path)
elif method == "ours_bf16":
    model = load_llama(path, dtype=torch.bfloat16)
elif method == "naive":
    from safetensors.torch import load_file
    import glob
    state = {}
    for file in sorted(glob.glob(path + "/*.safetensors")):
        state.update(load_file(file))                 # the whole checkpoint in memory ...
    model = LlamaForCausalLM(read_config(path))       # ... plus a randomly initialised model ...
    model.load_state_dict(state)                      # ... then copy one into the other
    del state
seconds = time.perf_counter() - start
# Peak RSS of this process in bytes. (Not ru_maxrss: a forked child inherits its parent's high-water mark.)
peak_kb = int(re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read())[1])
print(json.dumps({"peak": peak_kb * 1024, "seconds": seconds}))
"""


def run_child(method: str, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, method, path], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{method} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_checkpoint(args) -> tuple[str, int]:
    import torch

    from llava_mini.loading.weights import save_llama
    from llava_mini.model.config import TextConfig
    from llava_mini.model.llama import LlamaForCausalLM
    config = TextConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64)
    path = os.path.join(args.out, f"llama_h{args.hidden}_l{args.layers}")
    if not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(0)
        with torch.no_grad():
            model = LlamaForCausalLM(config)
        save_llama(model, path, max_shard_size=args.shard_size)
        del model
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    return path, size


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=cli.positive_int, default=1024)
    parser.add_argument("--intermediate", type=cli.positive_int, default=2816)
    parser.add_argument("--layers", type=cli.positive_int, default=8)
    parser.add_argument("--vocab", type=cli.positive_int, default=32000)
    parser.add_argument("--shard-size", default="200MB")
    parser.add_argument("--out", default="/tmp/llava_mini_bench")
    args = parser.parse_args(argv)

    path, size = write_checkpoint(args)
    mb = 1e6
    print(f"checkpoint: {path}  ({size / mb:.0f} MB fp32, {len(os.listdir(path)) - 1} files)")
    baseline = run_child("none", path)["peak"]
    print(f"baseline (python + torch + llava_mini imported): {baseline / mb:.0f} MB")
    print(f"{'method':<12}{'peak RSS MB':>13}{'load cost MB':>14}{'cost / model size':>20}{'seconds':>10}")
    for method, label in (("naive", "naive"), ("ours", "ours"), ("ours_bf16", "ours bf16")):
        result = run_child(method, path)
        cost = result["peak"] - baseline
        print(f"{label:<12}{result['peak'] / mb:>13.0f}{cost / mb:>14.0f}{cost / size:>20.2f}{result['seconds']:>10.1f}")
    print("(bf16 holds half the bytes: its ideal ratio is 0.5)")


if __name__ == "__main__":
    cli.run(main)
