"""A/B variants: the same account gets the same variant in every process, experiments are independent, and over
many accounts the shares follow the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import chisquare

from flows.playbooks import Variant
from flows.variants import assignment_point, choose_variant

REPO = Path(__file__).resolve().parent.parent
ACCOUNTS = [f"acct-{i:05d}" for i in range(10_000)]


def variants(*weights: float) -> list[Variant]:
    return [Variant(name=f"v{i}", weight=w) for i, w in enumerate(weights)]


def chosen(options: list[Variant], account_id: str, experiment: str) -> str:
    variant = choose_variant(options, account_id, experiment)
    assert variant is not None
    return variant.name


def test_no_variants_is_none() -> None:
    assert choose_variant([], "acct-1", "subject-line") is None


def test_the_same_inputs_give_the_same_variant() -> None:
    options = variants(1, 1, 2)
    first = [chosen(options, a, "subject-line") for a in ACCOUNTS[:500]]
    again = [chosen(list(options), a, "subject-line") for a in ACCOUNTS[:500]]
    assert first == again


def test_assignment_point_is_in_the_unit_interval() -> None:
    points = [assignment_point(a, "subject-line") for a in ACCOUNTS]
    assert all(0 <= p < 1 for p in points)


def test_pinned_values_hold_across_versions() -> None:
    # sha256(b"subject-line\x00acct-00000") begins 9fed43fbed19a190; the point is its first 53 bits over 2**53.
    # Any change to the hashing would move accounts between variants mid-experiment.
    assert assignment_point("acct-00000", "subject-line") * 2**53 == 0x9FED43FBED19A190 >> 11
    options = variants(1, 1, 2)
    assert [chosen(options, a, "subject-line") for a in ACCOUNTS[:8]] == PINNED


PINNED = ["v2", "v2", "v2", "v1", "v2", "v1", "v2", "v2"]


def test_stable_in_another_process_with_another_hash_seed() -> None:
    options = variants(1, 1, 2)
    here = {a: chosen(options, a, "subject-line") for a in ACCOUNTS[:300]}
    script = (
        "import json, sys\n"
        "from flows.playbooks import Variant\n"
        "from flows.variants import choose_variant\n"
        "options = [Variant(name=f'v{i}', weight=w) for i, w in enumerate((1, 1, 2))]\n"
        "accounts = json.load(sys.stdin)\n"
        "print(json.dumps({a: choose_variant(options, a, 'subject-line').name for a in accounts}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(list(here)),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "4242"},  # str hashes differ from this process's (random or not)
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == here


def test_experiments_are_independent() -> None:
    options = variants(1, 1)
    a = [chosen(options, account, "subject-line") for account in ACCOUNTS[:2000]]
    b = [chosen(options, account, "send-hour") for account in ACCOUNTS[:2000]]
    differing = sum(x != y for x, y in zip(a, b, strict=True)) / len(a)
    # Independent fair coins disagree half the time.
    assert 0.45 < differing < 0.55


def test_the_separator_keeps_experiment_and_account_apart() -> None:
    assert assignment_point("b-c", "a") != assignment_point("c", "a-b")
    assert assignment_point("bc", "a") != assignment_point("c", "ab")


@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (1, 1, 2), (0.2, 0.3, 0.5), (5, 1, 1, 1)])
def test_shares_follow_the_weights(weights: tuple[float, ...]) -> None:
    options = variants(*weights)
    counts = Counter(chosen(options, a, "subject-line") for a in ACCOUNTS)
    observed = [counts[v.name] for v in options]
    expected = [len(ACCOUNTS) * w / sum(weights) for w in weights]
    for seen, wanted in zip(observed, expected, strict=True):
        assert abs(seen - wanted) / len(ACCOUNTS) < 0.02, (observed, expected)
    assert chisquare(observed, expected).pvalue > 0.001, (observed, expected)


def test_shares_do_not_depend_on_list_order() -> None:
    forward = variants(1, 3)
    backward = list(reversed(forward))
    counts = Counter(chosen(backward, a, "subject-line") for a in ACCOUNTS)
    assert abs(counts["v1"] / len(ACCOUNTS) - 0.75) < 0.02
