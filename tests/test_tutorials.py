"""Every ```python block of every tutorial runs, in order, and must not fail.

    pytest tests/test_tutorials.py                      # all lessons
    pytest tests/test_tutorials.py -k 03                # one lesson

The blocks of one tutorial share one fresh namespace (like cells of a notebook) and run in a fresh temporary
working directory, so a lesson may write files (data/, checkpoints/) without touching the repository. They run in
this process (importing torch once is what makes the whole set fast); the global state a lesson may change
(working directory, grad mode, default dtype, threads, sys.argv) is restored afterwards.

A block fenced as ```python skip-test is shown to readers but not run (it needs a download); any other fence that
looks like Python (```py, ```python3, ```python skip) is an error, so no code can silently escape the tests.
"""
from __future__ import annotations

import os
import re
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
LESSONS = sorted(p for p in TUTORIALS.glob("[0-9][0-9]_*.md"))
RUN, SKIP = "python", "python skip-test"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, code, line number) of every fenced block, in order."""
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def runnable_blocks(path: Path) -> list[tuple[int, str, int]]:
    """(block number counted from 1 over all python blocks, code, line) of the blocks the test runs."""
    out, n = [], 0
    for info, code, line in code_blocks(path.read_text(encoding="utf-8")):
        if info.split(" ")[0] in ("python", "py", "python3"):
            n += 1
            if info == RUN:
                out.append((n, code, line))
    return out


class RestoredState:
    """Put back what a lesson may change globally."""

    def __enter__(self):
        self.cwd, self.argv, self.path = os.getcwd(), list(sys.argv), list(sys.path)
        self.grad, self.dtype, self.threads = torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads()
        self.rng = torch.get_rng_state()
        return self

    def __exit__(self, *exc):
        os.chdir(self.cwd)
        sys.argv[:], sys.path[:] = self.argv, self.path
        torch.set_grad_enabled(self.grad)
        torch.set_default_dtype(self.dtype)
        torch.set_num_threads(self.threads)
        torch.set_rng_state(self.rng)
        return False


def run_lesson(path: Path, workdir: Path) -> None:
    namespace = {"__name__": "__tutorial__"}
    with RestoredState():
        os.chdir(workdir)
        torch.set_num_threads(1)               # toy-sized tensors: threads only add overhead (and contend on CI)
        sys.path.insert(0, str(REPO))          # `import train`, `from weights import make_tiny` as from the repo root
        for number, code, line in runnable_blocks(path):
            start = time.time()
            try:
                exec(compile(code, f"{path.name} [block {number}, line {line}]", "exec"), namespace)
            except Exception:
                pytest.fail(f"{path.name}: python block {number} (line {line}) failed:\n{traceback.format_exc()}",
                            pytrace=False)
            print(f"{path.name} block {number}: {time.time() - start:.2f} s")


def test_lessons_exist_and_are_indexed():
    assert len(LESSONS) >= 8, f"expected at least 8 lessons in {TUTORIALS}, found {[p.name for p in LESSONS]}"
    index = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for lesson in LESSONS:
        assert lesson.name in index, f"tutorials/README.md does not link {lesson.name}"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_fences_are_known(path):
    """Only ```python (run) and ```python skip-test (shown, not run) for Python; a skipped block says why."""
    text = path.read_text(encoding="utf-8")
    for info, code, line in code_blocks(text):
        if info.split(" ")[0] in ("python", "py", "python3"):
            assert info in (RUN, SKIP), f"{path.name} line {line}: unknown fence ```{info} (use ```python or ```{SKIP})"
        if info == SKIP:
            before = text[:text.find(code)].rsplit("```", 1)[-1]       # the prose between this block and the last
            assert "skip" in before.lower() or "not run" in before.lower(), \
                f"{path.name} line {line}: a skip-test block needs a sentence before it saying why it is not run"
    assert runnable_blocks(path), f"{path.name} has no runnable python block"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, tmp_path):
    torch.manual_seed(0)
    run_lesson(path, tmp_path)


def test_a_failing_block_names_its_lesson_and_number(tmp_path):
    lesson = tmp_path / "99_broken.md"
    lesson.write_text("Fine:\n\n```python\nx = 1\n```\n\nBroken:\n\n```python\nassert x == 2, 'x is not 2'\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)99_broken.md: python block 2 \(line 9\).*x is not 2"):
        run_lesson(lesson, tmp_path)


def test_every_image_a_lesson_embeds_exists():
    for lesson in LESSONS + [TUTORIALS / "README.md"]:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", lesson.read_text(encoding="utf-8")):
            assert (lesson.parent / target).exists(), f"{lesson.name} embeds a missing image: {target}"

