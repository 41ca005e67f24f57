"""Exit qualifications in words, for the tables that count exits by qualification (the
bit layouts are Intel SDM Vol. 3C §28.2.1; spec hv §1.5, §2.4)."""

from __future__ import annotations

from fastpath.hv.vmx import EPT_GLA_TRANSLATED, EPT_GLA_VALID

_RWX = "rwx"


def _letters(bits: int) -> str:
    return "".join(c for k, c in enumerate(_RWX) if bits >> k & 1) or "-"


def describe_ept_violation(qualification: int) -> str:
    """Table 28-7: the access (bits 2:0), what the EPT entries allowed (5:3), and whether a
    guest linear address was involved (7) and the access was its final translation (8)
    rather than a read of a guest paging-structure entry."""
    words = f"{_letters(qualification & 7)} access, EPT allows {_letters(qualification >> 3 & 7)}"
    if not qualification & EPT_GLA_VALID:
        return words + ", no linear address"
    if qualification & EPT_GLA_TRANSLATED:
        return words + ", final translation of a linear address"
    return words + ", a guest paging-structure read"


def describe_io(qualification: int) -> str:
    """Table 28-5: direction, size, string/REP and the port."""
    size = (qualification & 7) + 1
    direction = "in" if qualification >> 3 & 1 else "out"
    string = "s" if qualification >> 4 & 1 else ""
    rep = "rep " if qualification >> 5 & 1 else ""
    port = qualification >> 16
    return f"{rep}{direction}{string} {size} byte{'s' * (size > 1)} at port {port:#x}"
