"""Stratified, seeded train/val/test split that keeps identical images together.

Every genre is split by the configured fractions (largest-remainder rounding, so each
split's per-genre count is within 1 of the exact fraction). Items that share a group key
(the content hash) always land in the same split, so a poster filed under two genres can
never sit in train and in test at once.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from genre_lightning.errors import ConfigError

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate ``{train, val, test}`` fractions: non-negative and summing to 1."""
    fractions = {k: float(v) for k, v in fractions.items()}
    if set(fractions) != set(SPLITS) or any(v < 0 for v in fractions.values()):
        raise ConfigError("data.fractions", fractions, "non-negative train, val and test fractions")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(
            "data.fractions", fractions, f"fractions that add up to 1 (they add up to {sum(fractions.values()):g})"
        )
    return fractions


def split_targets(count: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Integer counts per split that sum to ``count``, each within 1 of ``count * fraction``."""
    exact = {s: count * fractions[s] for s in SPLITS}
    targets = {s: math.floor(v) for s, v in exact.items()}
    by_remainder = sorted(SPLITS, key=lambda s: (-(exact[s] - targets[s]), SPLITS.index(s)))
    for s in by_remainder[: count - sum(targets.values())]:
        targets[s] += 1
    return targets


def stratified_group_split(
    labels: Sequence[str],
    groups: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
) -> list[str]:
    """Return the split name of each item.

    Multi-item groups are placed first, each into a split with room for its labels (drawn in
    proportion to that room); the single items of every genre then fill the remaining quotas exactly.
    """
    fractions = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    targets = {c: split_targets(n, fractions) for c, n in Counter(labels).items()}
    placed: dict[str, Counter] = {s: Counter() for s in SPLITS}
    assignment: list[str | None] = [None] * len(labels)

    members: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(groups):
        members[key].append(index)
    keys = sorted(members)  # a stable order first, so the shuffle depends on the seed alone
    rng.shuffle(keys)

    for key in (k for k in keys if len(members[k]) > 1):
        need = Counter(labels[i] for i in members[key])
        fit = {s: sum(_fit(n, targets[c][s] - placed[s][c]) for c, n in need.items()) for s in SPLITS}
        best = [s for s in SPLITS if fit[s] == max(fit.values())]
        # Among equally good splits, draw in proportion to the room left for these genres, so
        # duplicate groups spread ~70/15/15 like everything else instead of 1/3 each.
        room = np.array([sum(max(0, targets[c][s] - placed[s][c]) for c in need) for s in best], dtype=float)
        choice = str(rng.choice(best, p=room / room.sum() if room.sum() else None))
        placed[choice].update(need)
        for i in members[key]:
            assignment[i] = choice

    singles: dict[str, list[int]] = defaultdict(list)
    for key in keys:
        if len(members[key]) == 1:
            index = members[key][0]
            singles[labels[index]].append(index)
    for label, indices in singles.items():
        quota = _remaining_quota(targets[label], {s: placed[s][label] for s in SPLITS}, len(indices), fractions)
        start = 0
        for s in SPLITS:
            for i in indices[start : start + quota[s]]:
                assignment[i] = s
            start += quota[s]
    return [str(s) for s in assignment]


def _fit(need: int, room: int) -> int:
    """How well ``need`` items fit into ``room`` free places: items placed minus items overflowing."""
    return min(need, room) - max(0, need - room)


def _remaining_quota(target: dict[str, int], placed: dict[str, int], available: int, fractions) -> dict[str, int]:
    room = {s: max(0, target[s] - placed[s]) for s in SPLITS}
    if sum(room.values()) == available:
        return room
    # Groups overfilled a split: share what is left in proportion to the room (rare).
    total_room = sum(room.values()) or 1
    weights = {s: (room[s] / total_room if sum(room.values()) else fractions[s]) for s in SPLITS}
    return split_targets(available, weights)
