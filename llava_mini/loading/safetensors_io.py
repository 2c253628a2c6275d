"""The machinery under llava_mini.loading.weights: read safetensors lazily, build a model on the meta device and adopt the
checkpoint's tensors as its parameters, write (sharded) safetensors folders atomically.

llava_mini/loading/weights.py knows the key layouts and the models; this file knows only tensors, files and nn.Modules.

    ckpt = Checkpoint("checkpoints/vicuna-7b-v1.5")        # opens the shards' headers, reads no tensor data
    with parameters_on_meta():
        model = LlamaForCausalLM(config)                   # no memory, no random init
    load_into(model, {key: (ckpt, key) for key in ckpt.keys()}, torch.bfloat16, "cuda", "vicuna")
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from llava_mini.jsonio import read_json, write_json
from llava_mini.safepath import path_inside

SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_FILE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# Buffers that some checkpoints store and that the model computes itself: skipped when present, fine when absent.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "position_ids")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the file and the keys."""


def is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)


def as_dtype(dtype):
    """torch.bfloat16, "bfloat16" or None (keep what the checkpoint stores)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return getattr(torch, dtype)


def short_list(keys, n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------------------------
# 1. Reading tensors lazily, one key at a time.

class Checkpoint:
    """The tensors of one checkpoint: a file, or a folder with one file or with shards listed in an index.

    Safetensors files are opened lazily: opening parses only the header, `shape(key)` reads nothing, and
    `read(key)` reads that one tensor. A truncated or corrupt file is a CheckpointError naming it."""

    def __init__(self, path: str):
        self.path = path
        self.file_of: dict[str, str] = {}              # key -> the file that holds it
        self._handles = {}                             # file -> open handle
        files, index_path, weight_map = self._find_files(path)
        for file in files:                             # open every file now: a bad one fails before any work
            self._handles[file] = handle = self._open(file)
            stored = set(handle.keys())
            if weight_map is None:
                self.file_of.update((key, file) for key in stored)
                continue
            named_here = {k for k, f in weight_map.items() if os.path.join(path, f) == file}
            if named_here - stored:
                raise CheckpointError(f"{file}: {index_path} places keys in this file that it does not hold: "
                                      f"{short_list(named_here - stored)}")
            self.file_of.update((key, file) for key in named_here)

    @staticmethod
    def _find_files(path: str):
        """-> (files, index path or None, weight_map or None)."""
        if os.path.isfile(path):
            return [path], None, None
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        for index_name, single_name in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (PICKLE_INDEX, PICKLE_FILE)):
            index_path = os.path.join(path, index_name)
            if os.path.exists(index_path):
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise CheckpointError(f"{index_path}: no 'weight_map' (key -> shard file)")
                for shard in sorted(set(weight_map.values())):
                    try:
                        path_inside(path, str(shard), f"{index_path}: shard file")
                    except ValueError as e:
                        raise CheckpointError(str(e)) from None
                    if not os.path.isfile(os.path.join(path, shard)):
                        raise CheckpointError(f"{index_path}: shard file {shard} is missing")
                return [os.path.join(path, shard) for shard in sorted(set(weight_map.values()))], index_path, weight_map
            if os.path.isfile(os.path.join(path, single_name)):
                return [os.path.join(path, single_name)], None, None
        raise FileNotFoundError(f"{path}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {PICKLE_FILE} or {PICKLE_INDEX}")

    @staticmethod
    def _open(file: str):
        """A safe_open handle, or for a pickled .bin a memory-mapped state dict (torch.load(mmap=True) reads
        tensor data only when it is touched)."""
        try:
            if file.endswith(".safetensors"):
                return safe_open(file, framework="pt", device="cpu")
            return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read this checkpoint file, it may be truncated or corrupt "
                                  f"({type(e).__name__}: {e})") from None

    def keys(self) -> list[str]:
        return list(self.file_of)

    def shape(self, key: str) -> tuple:
        handle = self._handle(self.file_of[key])
        if isinstance(handle, dict):
            return tuple(handle[key].shape)
        return tuple(handle.get_slice(key).get_shape())

    def read(self, key: str, dtype: torch.dtype | None = None, device="cpu") -> torch.Tensor:
        """One tensor, cast to `dtype` (floating-point tensors only), on `device`, in memory of its own.

        safe_open hands out copy-on-write views of the memory-mapped file; we copy once (the cast or the move is
        that copy), so a parameter never depends on the file, which may be overwritten or deleted later."""
        file = self.file_of[key]
        try:
            handle = self._handle(file)
            tensor = handle[key] if isinstance(handle, dict) else handle.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read tensor {key} ({type(e).__name__}: {e})") from None
        dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        tensor = tensor.to(device=device, dtype=dtype, copy=True)
        # min and max are NaN or infinite if any value is, and need no temporary the size of the tensor
        if tensor.is_floating_point() and tensor.numel() and \
                not torch.isfinite(torch.stack(torch.aminmax(tensor))).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{file}: tensor {key} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                                  f"the checkpoint is broken (saved from a diverged run?)")
        return tensor

    def read_all(self, keys, dtype=None, device="cpu"):
        """Yield (key, tensor), closing the file after each tensor. Pages of a memory-mapped file count in the
        process's memory for as long as the file stays mapped; reopening costs only a header parse, and this way
        at most one tensor's pages are mapped besides the tensors already read."""
        for key in sorted(keys, key=lambda k: (self.file_of[k], k)):
            yield key, self.read(key, dtype, device)
            self._handles.pop(self.file_of[key], None)

    def _handle(self, file: str):
        if file not in self._handles:
            self._handles[file] = self._open(file)
        return self._handles[file]


