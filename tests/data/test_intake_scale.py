"""Intake that grows linearly and runs once: the vectorised duplicate grouping finds exactly the
groups of the previous pairwise algorithm, decoding in worker processes gives the in-process
outcomes, and verification records spare unchanged files a second decode while catching changed ones."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genre_lightning.data.scan as scan_module
from genre_lightning.data.demo import GENRES
from genre_lightning.data.duplicates import HASH_BITS, group_duplicates
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.scan import Candidate, find_candidates, verify_all
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.data.verified import RECORDS_FILE, VerificationRecords
from genre_lightning.utils.csvio import read_csv
from tests.helpers.posters import copy_posters

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def pairwise_groups(sha256: list[str], phash: list[str], near_threshold: int) -> list[int]:
    """The previous algorithm (0.3.0.dev, data/duplicates.py before issue 27), written out plainly:
    bucket by each of t+1 bands, compare every pair in a bucket, then union the matches."""
    n = len(sha256)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[max(find(a), find(b))] = min(find(a), find(b))

    first_with: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        union(i, first_with.setdefault(digest, i))
    hashed = [i for i, h in enumerate(phash) if h]
    if near_threshold > 0:
        bits = {i: np.unpackbits(np.frombuffer(bytes.fromhex(phash[i]), dtype=np.uint8)) for i in hashed}
        for band in np.array_split(np.arange(HASH_BITS), near_threshold + 1):
            buckets: dict[bytes, list[int]] = defaultdict(list)
            for i in hashed:
                buckets[np.packbits(bits[i][band]).tobytes()].append(i)
            for members in buckets.values():
                for pos, a in enumerate(members):
                    for b in members[pos + 1 :]:
                        if int((bits[a] != bits[b]).sum()) <= near_threshold:
                            union(a, b)
    roots = [find(i) for i in range(n)]
    smallest: dict[int, int] = {}
    for i, root in enumerate(roots):
        smallest.setdefault(root, i)
    return [smallest[root] for root in roots]


def planted_hashes(seed: int, n: int = 1500) -> tuple[list[str], list[str], dict[str, int]]:
    """Hashes like real posters': many share a layout (uneven buckets), with planted exact copies
    (same bytes), near copies (a few bits flipped), copies at exactly the threshold and just past it,
    and flat images (no hash)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, HASH_BITS), dtype=np.uint8)
    layouts = rng.integers(0, 2, (12, HASH_BITS), dtype=np.uint8)
    shared = rng.random(n) < 0.5
    bits[shared] = layouts[rng.integers(0, len(layouts), shared.sum())] ^ (rng.random((shared.sum(), HASH_BITS)) < 0.07)
    sha = [f"{i:064x}" for i in range(n)]
    planted = {"exact": 0, "near": 0}
    for _ in range(150):  # byte-identical copies
        a, b = rng.choice(n, 2, replace=False)
        sha[b], bits[b] = sha[a], bits[a]
        planted["exact"] += 1
    for flips in [*range(0, 9)] * 20:  # re-encoded copies: 0-8 bits from the original
        a, b = rng.choice(n, 2, replace=False)
        bits[b] = bits[a]
        bits[b, rng.choice(HASH_BITS, flips, replace=False)] ^= 1
        planted["near"] += 1
    phash = [np.packbits(row).tobytes().hex() for row in bits]
    for i in rng.choice(n, 20, replace=False):
        phash[i] = ""  # flat: grouped by bytes only
    return sha, phash, planted


@pytest.mark.parametrize("near_threshold", [0, 1, 6, 12])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_grouping_finds_the_groups_of_the_pairwise_algorithm(seed: int, near_threshold: int):
    sha, phash, _ = planted_hashes(seed)
    groups = group_duplicates(sha, phash, near_threshold)
    assert groups == pairwise_groups(sha, phash, near_threshold)
    # And it is not trivially so: there are exact groups, and near ones from a threshold of 1.
    assert len(set(groups)) < len(groups)
    if near_threshold >= 6:
        assert len(set(groups)) < len(set(pairwise_groups(sha, phash, 0)))


def test_ten_thousand_copies_of_one_placeholder_are_one_group():
    placeholder_sha, placeholder_hash = "ab" * 32, "0f" * 16
    rng = np.random.default_rng(3)
    others = [np.packbits(rng.integers(0, 2, HASH_BITS, dtype=np.uint8)).tobytes().hex() for _ in range(500)]
    sha = [placeholder_sha] * 10_000 + [f"{i:064x}" for i in range(500)]
    phash = [placeholder_hash] * 10_000 + others
    groups = group_duplicates(sha, phash, 6)
    assert set(groups[:10_000]) == {0}
    # The rest as the pairwise algorithm groups one placeholder and the others (its index 0 is ours 0).
    reference = pairwise_groups(sha[9_999:], phash[9_999:], 6)
    assert groups[10_000:] == [0 if g == 0 else g + 9_999 for g in reference[1:]]


