"""Deterministic, stratified held-out splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from app.datasets.common import SPLITS


def stratified_test(labels: Sequence[int], fraction: float, seed: int, keep: int = 1) -> set[int]:
    """Pick the positions of a stratified test split: about `fraction` of every class.

    A class with more than `keep` samples always gives one to test and keeps at least
    `keep` for training (a class with `keep` or fewer gives none).
    Each class draws from its own generator, so adding a class does not reshuffle the
    others; callers pass samples in a canonical order (not archive order) for the same
    reason.
    """
    if fraction <= 0:
        return set()
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        by_class[label].append(position)
    chosen: set[int] = set()
    for label, positions in sorted(by_class.items()):
        n = len(positions)
        if n <= keep:
            continue
        n_test = min(max(int(n * fraction + 0.5), 1), n - keep)
        rng = random.Random(f"{seed}:{label}")
        chosen.update(rng.sample(positions, n_test))
    return chosen


def split_summary(
    splits: Sequence[str], labels: Sequence[int], classes: Sequence[str]
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Count samples per split, and per split and class (every split and class listed)."""
    totals = dict.fromkeys(SPLITS, 0)
    per_class = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for split, label in zip(splits, labels, strict=True):
        totals[split] += 1
        per_class[split][classes[label]] += 1
    return totals, per_class
