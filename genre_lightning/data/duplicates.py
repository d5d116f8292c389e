"""Find duplicate posters (byte-identical or visually the same) and apply the duplicate policy.

Perceptual hash: a 128-bit difference hash (horizontal and vertical brightness gradients on
a 9x8 / 8x9 greyscale thumbnail). Measured on the 1,070 real posters with
``python bench/scan_throughput.py``: resized and re-encoded copies land 0-8 bits from their
original (641 of 642 within 6), while the closest two distinct posters are 10 bits apart.
``near_threshold=6`` sits in that gap.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from genre_lightning.utils.errors import ConfigError

HASH_BITS = 128
POLICIES = ("keep", "drop", "multi_genre")
DEFAULT_OPTIONS = {"policy": "keep", "near_threshold": 6}
TASKS = ("single", "multilabel")


FLAT_RANGE = 8  # a thumbnail whose brightness varies less than this has no shape to hash


def check_duplicate_options(options: Mapping[str, Any] | None, task: str = "single") -> dict[str, Any]:
    """``data.duplicates`` with its defaults filled in, checked before any scan (one line per bad value).

    Multi-label data (``task=multilabel``) always merges a duplicate group into one item carrying all
    its genres: that is what a copy filed under two genre folders means. ``keep`` (the default) is
    read as ``multi_genre`` there; ``drop`` would throw away exactly the multi-genre posters."""
    if task not in TASKS:
        raise ConfigError("data.task", task, f"one of {list(TASKS)}")
    merged = {**DEFAULT_OPTIONS, **(options or {})}
    if merged["policy"] not in POLICIES:
        raise ConfigError("data.duplicates.policy", merged["policy"], f"one of {list(POLICIES)}")
    if task == "multilabel":
        if merged["policy"] == "drop":
            raise ConfigError(
                "data.duplicates.policy", "drop", "keep or multi_genre with data.task=multilabel (both merge copies)"
            )
        merged["policy"] = "multi_genre"
    threshold = merged["near_threshold"]
    # bool is an int in Python; "near_threshold: true" is a typo, not a distance.
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= HASH_BITS:
        raise ConfigError(
            "data.duplicates.near_threshold",
            threshold,
            f"an integer number of bits from 0 (exact copies only) to {HASH_BITS}",
        )
    return merged


def perceptual_hash(image: Image.Image) -> str:
    """128-bit difference hash of an image, as 32 hex digits; "" for a flat image, whose
    gradients are noise (flat images match only by their bytes)."""
    grey = image.convert("L")
    wide = np.asarray(grey.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    tall = np.asarray(grey.resize((8, 9), Image.Resampling.BILINEAR), dtype=np.int16)
    if int(wide.max()) - int(wide.min()) < FLAT_RANGE:
        return ""
    bits = np.concatenate([(wide[:, 1:] > wide[:, :-1]).ravel(), (tall[1:, :] > tall[:-1, :]).ravel()])
    return np.packbits(bits).tobytes().hex()


def hash_words(hashes: Sequence[str]) -> np.ndarray:
    """128-bit hex hashes as an ``(n, 2)`` array of unsigned 64-bit words (big-endian halves)."""
    raw = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=">u8").reshape(len(hashes), HASH_BITS // 64)
    return raw.astype(np.uint64)


def band_keys(words: np.ndarray, bands: int) -> list[np.ndarray]:
    """Split the 128 bits (bit 0 = the first hex digit's highest bit) into ``bands`` contiguous bands,
    as ``np.array_split`` of the bit positions does, and return one integer key per hash and band."""
    keys = []
    for positions in np.array_split(np.arange(HASH_BITS), bands):
        key = np.zeros(len(words), dtype=np.uint64)
        if len(positions):
            for word in range(positions[0] // 64, positions[-1] // 64 + 1):
                lo, hi = max(positions[0], word * 64), min(positions[-1] + 1, (word + 1) * 64)
                width = hi - lo  # bits of this band in this word, taken from its top (MSB first)
                part = (words[:, word] >> np.uint64((word + 1) * 64 - hi)) & np.uint64((1 << width) - 1)
                key = (key << np.uint64(width)) | part
        keys.append(key)
    return keys


def near_pairs(words: np.ndarray, near_threshold: int) -> np.ndarray:
    """Every pair ``(a, b)``, ``a < b``, of distinct hashes within ``near_threshold`` bits: an ``(m, 2)`` array.

    Multi-index hashing: two hashes within t bits agree exactly on at least one of t+1 bands
    (pigeonhole), so only hashes that share a band value are compared: exact, no n^2 scan. Within
    a band the hashes are sorted by key; the members of each bucket are compared with XOR +
    popcount, vectorised over all buckets at once, one offset at a time (offset d pairs each member
    with the one d places later in its bucket, so the work is the number of candidate pairs)."""
    n = len(words)
    if n < 2 or near_threshold <= 0:
        return np.empty((0, 2), dtype=np.int64)
    found = []
    for key in band_keys(words, near_threshold + 1):
        order = np.argsort(key)
        sorted_key = key[order]
        # Each word of the hashes in bucket order: comparisons then read neighbouring memory.
        sorted_words = [np.ascontiguousarray(words[order, column]) for column in range(words.shape[1])]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sizes = np.diff(np.r_[starts, n])
        end = np.repeat(starts + sizes, sizes)  # one past the last member of each position's bucket
        active = np.flatnonzero(np.repeat(sizes, sizes) > 1)
        offset = 1
        while active.size:
            active = active[active + offset < end[active]]
            if not active.size:
                break
            distance = sum(np.bitwise_count(w[active] ^ w[active + offset]).astype(np.int64) for w in sorted_words)
            close = active[distance <= near_threshold]
            a, b = order[close], order[close + offset]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
            offset += 1
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _ids(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """A dense id per value and the distinct values, in order of first appearance (a dict: faster
    than sorting strings)."""
    seen: dict[str, int] = {}
    ids = np.fromiter((seen.setdefault(v, len(seen)) for v in values), dtype=np.int64, count=len(values))
    return ids, list(seen)


def group_duplicates(sha256: Sequence[str], phash: Sequence[str], near_threshold: int) -> list[int]:
    """A group id per item: items with the same bytes, or perceptual hashes within
    ``near_threshold`` bits, share a group (transitively: the connected components of the
    "duplicate of" graph). Group ids are the smallest member index.

    Grows linearly with the data: byte-identical files are collapsed first (one node per SHA-256),
    then identical perceptual hashes (one comparison per distinct hash value), and only the distinct
    hashes go into the near-duplicate search (``near_pairs``)."""
    n = len(sha256)
    if n == 0:
        return []
    node, contents = _ids(sha256)  # one node per distinct content
    nodes = len(contents)
    hashed = np.flatnonzero(np.fromiter((bool(h) for h in phash), dtype=bool, count=n))
    rows, cols = [node], [node]  # every node is its own component at least
    if hashed.size and near_threshold > 0:  # 0: byte-identical copies only
        value_of, values = _ids([phash[i] for i in hashed])
        # Items with the same hash value are one near-duplicate group already (distance 0).
        first_node = np.empty(len(values), dtype=np.int64)
        first_node[value_of] = node[hashed]  # any member stands for its hash value
        rows.append(node[hashed])
        cols.append(first_node[value_of])
        pairs = near_pairs(hash_words(values), near_threshold)
        rows.append(first_node[pairs[:, 0]])
        cols.append(first_node[pairs[:, 1]])
    # scipy here, not at the top: the predictor imports this module (through scan) but never groups.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges_from, edges_to = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(edges_from), dtype=np.int8), (edges_from, edges_to)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    item_component = component[node]
    smallest = np.full(item_component.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, item_component, np.arange(n))
    return smallest[item_component].tolist()


@dataclass
class DuplicateOutcome:
    """What the policy kept, and what it dropped or merged (with reasons)."""

    keep: list[int]  # indices of items that stay
    labels: dict[int, str] = field(default_factory=dict)  # kept index -> "A|B" label set (multi_genre)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    merged: list[tuple[int, int]] = field(default_factory=list)  # (index, merged into index)


def apply_policy(
    paths: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[int],
    policy: str,
    classes: Sequence[str],
    label_sets: Sequence[str] | None = None,
) -> DuplicateOutcome:
    """``keep``: every file stays (a group still shares one split). ``drop``: groups whose labels
    conflict are left out; same-label copies are reduced to one file. ``multi_genre``: each group
    becomes one item labelled with its most common genre and carrying every genre of its members
    (``label_sets``: each item's own ``"A|B"`` genres, e.g. from a CSV; by default just its label)."""
    if policy not in POLICIES:
        raise ConfigError("data.duplicates.policy", policy, f"one of {list(POLICIES)}")
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    own_genres = label_sets or labels
    outcome = DuplicateOutcome(keep=[])
    for group_members in members.values():
        first = group_members[0]
        group_labels = sorted({labels[i] for i in group_members}, key=list(classes).index)
        if policy == "keep" or len(group_members) == 1:
            outcome.keep.extend(group_members)
        elif policy == "drop" and len(group_labels) > 1:
            reason = f"duplicate with conflicting labels: {'|'.join(group_labels)}"
            outcome.dropped.extend((i, reason) for i in group_members)
        elif policy == "drop":
            outcome.keep.append(first)
            outcome.dropped.extend((i, f"duplicate: same image as {paths[first]}") for i in group_members[1:])
        else:  # multi_genre
            counts = Counter(labels[i] for i in group_members)
            primary = min(group_labels, key=lambda label: (-counts[label], list(classes).index(label)))
            keeper = next(i for i in group_members if labels[i] == primary)
            outcome.keep.append(keeper)
            every = {genre for i in group_members for genre in own_genres[i].split("|")}
            outcome.labels[keeper] = "|".join(sorted(every, key=list(classes).index))
            outcome.merged.extend((i, keeper) for i in group_members if i != keeper)
    outcome.keep.sort()
    return outcome


def duplicate_summary(
    paths: Sequence[str], labels: Sequence[str], sha256: Sequence[str], groups: Sequence[int], classes: Sequence[str]
) -> dict:
    """Duplicate groups for the data report: exact vs near, and which have conflicting labels."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    listed = []
    for group_members in members.values():
        if len(group_members) < 2:
            continue
        group_labels = sorted({labels[i] for i in group_members}, key=list(classes).index)
        listed.append(
            {
                "kind": "exact" if len({sha256[i] for i in group_members}) == 1 else "near",
                "labels": group_labels,
                "conflicting": len(group_labels) > 1,
                "paths": [paths[i] for i in group_members],
            }
        )
    return {
        "n_groups": len(listed),
        "n_exact_groups": sum(g["kind"] == "exact" for g in listed),
        "n_near_groups": sum(g["kind"] == "near" for g in listed),
        "n_conflicting_groups": sum(g["conflicting"] for g in listed),
        "n_files_in_groups": sum(len(g["paths"]) for g in listed),
        "groups": listed,
    }
