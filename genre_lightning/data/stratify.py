"""Seeded train/val/test splits keeping identical images together, and iterative stratification for multi-label data.

Every genre is split by the configured fractions (largest-remainder rounding, so each
split's per-genre count is within 1 of the exact fraction). Items that share a group key
(the content hash) always land in the same split, so a poster filed under two genres can
never sit in train and in test at once.

``iterative_stratified_split`` handles items with several genres each (Sechidis, Tsoumakas &
Vlahavas 2011, "On the stratification of multi-label data"), again keeping groups together.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genre_lightning.utils.errors import ConfigError

SPLITS = ("train", "val", "test")
# A cross-validation's fixed test part, kept out of every fold (data.cv_test_fraction; data/folds.py).
HOLDOUT = "holdout"
# Every split name an annotations.csv may hold.
SPLIT_NAMES = (*SPLITS, HOLDOUT)


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


def iterative_stratified_split(
    label_sets: Sequence[Sequence[str]],
    groups: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
) -> list[str]:
    """Return the split name of each multi-label item, by iterative stratification over groups
    (:func:`iterative_stratified_parts` with the train, val and test fractions)."""
    fractions = check_fractions(fractions)
    # In SPLITS order, whatever the config's order: ties are drawn among the splits in that order.
    return iterative_stratified_parts(label_sets, groups, {s: fractions[s] for s in SPLITS}, seed)


def iterative_stratified_parts(
    label_sets: Sequence[Sequence[str]],
    groups: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
) -> list[str]:
    """Return the part (a key of ``fractions``: splits, or folds) of each multi-label item.

    Each group is one unit whose label counts sum its items' labels. The rarest label (fewest
    unassigned units) is handled first: its units go, one by one, to the part that still wants
    most of that label, then most items overall, then a seeded draw. Units without labels go
    where most items are still wanted. Deterministic for a given input and seed.
    """
    if len(label_sets) != len(groups):
        raise ValueError(f"{len(label_sets)} label sets but {len(groups)} group keys")
    parts = list(fractions)
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(groups):
        members[key].append(index)
    keys = sorted(members)  # a stable order first, so the shuffle depends on the seed alone
    rng.shuffle(keys)

    # set(): a genre listed twice on one item still counts once for that item.
    unit_labels = {k: Counter(label for i in members[k] for label in set(label_sets[i])) for k in keys}
    item_counts = Counter(label for labels in label_sets for label in set(labels))
    want_total = {s: fractions[s] * len(label_sets) for s in parts}
    want = {label: {s: fractions[s] * n for s in parts} for label, n in item_counts.items()}
    # Each label's unassigned units, kept in the shuffled order.
    open_units = {label: [k for k in keys if label in unit_labels[k]] for label in sorted(item_counts)}
    chosen: dict[str, str] = {}

    while open_units:
        # Rarest label first: its few units have the least freedom, so they pick before
        # common labels use up the room (ties by name, as open_units is sorted).
        label = min(open_units, key=lambda name: len(open_units[name]))
        for key in open_units.pop(label):
            part = _most_wanted(rng, parts, want[label], want_total)
            chosen[key] = part
            # A unit spends its part's wish for every label it carries, not just this one.
            want_total[part] -= len(members[key])
            for other, n in unit_labels[key].items():
                want[other][part] -= n
        for name in list(open_units):
            open_units[name] = [k for k in open_units[name] if k not in chosen]
            if not open_units[name]:
                del open_units[name]

    for key in keys:
        if key not in chosen:  # no labels at all: only the part sizes matter
            chosen[key] = _most_wanted(rng, parts, want_total)
            want_total[chosen[key]] -= len(members[key])
    return [chosen[key] for key in groups]


def _most_wanted(rng: np.random.Generator, parts: Sequence[str], *wants: Mapping[str, float]) -> str:
    """The part with the largest wish in ``wants[0]``, ties by the next wish, then by ``rng``."""
    candidates = list(parts)
    for wish in wants:
        top = max(wish[s] for s in candidates)
        # A tolerance, so float rounding in the running subtractions does not break real ties.
        candidates = [s for s in candidates if wish[s] >= top - 1e-9]
    return candidates[0] if len(candidates) == 1 else str(rng.choice(candidates))


@dataclass(frozen=True)
class SplitItems:
    """The items a split or a fold assignment places: each one's genre (``labels``), genres
    (``label_sets``) and duplicate group; ``multilabel`` stratifies by the genre sets."""

    labels: Sequence[str]
    label_sets: Sequence[Sequence[str]]
    groups: Sequence[str]
    multilabel: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> SplitItems:
        """The items at ``indices``, in that order."""
        return SplitItems(
            [self.labels[i] for i in indices],
            [self.label_sets[i] for i in indices],
            [self.groups[i] for i in indices],
            self.multilabel,
        )

    def split(self, fractions: Mapping[str, float], seed: int) -> list[str]:
        """Each item's split, stratified by genre (or genre set) with groups kept together."""
        if self.multilabel:
            return iterative_stratified_split(self.label_sets, self.groups, fractions, seed)
        return stratified_group_split(self.labels, self.groups, fractions, seed)
