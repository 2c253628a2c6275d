"""A folder's sha256 manifest: the check that shipped weights are the ones their model cards describe.

    write_manifest("weights/tiny")     # writes weights/tiny/SHA256SUMS, the `sha256sum` format
    verify_manifest("weights/tiny")    # raises ManifestError naming the first file that is missing or differs

`sha256sum -c SHA256SUMS` in the folder checks the same thing from a shell. A changed or corrupt base is an error,
never a reason to retrain silently.
"""
from __future__ import annotations

import hashlib
import os

MANIFEST = "SHA256SUMS"
CHUNK = 1 << 20


class ManifestError(ValueError):
    pass


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: str) -> list[str]:
    """Every file under `folder` but the manifest, as sorted relative paths with forward slashes."""
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, files in os.walk(folder) for f in files if f != MANIFEST)


def write_manifest(folder: str) -> str:
    path = os.path.join(folder, MANIFEST)
    lines = [f"{sha256_file(os.path.join(folder, rel))}  {rel}\n" for rel in folder_files(folder)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)
    return path


def read_manifest(folder: str) -> dict[str, str]:
    """{relative path: sha256} from folder/SHA256SUMS."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        raise ManifestError(f"{path} is missing: cannot check the files of {folder}")
    entries = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            digest, sep, rel = line.rstrip("\n").partition("  ")
            if not sep or len(digest) != 64:
                raise ManifestError(f"{path}, line {n}: not '<sha256>  <file>': {line.strip()[:80]!r}")
            entries[rel] = digest
    return entries


def verify_manifest(folder: str, files: list[str] | None = None) -> None:
    """Check `files` (default: every file the manifest lists) against folder/SHA256SUMS. Raises ManifestError
    naming the file that is missing, unlisted or whose sha256 differs."""
    entries = read_manifest(folder)
    for rel in files if files is not None else sorted(entries):
        path = os.path.join(folder, rel)
        if rel not in entries:
            raise ManifestError(f"{path} is not in {os.path.join(folder, MANIFEST)}")
        if not os.path.exists(path):
            raise ManifestError(f"{path} is missing (listed in {os.path.join(folder, MANIFEST)})")
        digest = sha256_file(path)
        if digest != entries[rel]:
            raise ManifestError(f"{path}: sha256 mismatch, the file was changed or is corrupt (expected "
                                f"{entries[rel][:16]}..., got {digest[:16]}...). Restore it (git checkout -- {path}) "
                                f"or remake the bases (python train.py --make-bases)")
