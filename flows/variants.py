"""A/B variants: each account gets the same variant of an experiment every time, in shares set by the weights.

The choice hashes (experiment, account) with SHA-256, never the built-in `hash()`, which is salted per process,
so it is the same in every process, on every machine and in every Python version.
"""

from __future__ import annotations

import hashlib
from itertools import accumulate

from flows.playbooks import Variant

_BITS = 53  # a float's mantissa: every value k / 2**53 is exact, so the point is strictly below 1


def assignment_point(account_id: str, experiment: str) -> float:
    """The account's uniform point in [0, 1) for the experiment."""
    digest = hashlib.sha256(f"{experiment}\x00{account_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _BITS)) / (1 << _BITS)


def choose_variant(variants: list[Variant], account_id: str, experiment: str) -> Variant | None:
    """The account's variant, by cumulative weight in list order; None when there are no variants."""
    if not variants:
        return None
    cumulative = list(accumulate(v.weight for v in variants))
    target = assignment_point(account_id, experiment) * cumulative[-1]
    for variant, upper in zip(variants, cumulative, strict=True):
        if target < upper:
            return variant
    return variants[-1]  # only reached if rounding put the target on the total