def test_processes_give_the_same_outcomes_as_this_process(poster_root: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "posters"
    files = copy_posters(poster_root, root)
    files[3].write_bytes(files[3].read_bytes()[:200])  # corrupt
    (root / "Comedy" / "empty.jpg").write_bytes(b"")
    candidates, _ = find_candidates(root, GENRES)
    in_process = verify_all(candidates, workers=1, min_side=32)
    monkeypatch.setattr(scan_module, "PROCESSES_FROM", 1)
    with_processes = verify_all(candidates, workers=2, min_side=32)
    assert with_processes == in_process
    assert len(in_process[1]) == 2 and len(in_process[0]) == len(candidates) - 2


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The paths the scan decodes (all in this process, so that they can be counted here)."""
    seen: list[str] = []
    real = scan_module.decode_outcome
    monkeypatch.setattr(scan_module, "PROCESSES_FROM", 10**9)

    def counting(path, stamp):
        seen.append(path)
        return real(path, stamp)

    monkeypatch.setattr(scan_module, "decode_outcome", counting)
    return seen


def test_a_reused_split_decodes_only_the_files_that_changed(poster_root: Path, tmp_path: Path, decodes: list[str]):
    root = tmp_path / "posters"
    files = copy_posters(poster_root, root)
    first = prepare_annotations(tmp_path / "a", IntakeSettings(GENRES, fractions=FRACTIONS, root=root))
    assert len(decodes) == len(files)
    records = VerificationRecords.read(tmp_path / "a" / RECORDS_FILE)
    assert sorted(records.by_path) == sorted(str(f) for f in files)
    assert {r.sha256 for r in records.by_path.values()} == set(read_csv(first)["sha256"])

    decodes.clear()
    prepare_annotations(tmp_path / "b", IntakeSettings(GENRES, fractions=FRACTIONS, split_file=first))
    assert decodes == []  # nothing changed: no file decoded again

    # A file truncated in place, and another rewritten with its old size and mtime put back.
    broken, disguised = files[0], files[40]
    broken.write_bytes(broken.read_bytes()[:150])
    info = os.stat(disguised)
    data = bytearray(disguised.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # same size, other pixels
    disguised.write_bytes(bytes(data))
    os.utime(disguised, ns=(info.st_atime_ns, info.st_mtime_ns))
    decodes.clear()
    out = prepare_annotations(tmp_path / "c", IntakeSettings(GENRES, fractions=FRACTIONS, split_file=first))
    assert sorted(decodes) == sorted([str(broken), str(disguised)])
    report = __import__("json").loads((out.parent / "data_report.json").read_text())
    assert [s["path"] for s in report["skipped"]][:1] == [str(broken)]
    assert report["skipped"][0]["reason"].startswith("corrupt image data")
    changed = VerificationRecords.read(out.parent / RECORDS_FILE).by_path[str(disguised)]
    assert changed.sha256 != records.by_path[str(disguised)].sha256


def test_a_second_scan_of_the_same_folder_reads_the_cache(poster_root: Path, tmp_path: Path, decodes: list[str]):
    root = tmp_path / "posters"
    files = copy_posters(poster_root, root)
    cache = tmp_path / "cache"
    first = prepare_annotations(
        tmp_path / "a", IntakeSettings(GENRES, fractions=FRACTIONS, root=root, verify_cache=cache)
    )
    assert len(decodes) == len(files) and len(list(cache.glob("*.csv"))) == 1
    decodes.clear()
    (root / "Horror" / "new.jpg").write_bytes(files[0].read_bytes())
    second = prepare_annotations(
        tmp_path / "b", IntakeSettings(GENRES, fractions=FRACTIONS, split_seed=1, root=root, verify_cache=cache)
    )
    assert decodes == [str(root / "Horror" / "new.jpg")]
    # The records gave the same outcomes as decoding did.
    a, b = read_csv(first), read_csv(second)
    assert (
        dict(zip(a["file_path"], a["sha256"], strict=True)).items()
        <= dict(zip(b["file_path"], b["sha256"], strict=True)).items()
    )


def test_records_apply_the_minimum_side_of_the_run_that_reads_them(tmp_path: Path):
    path = str(tmp_path / "poster.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 48, 3), dtype=np.uint8)).save(path)
    records = VerificationRecords()
    verify_all([Candidate(path, "Action")], records=records)
    kept, skipped = verify_all([Candidate(path, "Action")], min_side=49, records=records)
    assert kept == [] and skipped[0].reason == "too small: 48x72 px (data.min_image_side=49)"


def test_a_read_error_is_not_kept_as_the_files_outcome(tmp_path: Path, monkeypatch):
    """A read error may pass (a network file system's hiccup): the next scan tries the file again."""
    path = str(tmp_path / "poster.jpg")
    Image.fromarray(np.zeros((72, 48, 3), dtype=np.uint8) + 90).save(path)
    records = VerificationRecords()

    def unreadable(_path):
        raise scan_module.UnreadableImage("cannot read file: Input/output error")

    monkeypatch.setattr(scan_module, "read_image_bytes", unreadable)
    (skipped,) = verify_all([Candidate(path, "Action")], records=records)[1]
    assert skipped.reason == "cannot read file: Input/output error" and len(records) == 0
    monkeypatch.undo()
    kept, _ = verify_all([Candidate(path, "Action")], records=records)
    assert len(kept) == 1 and records.by_path[path].outcome == ""
