"""One error type for bad input, and one way every script reports it.

A script raises InputError with a message that says what is wrong and, where it can, how to fix it; its
main() is wrapped in `reports_errors`, which prints `<script>: error: <message>` as one line on stderr and
exits with status 2 (argparse's own status for bad arguments, so usage and data errors read alike).
"""

import argparse
import functools
import inspect
import math
import os
import sys
from pathlib import Path

BAD_INPUT = 2  # exit status for usage and data errors
NON_FINITE_EXIT = 3  # exit status of a training run stopped by a non-finite loss (train.py, run_glue.py)


class InputError(Exception):
    """Bad input from the user: arguments, data files, models that do not fit together."""


class NonFiniteLoss(RuntimeError):
    """A run's loss or weights stopped being finite (train.py: outside fp16 overflow steps, which the grad scaler
    skips). Every trainer exits with NON_FINITE_EXIT on it."""


def finite_float(text):
    """argparse's type for every float flag: NaN and infinity are refused where they are typed (float()
    accepts both, and a NaN weight or rate trains to nothing without a word)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def first_line(e):
    """The first line of an exception's message (libraries' messages run to several), or its class name."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def say(*args):
    """Print on the first process only (under torchrun every process runs run_glue.py)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


def fail(prog, message, status=BAD_INPUT):
    """Print `prog: error: message` on one line of stderr and exit with `status`."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def reports_errors(main):
    """Decorate a script's main(): an InputError becomes one line on stderr and exit status 2."""
    prog = Path(inspect.getfile(main)).name

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            fail(prog, e)

    return wrapper
