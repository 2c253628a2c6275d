"""Resumable training checkpoints: checkpoint-NNNNNN/ folders written atomically, and the RNG states a resume needs.

    save_checkpoint(out_dir, step, write_model, trainer_state)   # atomic: a killed save leaves the last one intact
    path = latest_checkpoint(out_dir)                            # newest complete checkpoint-NNNNNN folder
    state = load_trainer_state(path)                             # optimizer, scheduler, RNG states, step
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil

import numpy as np
import torch

from llava_mini.jsonio import read_json

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.pt"     # optimizer, scheduler, RNG states, data position



def rng_state() -> dict:
    """Every RNG a training step draws from, as tensors, numbers, strings, lists and tuples only, so that
    trainer_state.pt loads with torch.load(weights_only=True), which cannot run code (numpy's key array is a list)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str, step: int, write_model, trainer_state: dict, keep: int = 2) -> str:
    """Write {out_dir}/checkpoint-{step:06d}/ atomically and return its path.

    `write_model(folder)` writes the model files (model.safetensors, config.json, tokenizer.json, llava_mini.json);
    trainer_state.pt holds what a resume needs. Everything is written into a temporary folder first and renamed
    in one step, so a save killed half-way leaves only a stray temp folder and the previous checkpoint intact.
    Older checkpoints beyond `keep` are deleted after the new one is in place."""
    final = os.path.join(out_dir, f"checkpoint-{step:06d}")
    tmp = os.path.join(out_dir, f".tmp-checkpoint-{step:06d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_model(tmp)
    torch.save(trainer_state, os.path.join(tmp, TRAINER_STATE))
    if os.path.exists(final):           # the same step saved again (e.g. Ctrl-C right after a periodic save)
        _discard(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        _discard(old)
    clear_debris(out_dir)
    return final


def _discard(folder: str) -> None:
    """Delete a checkpoint folder so that a kill half-way never leaves a half-deleted one that looks complete:
    rename it out of the checkpoint names first (one atomic step), then delete it."""
    trash = os.path.join(os.path.dirname(folder), f".trash-{os.path.basename(folder)}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# What saves killed half-way leave in a run folder, named by the process that wrote them.
DEBRIS_RE = re.compile(r"^(\.tmp-checkpoint-\d+(?:-\d+\.(?:tmp|old))?|\.trash-checkpoint-\d+|final\.tmp|final\.old)-(\d+)$")


def clear_debris(out_dir: str) -> None:
    """Remove the temporary folders of saves whose process is gone (killed half-way); a live one's are its own."""
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = DEBRIS_RE.match(name)
        if m and not _alive(int(m.group(2))):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)                 # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:             # it exists, and belongs to someone else
        return True
    return True


def list_checkpoints(out_dir: str) -> list[str]:
    """Complete checkpoint folders in step order (temp folders of interrupted saves are not listed)."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := CHECKPOINT_RE.match(name))
             and os.path.exists(os.path.join(out_dir, name, TRAINER_STATE))]
    return [os.path.join(out_dir, name) for _, name in sorted(found)]


def latest_checkpoint(out_dir: str) -> str | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


RESUME_MUST_MATCH = ("stage", "recipe", "data", "seed")   # what an exact resume needs unchanged


def check_resume(checkpoint_dir: str, now: dict) -> None:
    """Refuse to resume with a recipe, data or seed other than the checkpoint's (`now`: the run's llava_mini.json
    metadata): the schedule, the data order and the step count would no longer be the ones the run started with."""
    saved = read_json(os.path.join(checkpoint_dir, "llava_mini.json"))
    for field in RESUME_MUST_MATCH:
        if field not in saved:
            continue
        changed = [k for k in now["recipe"] if saved["recipe"].get(k) != now["recipe"][k]] if field == "recipe" else []
        if changed:
            k = changed[0]
            raise ValueError(f"--resume from {checkpoint_dir}: the recipe's {k} was {saved['recipe'].get(k)!r}, the "
                             f"command line now gives {now['recipe'][k]!r}; an exact resume needs the same recipe "
                             f"(drop the override, or start a new --out)")
        if field != "recipe" and saved[field] != now[field]:
            raise ValueError(f"--resume from {checkpoint_dir}: {field} was {saved[field]!r}, the command line now "
                             f"gives {now[field]!r}; an exact resume needs the same {field} (or start a new --out)")


def load_trainer_state(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, TRAINER_STATE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAINER_STATE}, not a resumable checkpoint")
    try:
        # weights_only: tensors and plain containers only. A pickle that would build any other object (and so
        # could run code on load) is refused, whoever wrote the checkpoint.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refusing to load, it holds objects other than tensors, numbers, strings and "
                         f"containers (a trainer state never does; loading it could run code): "
                         f"{str(e).splitlines()[0][:200]}") from None
