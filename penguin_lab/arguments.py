"""The command line's argument types, shared by every command."""

from __future__ import annotations

import argparse
import math
import sys


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def seed_int(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**32:  # what every random generator involved accepts
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to {2**32 - 1}")
    return value


def progress_line(message: str) -> None:
    print(message, file=sys.stderr)  # stdout is for the summary
