"""What every command line shares: a bad input is one line `error: ...` and a non-zero exit, never a traceback, and
numeric flags refuse values outside their range before anything runs.

    from llava_mini import cli

    def main(argv=None):
        p = cli.ArgumentParser(description="...")
        p.add_argument("--top-p", type=cli.probability, default=1.0)
        args = p.parse_args(argv)
        ...

    if __name__ == "__main__":
        cli.run(main)

Every cli.ArgumentParser accepts `--debug`: then an error shows its full traceback instead of the one line.
Exit codes: 2 for a bad flag (argparse's convention), 1 for a bad file or a failed run, 130 for Ctrl-C.
"""
from __future__ import annotations

import argparse
import math
import sys

DEBUG_FLAG = "--debug"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the flag and what is wrong with it, no usage dump) and the --debug flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="on an error, show the full traceback")

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. Our own errors (ValueError, OSError, RuntimeError and their kin) name the
    file, key, sample or flag already; anything else is a bug, and says so."""
    if isinstance(error, OSError) and error.filename and error.strerror:     # open() of a missing file, a folder, ...
        text = f"{error.filename}: {error.strerror}"
    elif isinstance(error, (ValueError, OSError, RuntimeError)):
        text = str(error) or type(error).__name__
    else:
        text = (f"{type(error).__name__}: {error} (an internal error, not your input: rerun with {DEBUG_FLAG} for "
                f"the traceback and please report it)")
    return " ".join(text.split())


def run(main, argv: list[str] | None = None) -> None:
    """Call `main(argv)` (argv defaults to the command line) and turn any error into one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:              # SystemExit (argparse, sys.exit("error: ...")) passes through as it is
        if DEBUG_FLAG in argv:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------------
# argparse types: `type=cli.positive_int` turns "--epochs 0" into "error: argument --epochs: must be > 0, got 0"

def _number(text: str, kind, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}")
    above = value > low if low_open else value >= low
    if not (above and value <= high and math.isfinite(value)):        # NaN fails every comparison
        bounds = (f"in ({low:g}, {high:g}]" if low_open else f"in [{low:g}, {high:g}]") if high < math.inf else \
            (f"> {low:g}" if low_open else f">= {low:g}")
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1)


def non_negative_int(text: str) -> int:
    return _number(text, int, 0)


def positive_float(text: str) -> float:
    return _number(text, float, 0, low_open=True)


def non_negative_float(text: str) -> float:
    return _number(text, float, 0)


def probability(text: str) -> float:
    """A probability mass such as top-p: in (0, 1]."""
    return _number(text, float, 0, 1, low_open=True)


def fraction(text: str) -> float:
    """A share such as the warmup ratio: in [0, 1]."""
    return _number(text, float, 0, 1)


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The folders a model folder may need besides itself, as every command that loads one names them
    (loading/model_folder.py's load_checkpoint takes both)."""
    p.add_argument("--vision-tower", help="CLIP folder, for an original-LLaVA-layout checkpoint (it stores none)")
    p.add_argument("--model-base", help="for a LoRA adapter folder: its base checkpoint, when not the one "
                   "adapter_config.json names")
