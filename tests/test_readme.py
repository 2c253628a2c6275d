"""The README is for a newcomer: short, every image it embeds exists, every file and module its commands name exists,
and the two commands are the ones CI runs."""
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short():
    assert len(README.splitlines()) <= 150


def test_every_embedded_image_and_linked_file_exists():
    targets = re.findall(r"!?\[[^\]]*\]\(([^)#]+)\)", README)
    local = [t for t in targets if not t.startswith("http")]
    assert any(t.endswith(".png") for t in local)
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_command_names_a_file_or_module_that_exists():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S) + re.findall(r"`([^`]*python[^`]*)`", README)
    scripts = {s for b in blocks for s in re.findall(r"python (?:-m \S+ )?([\w/]+\.py)", b)}
    modules = {m for b in blocks for m in re.findall(r"python -m ([\w.]+)", b)} - {"pytest"}
    assert "train.py" in scripts and "llava_mini.eval.attention_map" in modules
    assert all((REPO / s).exists() for s in scripts), scripts
    assert all(importlib.util.find_spec(m) is not None for m in modules), modules


def test_ci_runs_the_readme_test_command():
    command = "pip install -r requirements-dev.txt && python -m pytest -q"
    assert command in README and command in (REPO / ".ci" / "run").read_text(encoding="utf-8")
