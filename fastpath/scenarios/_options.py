"""Argument types the scenarios' options share: each turns a bad value into argparse's error
(exit status 2 with the option named), not a traceback from deep in the model."""

from __future__ import annotations

import argparse

PAGE_SIZES = {"4k": 1 << 12, "2m": 1 << 21, "1g": 1 << 30}


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def positive_int_up_to(maximum: int):
    """The type of an option that takes 1 to `maximum`."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected 1 to {maximum}, not {text!r}")
        return value
    return parse


def whole_number(text: str) -> int:
    """An integer of at least 0 (decimal, or 0x hexadecimal)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return value


def power_of_two(text: str) -> int:
    """A positive power of two (cache and TLB sizes)."""
    value = positive_int(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two, not {text!r}")
    return value


def fraction(text: str) -> float:
    """A fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, not {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), not {text!r}")
    return value


def parse_page_size(text: str) -> int:
    """A page size by name: 4k, 2m or 1g."""
    try:
        return PAGE_SIZES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(PAGE_SIZES)}, not {text!r}") from None


def page_size_name(size: int) -> str:
    """'4K', '2M' or '1G' for a page size in bytes."""
    return {v: k.upper() for k, v in PAGE_SIZES.items()}[size]
