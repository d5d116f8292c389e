"""The whole pipeline on a messy, read-only data folder: it completes, reports what it skipped,
and leaves every file (bytes and mtime) exactly as it was. Also: nothing from a checkpoint or
an input folder is ever unpickled."""

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.fault_corpus import build_fault_corpus


def snapshot(root: Path) -> dict[str, tuple]:
    """Type, mtime and content (bytes for files, target for links) of everything under root."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IRUSR:
                content = Path(path).read_bytes()
            else:
                content = None
            state[path] = (stat.S_IFMT(info.st_mode), info.st_mtime_ns, info.st_size, content)
    return state


def set_writable(root: Path, writable: bool) -> None:
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode) or not (info.st_mode & stat.S_IRUSR):
                continue
            os.chmod(path, info.st_mode | stat.S_IWUSR if writable else info.st_mode & ~0o222)


@pytest.fixture
def read_only_corpus(tmp_path: Path):
    corpus = build_fault_corpus(tmp_path / "scraped", per_genre=14)
    yield corpus
    set_writable(corpus.root, True)  # let pytest clean up


@pytest.mark.slow
def test_pipeline_on_a_read_only_folder_with_faults(read_only_corpus, tmp_path: Path):
    corpus = read_only_corpus
    # 1. genre-data: scan, verify, split; prints the per-genre table.
    done = run_cli("genre-data", f"data.root={corpus.root}", f"hydra.run.dir={tmp_path}/data", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for text in (
        "Data intake",
        "Skipped, by reason",
        "corrupt image data",
        "decompression bomb",
        "Drama",
        "Duplicates",
    ):
        assert text in done.stdout, text
    split_file = tmp_path / "data" / "annotations.csv"
    rows = read_csv(split_file)
    # 2. A file that passed the scan breaks before training reads it (a disk error, a sync tool...).
    victim = Path(rows[rows["split"] == "train"]["file_path"].iloc[0])
    victim.write_bytes(victim.read_bytes()[:100])
    set_writable(corpus.root, False)
    before = snapshot(corpus.root)

    # 3. Train, evaluate and predict on the read-only folder (in this process: genre-data above, and
    # tests/cli/test_end_to_end.py, run the console scripts themselves).
    done = run_entry_point(
        "genre-train",
        *FAST,
        f"data.root={corpus.root}",
        f"data.split_file={split_file}",
        "trainer.max_epochs=2",
        "finetune=none",
        f"hydra.run.dir={tmp_path}/train",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    skipped = metrics["skipped_during_run"]
    assert [(s["path"], s["split"], s["times"]) for s in skipped] == [(str(victim), "train", 2)]
    assert skipped[0]["reason"].startswith("corrupt image data")

    ckpt = metrics["best_ckpt_path"]
    done = run_entry_point(
        "genre-eval",
        f"ckpt_path={ckpt}",
        "trainer=cpu",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path}/eval",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test"]["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)

    out_csv = tmp_path / "predictions.csv"
    done = run_entry_point(
        "genre-predict",
        f"ckpt_path={ckpt}",
        f"input={corpus.root}",
        f"output_csv={out_csv}",
        "num_workers=0",
        f"hydra.run.dir={tmp_path}/predict",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = read_csv(out_csv)
    images = [str(p) for p in walk_files(corpus.root) if p.suffix.lower() in IMAGE_EXTENSIONS]
    assert sorted(predictions["file_path"]) == sorted(images)
    failed = {os.path.relpath(p, corpus.root) for p in predictions.loc[predictions["error"] != "", "file_path"]}
    assert failed == set(corpus.skipped) | {os.path.relpath(victim, corpus.root)}  # the intake's rules
    # The test accuracy is over exactly the test split's files: the share of them whose
    # predicted genre is their label (wrong if items were dropped, padded or mislabelled).
    test_rows = rows[rows["split"] == "test"]
    top1 = dict(zip(predictions["file_path"], predictions["top1"], strict=True))
    hits = [top1[path] == label for path, label in zip(test_rows["file_path"], test_rows["label"], strict=True)]
    assert len(hits) >= 8 and metrics["test"]["test/acc"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)

    # 4. Nothing in the data folder changed: same files, same bytes, same mtimes.
    assert snapshot(corpus.root) == before


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Exploit()}, evil)
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*evil.ckpt' is not valid: expected a checkpoint that loads"):
        GenreClassifier.from_checkpoint(evil)
    assert not marker.exists()


def test_predict_never_unpickles_files_from_its_input(tmp_path: Path, poster_root: Path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "poster.jpg").write_bytes((poster_root / "Action" / "action_0000.jpg").read_bytes())
    (inbox / "trap.jpg").write_bytes(pickle.dumps(Exploit()))
    (inbox / "trap.pt").write_bytes(pickle.dumps(Exploit()))
    model = GenreClassifier(
        "resnet10t", ["Action", "Comedy", "Horror", "Romance"], data_config={"input_size": [3, 32, 32]}
    )
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": "2.6.0",
        },
        ckpt,
    )
    done = run_entry_point(
        "genre-predict",
        f"ckpt_path={ckpt}",
        f"input={inbox}",
        f"output_csv={tmp_path}/p.csv",
        "num_workers=0",
        "backend=torch",  # what is read is the point here, not the backend (no ONNX export process)
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frame = read_csv(tmp_path / "p.csv")
    assert list(frame["file_path"].map(lambda p: Path(p).name)) == ["poster.jpg", "trap.jpg"]
    assert frame["error"].iloc[1].startswith("not an image")
    assert not marker.exists()
