"""The split: fractions within 1 per genre, stratified, seeded, identical images kept together."""

from collections import Counter, defaultdict

import pytest

from genre_lightning.data.split import SPLITS, check_fractions, split_targets, stratified_group_split
from genre_lightning.errors import ConfigError

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def make_items(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return labels, [f"hash{i}" for i in range(len(labels))]


@pytest.mark.parametrize(
    "counts",
    [
        {"Action": 261, "Comedy": 265, "Horror": 322, "Romance": 222},  # the real poster set's sizes
        {"Action": 7, "Comedy": 3, "Horror": 1, "Romance": 40},
    ],
)
def test_every_genre_is_split_within_one_of_the_exact_fractions(counts):
    labels, groups = make_items(counts)
    splits = stratified_group_split(labels, groups, FRACTIONS, seed=0)
    table = Counter(zip(labels, splits, strict=True))
    for label, n in counts.items():
        assert sum(table[(label, s)] for s in SPLITS) == n
        for split in SPLITS:
            assert abs(table[(label, split)] - n * FRACTIONS[split]) <= 1, (label, split, table)


def test_same_seed_same_split_and_another_seed_another():
    labels, groups = make_items({"Action": 50, "Comedy": 50, "Horror": 50, "Romance": 50})
    first = stratified_group_split(labels, groups, FRACTIONS, seed=3)
    assert stratified_group_split(labels, groups, FRACTIONS, seed=3) == first
    assert stratified_group_split(labels, groups, FRACTIONS, seed=4) != first


def test_split_does_not_depend_on_input_order():
    labels, groups = make_items({"Action": 30, "Comedy": 30, "Horror": 30, "Romance": 30})
    forward = dict(zip(groups, stratified_group_split(labels, groups, FRACTIONS, seed=1), strict=True))
    backward = dict(
        zip(groups[::-1], stratified_group_split(labels[::-1], groups[::-1], FRACTIONS, seed=1), strict=True)
    )
    assert forward == backward


def test_identical_images_share_a_split_even_across_genres():
    labels, groups = make_items({"Action": 60, "Comedy": 60, "Horror": 60, "Romance": 60})
    # 20 posters filed twice (under two genres, or twice in one genre): same content hash.
    for k in range(20):
        labels.append(["Comedy", "Horror", "Romance", "Action"][k % 4])
        groups.append(f"hash{k * 11}")
    for seed in range(5):
        splits = stratified_group_split(labels, groups, FRACTIONS, seed=seed)
        by_group = defaultdict(set)
        for group, split in zip(groups, splits, strict=True):
            by_group[group].add(split)
        assert all(len(s) == 1 for s in by_group.values())
        table = Counter(zip(labels, splits, strict=True))
        for label, n in Counter(labels).items():
            for split in SPLITS:
                assert abs(table[(label, split)] - n * FRACTIONS[split]) <= 1


def test_targets_sum_to_the_count():
    for count in range(0, 50):
        targets = split_targets(count, FRACTIONS)
        assert sum(targets.values()) == count
        assert all(abs(targets[s] - count * FRACTIONS[s]) < 1 for s in SPLITS)


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"train": 0.8, "val": 0.15, "test": 0.15}, "add up to 1"),
        ({"train": 1.1, "val": -0.05, "test": -0.05}, "non-negative"),
        ({"train": 0.8, "test": 0.2}, "train, val and test"),
    ],
)
def test_bad_fractions_name_the_key_and_the_rule(fractions, message):
    with pytest.raises(ConfigError) as err:
        check_fractions(fractions)
    assert str(err.value).startswith("data.fractions=")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_duplicate_groups_spread_over_the_splits_like_the_rest():
    # 60 pairs of the same poster under two genres: about 70/15/15 of them per split, not 1/3 each.
    labels, groups = make_items({"Action": 200, "Comedy": 200, "Horror": 200, "Romance": 200})
    for k in range(60):
        labels += ["Action", "Comedy"] if k % 2 else ["Horror", "Romance"]
        groups += [f"pair{k}", f"pair{k}"]
    splits = stratified_group_split(labels, groups, FRACTIONS, seed=0)
    pair_splits = Counter(s for g, s in zip(groups, splits, strict=True) if g.startswith("pair"))
    assert pair_splits["train"] >= 2 * 60 * 0.55
    assert pair_splits["test"] <= 2 * 60 * 0.3