# ---------------------------------------------------------------------------------------------------------------
# 2. Building a model without memory, then adopting the checkpoint's tensors as its parameters.

@contextlib.contextmanager
def parameters_on_meta():
    """Inside this block, every nn.Parameter a module registers is moved to the meta device (shape only, no data,
    and initialisers on it do nothing). Buffers stay real: the model computes them (rotary tables, position ids)
    and checkpoints usually do not store them."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def ties_embeddings(model) -> bool:
    text_config = getattr(model.config, "text_config", model.config)
    return bool(getattr(text_config, "tie_word_embeddings", False))


def load_into(model: nn.Module, sources: dict, dtype, device, what: str) -> nn.Module:
    """Fill a meta-device `model` from `sources`: model key -> (Checkpoint, checkpoint key).

    Every key is checked before any tensor is read. `what` names the checkpoint(s) in error messages."""
    expected = model.state_dict()                                       # model key -> meta tensor (shape only)
    optional = {k for k in expected if is_ignored(k)}
    if ties_embeddings(model):    # a tied checkpoint stores the embedding once; LlamaForCausalLM fills lm_head from it and re-ties
        optional |= {k for k in expected if k.endswith("lm_head.weight")}
    missing = set(expected) - set(sources) - optional
    unexpected = set(sources) - set(expected)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} key(s) the model needs: {short_list(missing)}")
        if unexpected:
            shown = [f"{sources[k][1]} (in {sources[k][0].file_of[sources[k][1]]})" for k in unexpected]
            problems.append(f"{len(unexpected)} unexpected key(s) the model does not have: {short_list(shown)}")
        raise CheckpointError(f"{what}: " + "; ".join(problems) + ". The model is built from config.json (a field "
                              "it leaves out takes its default, e.g. 32 layers): config and weights disagree?")
    for key, (ckpt, ckpt_key) in sorted(sources.items()):
        found, wanted = ckpt.shape(ckpt_key), tuple(expected[key].shape)
        if found != wanted:
            raise CheckpointError(f"{ckpt.file_of[ckpt_key]}: {ckpt_key} has shape {found}, but the model built from "
                                  f"the config expects {wanted} (config and weights disagree)")

    state = {}
    progress = tqdm(total=len(sources), desc=f"loading {os.path.basename(what)}", unit="tensor",
                    disable=len(sources) < 200, leave=False)
    for ckpt in {id(c): c for c, _ in sources.values()}.values():
        model_key_of = {k: key for key, (c, k) in sources.items() if c is ckpt}
        for ckpt_key, tensor in ckpt.read_all(list(model_key_of), dtype, device):
            state[model_key_of[ckpt_key]] = tensor
            progress.update()
    progress.close()
    result = model.load_state_dict(state, strict=False, assign=True)
    still_missing = set(result.missing_keys) - optional
    if still_missing:
        raise CheckpointError(f"{what}: missing {len(still_missing)} key(s): {short_list(still_missing)}")
    model.to(device)                                   # the buffers; parameters are already there
    left_on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{what}: parameters left without weights: {short_list(left_on_meta)}")
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# 3. Saving. A checkpoint folder is written whole under a temporary name and then renamed into place.

def parse_size(size) -> int:
    """5000000, "20KB", "500MB", "4GB" -> bytes (powers of 1000, as HF counts)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", str(size).upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: expected bytes (int) or a string like '500MB' or '4GB'")
    return int(float(match[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match[2]])


def write_safetensors(state: dict, out_dir: str, max_shard_size, single_name: str = SAFETENSORS_FILE) -> None:
    """`model.safetensors` (or `single_name`), or shards `model-0000i-of-0000n.safetensors` + index when over
    max_shard_size."""
    limit, shards, current, current_size = parse_size(max_shard_size), [], {}, 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = {}, 0
        current[key], current_size = tensor, current_size + size
    shards.append(current)
    names = [single_name] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in tqdm(list(zip(names, shards)), desc="writing shards", disable=len(shards) < 3, leave=False):
        save_file({k: t.detach().contiguous().cpu() for k, t in shard.items()}, os.path.join(out_dir, name),
                  metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        write_json({"metadata": {"total_size": total},
                    "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}},
                   os.path.join(out_dir, SAFETENSORS_INDEX))


def save_folder(state: dict, config: dict, out_dir: str, max_shard_size, extra_files: dict | None = None,
                weights_name: str = SAFETENSORS_FILE, config_name: str = "config.json") -> str:
    """Write weights, config.json and extra files (name -> dict for JSON, or a path to copy) into `out_dir` atomically:
    everything goes to a temporary sibling folder, which then replaces `out_dir`. A crash leaves either the old folder,
    or the new one (a crash between the two renames leaves the old one as `<out_dir>.old-<pid>`)."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp, old = f"{out_dir}.tmp-{os.getpid()}", f"{out_dir}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_safetensors(state, tmp, max_shard_size, weights_name)
        write_json(config, os.path.join(tmp, config_name))
        for name, content in (extra_files or {}).items():
            if isinstance(content, dict):
                write_json(content, os.path.join(tmp, name))
            else:
                shutil.copyfile(content, os.path.join(tmp, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir
