"""Paths named inside a file we read stay inside the folder they are relative to.

A training JSON's `"image": "../../../etc/passwd"` or an absolute path, or a sharded checkpoint index naming
`../../outside/x.safetensors`, would otherwise make us read files outside the folder the user pointed us at.
"""
from __future__ import annotations

import os


def path_inside(root: str, name: str, what: str) -> str:
    """os.path.join(root, name), or ValueError naming `what` when the result (links resolved) leaves `root`."""
    path = os.path.join(root, name)
    real_root = os.path.realpath(root)
    if os.path.isabs(name) or os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ValueError(f"{what}: {name!r} points outside {root}; paths must stay inside it")
    return path
