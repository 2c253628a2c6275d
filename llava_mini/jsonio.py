"""JSON files, read with errors that name the file and written atomically (a crash never leaves half a file).

    from llava_mini.jsonio import read_json, write_json
"""
from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str) -> dict:
    """Read a JSON file; a bad file is an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def not_utf8(path: str, error: UnicodeDecodeError) -> ValueError:
    """The error for a text file that is not UTF-8, naming the file and the first bad byte."""
    return ValueError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})")


def write_json(obj: Any, path: str) -> None:
    """Write JSON atomically: a crash never leaves a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        f.write("\n")
    os.replace(tmp, path)
