"""genre-lightning performance benchmark: one process, a table of ratios.

    python bench/performance.py            # real posters + EfficientNet-Lite0 weights if present
    python bench/performance.py --smoke    # tiny: demo posters, a tiny network (the test suite runs this)
    python bench/performance.py --sections predict stream --checkpoint <probe_cpu run>/checkpoints/<best>.ckpt

Sections (measured in this one process; compared things alternate, and each ratio comes from
one run):
  micro     fine-tuning in whole batches against micro-batches accumulated into the same steps.
  train     genre-train's training loop against a plain PyTorch loop of the study's recipe
            (same files, transforms, model, optimizer, batch size, workers): train images/s.
  predict   the limit this CPU sets (decoding alone, each backend's forward pass alone, both
            sharing the cores) and genre-predict with each backend against a plain eval loop and
            against that limit; the backends' agreement; int8's agreement and accuracy change.
            Uses --checkpoint, or trains experiment=probe_cpu on the real posters first.
  stream    peak memory and images/s of genre-predict on N and 4N files.
  rss       peak resident memory of a genre-train run (a child process, its workers included).
  decoded   the decoded-image cache: data-loading images/s and training epoch time, off/on.
  features  the frozen-feature cache: a linear probe's seconds per epoch and time to reach the
            study's accuracy (65.82%) on the validation split, off/on.
  workers   training images/s for data.num_workers 0/1/2 and channels_last off/on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
from bench_table import markdown_table  # bench/bench_table.py: this script's folder is on sys.path
from lightning.pytorch import Callback, seed_everything
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from genre_lightning.cli.common import compose_config
from genre_lightning.cli.train import build
from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
from genre_lightning.data.demo import GENRES, ensure_demo_posters
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.inference.batch import ImageFiles, predict_to_csv
from genre_lightning.inference.decode import decoded_batches
from genre_lightning.inference.onnx_model import cpu_cores
from genre_lightning.inference.predictor import Predictor
from genre_lightning.inference.quantize import compare, describe, image_batches, split_posters
from genre_lightning.models.backbone import resolve_data_config
from genre_lightning.utils.csvio import read_csv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_POSTERS = SHARED / "data" / "four_genre_posters"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
STUDY_ACCURACY = 0.6582


class Setup:
    """What the sections share: the posters, one split, and the study recipe's overrides."""

    def __init__(self, smoke: bool, workdir: Path, posters: Path = REAL_POSTERS) -> None:
        self.workdir = workdir
        self.real = posters.is_dir() and LITE0.is_file() and not smoke
        if self.real:
            self.root = posters
            self.description = f"real posters ({posters}); tf_efficientnet_lite0 (ImageNet weights); 256x256; batch 32"
            model = ["model.backbone=tf_efficientnet_lite0", f"model.weights={LITE0}"]
            self.batch_size = 32
        else:
            self.root = ensure_demo_posters(workdir / "demo", per_class=40, size=(96, 144))
            self.description = "demo posters; resnet10t (random init); 64x64; batch 16"
            model = ["model=tiny", "model.pretrained=false", "model.data_config.input_size=[3,64,64]"]
            self.batch_size = 16
        fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
        self.split_file = prepare_annotations(
            workdir / "split", IntakeSettings(classes=GENRES, fractions=fractions, split_seed=0, root=self.root)
        )
        self.frame = read_csv(self.split_file)
        self.overrides = [
            "experiment=seed_efficientnet_b0",
            *model,
            "trainer=cpu",
            f"data.root={self.root}",
            f"data.split_file={self.split_file}",
            f"data.batch_size={self.batch_size}",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "print_config=false",
            "logger=csv",
        ]

        self.predict_model: str | None = None  # the predict and stream sections' checkpoint, once trained

    def config(self, name: str, *extra: str):
        return compose_config("train", [*self.overrides, *extra], self.workdir / name)

    def files(self, split: str) -> list[str]:
        return list(self.frame.loc[self.frame["split"] == split, "file_path"])


# ----------------------------------------------------------------------------- train
class StepClock(Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def steady_rate(ends: list[float], warmup: int, batch_size: int) -> float:
    """Images/s from the end of the last warm-up step to the end of the last step."""
    return (len(ends) - warmup) * batch_size / (ends[-1] - ends[warmup - 1])


def framework_train(setup: Setup, steps: int, warmup: int, *extra: str, batch_size: int | None = None) -> float:
    """genre-train's own path: composed config, data module, GenreClassifier, Lightning Trainer."""
    clock = StepClock()
    cfg = setup.config(
        "framework",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.max_epochs=1",
        "test=false",
        *extra,
    )
    seed_everything(0)
    datamodule, model, trainer = build(cfg, extra_callbacks=[clock])
    trainer.fit(model, datamodule=datamodule)
    return steady_rate(clock.ends, warmup, batch_size or setup.batch_size)  # one clock tick per loaded batch


class NotebookPosters(Dataset):
    """A notebook's dataset: open with PIL, convert to RGB, transform."""

    def __init__(self, paths: list[str], labels: list[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(Image.open(self.paths[index]).convert("RGB")), self.labels[index]


def plain_net_and_transform(setup: Setup):
    """The same timm network and eval transform, built without any of genre-lightning's classes."""
    cfg = setup.config("plain")
    kwargs = {"pretrained_cfg_overlay": {"file": cfg.model.weights}} if cfg.model.weights else {}
    net = timm.create_model(cfg.model.backbone, pretrained=bool(cfg.model.weights), num_classes=len(GENRES), **kwargs)
    _, transform = build_transforms(resolve_data_config(net, cfg.model.data_config), None)
    return net, transform, cfg


def plain_train(setup: Setup, steps: int, warmup: int) -> float:
    """The same work by hand: same files, transform, network, optimizer, batch size, loader workers
    and memory format as genre-train's config, so the ratio is the framework's own cost."""
    seed_everything(0)
    net, transform, cfg = plain_net_and_transform(setup)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    frame = setup.frame[setup.frame["split"] == "train"]
    dataset = NotebookPosters(list(frame["file_path"]), [GENRES.index(x) for x in frame["label"]], transform)
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset, batch_size=setup.batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    net.train()
    ends = []
    for images, labels in loader:
        loss = criterion(net(images.contiguous(memory_format=memory_format)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
        if len(ends) == steps:
            break
    return steady_rate(ends, warmup, setup.batch_size)


def section_train(setup: Setup, steps: int, warmup: int, rounds: int) -> list[tuple[str, str, str]]:
    framework, plain = [], []
    for _ in range(rounds):  # alternate, so drifts in machine load hit both sides alike
        plain.append(plain_train(setup, steps, warmup))
        framework.append(framework_train(setup, steps, warmup))
    ratios = [f / p for f, p in zip(framework, plain, strict=True)]
    return [
        ("train: plain PyTorch loop", f"{statistics.median(plain):.2f} img/s", "1.00x"),
        (
            "train: genre-train",
            f"{statistics.median(framework):.2f} img/s",
            f"{statistics.median(ratios):.3f}x (rounds: {', '.join(f'{r:.3f}' for r in ratios)})",
        ),
    ]


# ----------------------------------------------------------------------------- micro
def section_micro(setup: Setup, steps: int, warmup: int, rounds: int) -> list[tuple[str, str, str]]:
    """Fine-tuning every layer (BatchNorm statistics frozen, as best_cpu) in whole batches against
    micro-batches of 8 accumulated into the same steps: train images/s, alternating."""
    micro = max(1, setup.batch_size // 4)
    common = ["finetune=head_then_all", "finetune.milestones=[0]", "finetune.freeze_bn_stats=true"]
    whole, micros = [], []
    for _ in range(rounds):
        whole.append(framework_train(setup, steps, warmup, *common))
        micro_rate = framework_train(
            setup,
            steps * 4,
            warmup * 4,
            *common,
            f"data.micro_batch_size={micro}",
            batch_size=micro,
        )
        micros.append(micro_rate)
    ratios = [m / w for m, w in zip(micros, whole, strict=True)]
    return [
        ("micro: fine-tuning in whole batches", f"{statistics.median(whole):.2f} img/s", "1.00x"),
        (
            f"micro: the same steps in micro-batches of {micro}",
            f"{statistics.median(micros):.2f} img/s",
            f"{statistics.median(ratios):.3f}x (rounds: {', '.join(f'{r:.3f}' for r in ratios)})",
        ),
    ]


# ----------------------------------------------------------------------------- predict
def plain_eval(paths: list[str], net, transform, batch_size: int = 32) -> float:
    """A notebook's eval loop: batches of 32 decoded in the main process, torch.no_grad()."""
    net.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
            net(images).softmax(dim=-1)
    return len(paths) / (time.perf_counter() - start)


def predict_checkpoint(setup: Setup, given: str | None) -> str:
    """``--checkpoint``, or a model trained now on the setup's split: experiment=probe_cpu with the
    Lite0 weights on the real posters (about a minute on 2 idle cores), a few steps of the tests'
    tiny network otherwise. Its run folder has the split (int8 calibration, test accuracy)."""
    if given or setup.predict_model:
        return given or setup.predict_model
    from genre_lightning.cli.train import train

    run = setup.workdir / "predict-model"
    if setup.real:
        model = ["experiment=probe_cpu", f"model.weights={LITE0}"]
    else:
        model = ["debug=tests", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    overrides = [*model, f"data.root={setup.root}", f"data.split_file={setup.split_file}", "artifacts=none"]
    train(compose_config("train", [*overrides, "logger=csv", "print_config=false"], run))
    setup.predict_model = json.loads((run / "metrics.json").read_text())["best_ckpt_path"]
    return setup.predict_model


def images_per_second(work, count: int) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def decode_processes(paths: list[str], transform, workers: int) -> float:
    """Decode + resize in DataLoader worker processes (started, and one pass made, before timing)."""
    dataset = PosterDataset(paths, [0] * len(paths), transform)
    loader = DataLoader(dataset, 32, num_workers=workers, collate_fn=collate_posters, persistent_workers=True)
    for _ in loader:
        pass
    return images_per_second(lambda: [None for _ in loader], len(paths))


def forward_rate(logits, batch: torch.Tensor, seconds: float) -> float:
    """Forward passes of one preprocessed batch, repeated for about ``seconds``: images/s."""
    logits(batch)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        logits(batch)
        count += len(batch)
    return count / (time.perf_counter() - start)


def genre_predict_rate(predictor: Predictor, folder: Path, csv: Path, **options) -> float:
    """What genre-predict runs on a folder once its model is loaded (``predict_to_csv``): walk, decode
    threads, the backend, rows written to the CSV as they come."""
    start = time.perf_counter()
    run = predict_to_csv(predictor, ImageFiles(folder), csv, progress=False, **options)
    return run.written / (time.perf_counter() - start)


def section_predict(setup: Setup, rounds: int, checkpoint: str | None) -> list[tuple[str, str, str]]:
    """The limit this machine sets (decoding alone on every core, each backend's forward pass alone,
    and the two sharing the cores), and genre-predict with each backend against a plain eval loop
    and against its limit; the backends' agreement; int8's agreement and accuracy change."""
    checkpoint = predict_checkpoint(setup, checkpoint)
    cache = setup.workdir / "onnx-cache"
    paths = setup.files("val") + setup.files("test")
    folder = setup.workdir / "predict-images"
    folder.mkdir(exist_ok=True)
    for i, path in enumerate(paths):  # genre-predict reads a folder
        (folder / f"{i:05d}{Path(path).suffix}").write_bytes(Path(path).read_bytes())
    cores = cpu_cores()
    reference = Predictor.from_checkpoint(checkpoint, backend="torch", channels_last=False)
    transform = reference.eval_transform
    batch = image_batches(paths[:32], transform, 32)[0]

    def loaded(**options) -> Predictor:
        predictor = Predictor.from_checkpoint(checkpoint, cache_dir=cache, **options)
        predictor.logits(batch)  # the backend is chosen (exported, quantised) before anything is timed
        return predictor

    started = time.perf_counter()
    onnx = loaded(backend="onnxruntime")
    export_seconds = time.perf_counter() - started
    predictors = {"torch": loaded(backend="torch"), "onnxruntime": onnx, "int8": loaded(precision="int8")}
    assert onnx.backend == "onnxruntime", "the ONNX export failed its parity check: see the warning above"

    bf16 = loaded(backend="torch", precision="bf16")
    one_thread = loaded(backend="onnxruntime", threads=1)
    csv = setup.workdir / "predictions.csv"
    seconds = 3.0 if setup.real else 0.5
    limits = {  # what the CPU allows, measured in every round beside the runs
        "decode threads": lambda: images_per_second(
            lambda: [None for _ in decoded_batches(paths, transform, 32, workers=cores)], len(paths)
        ),
        "decode processes": lambda: decode_processes(paths, transform, cores),
        **{f"forward {name}": partial(forward_rate, p.logits, batch, seconds) for name, p in predictors.items()},
    }
    runs = {  # name -> (the backend whose limit it is measured against, the measurement)
        "plain eval loop (batches of 32, no_grad, decoded in the loop)": (
            None,
            lambda: plain_eval(paths, reference.network, transform),
        ),
        "genre-predict backend=torch": ("torch", lambda: genre_predict_rate(predictors["torch"], folder, csv)),
        "genre-predict backend=torch precision=bf16": ("torch", lambda: genre_predict_rate(bf16, folder, csv)),
        "genre-predict (default: backend=auto -> onnxruntime)": (
            "onnxruntime",
            lambda: genre_predict_rate(onnx, folder, csv),
        ),
        "genre-predict onnxruntime, 1 thread + 1 decode thread": (
            "onnxruntime",
            lambda: genre_predict_rate(one_thread, folder, csv, num_workers=1),
        ),
        f"genre-predict onnxruntime, {cores} threads + {cores} decode threads": (
            "onnxruntime",
            lambda: genre_predict_rate(onnx, folder, csv, num_workers=cores),
        ),
        "genre-predict precision=int8": ("int8", lambda: genre_predict_rate(predictors["int8"], folder, csv)),
    }
    measured: dict[str, list[float]] = {name: [] for name in [*limits, *runs]}
    for _ in range(rounds):  # alternating, so drifts in machine load hit every measurement alike
        for name, measure in [*limits.items(), *((n, run) for n, (_, run) in runs.items())]:
            measured[name].append(measure())
    # Per round: decoding on all cores (the faster way) and the forward pass share the cores.
    decode = [max(pair) for pair in zip(measured["decode threads"], measured["decode processes"], strict=True)]
    limit = {
        name: [1 / (1 / d + 1 / f) for d, f in zip(decode, measured[f"forward {name}"], strict=True)]
        for name in predictors
    }

    def rounds_of(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} img/s (rounds {', '.join(f'{v:.1f}' for v in values)})"

    _, height, width = reference.data_config["input_size"]
    model = f"{reference.identity['backbone']} at {height}x{width}, flip TTA {reference.tta_hflip}"
    rows = [
        (f"predict: the model ({model}), {len(paths)} images", Path(checkpoint).name, ""),
        (f"predict: decode + resize only, {cores} threads", rounds_of(measured["decode threads"]), ""),
        (f"predict: decode + resize only, {cores} worker processes", rounds_of(measured["decode processes"]), ""),
    ]
    for name in predictors:
        rows.append((f"predict: forward pass only, batch 32, {name}", rounds_of(measured[f"forward {name}"]), ""))
    for name, values in limit.items():
        rows.append((f"predict: limit with {name} (1 / (1/decode + 1/forward))", rounds_of(values), ""))
    plain = measured[next(iter(runs))]
    for name, (backend, _) in runs.items():
        values = measured[name]
        ratio = statistics.median([v / p for v, p in zip(values, plain, strict=True)])
        share = ""
        if backend:
            share = (
                f", {statistics.median([v / m for v, m in zip(values, limit[backend], strict=True)]):.0%} of the limit"
            )
        rows.append((f"predict: {name}", rounds_of(values), f"{ratio:.2f}x{share}"))
    rows.append(("predict: onnxruntime export on first use (once per checkpoint)", f"{export_seconds:.1f} s", ""))
    rows += agreement_rows(predictors, bf16, list(setup.frame["file_path"]), checkpoint)
    return rows


def agreement_rows(predictors: dict[str, Predictor], bf16: Predictor, paths: list[str], checkpoint: str) -> list:
    """Each backend's predictions against torch float32 on every poster, and int8's test accuracy."""
    frames = {name: p.predict_files(paths, progress=False) for name, p in [*predictors.items(), ("bf16", bf16)]}
    columns = [c for c in frames["torch"].columns if c.startswith("p_") and c != "p_top1"]
    rows = []
    for name in ("onnxruntime", "int8", "bf16"):
        same = (frames[name]["top1"] == frames["torch"]["top1"]).mean()
        gap = (frames[name][columns] - frames["torch"][columns]).abs().to_numpy().max()
        rows.append(
            (
                f"predict: {name} against torch float32 on {len(paths)} posters: same top-1 / largest prob. difference",
                f"{same:.1%} / {gap:.2e}",
                "",
            )
        )
    test, labels = split_posters(checkpoint, predictors["torch"].classes, "test", "test accuracy")
    label_of = dict(zip(test, labels, strict=True))
    logits = {name: [] for name in ("onnxruntime", "int8")}
    readable = []
    for decoded in decoded_batches(test, predictors["torch"].eval_transform, 32, workers=0):
        readable += [label_of[decoded.paths[i]] for i in decoded.index.tolist()]
        for name in logits:
            logits[name].append(predictors[name].logits(decoded.images).numpy())
    comparison = compare(*(np.concatenate(logits[n]) for n in logits), readable, predictors["torch"].classes)
    rows.append(("predict: int8", describe(comparison), ""))
    return rows


# ----------------------------------------------------------------------------- rss
def peak_rss(command: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """Run ``command``; (exit status, peak MiB of the whole process tree as PSS, peak RSS MiB of its
    largest process). PSS splits pages shared between the process and its forked DataLoader workers
    instead of counting them in each; the tree is sampled from /proc every 0.1 s. The peak RSS is each
    process's own high-water mark (``VmHWM``), sampled likewise: ``ru_maxrss`` would also count this
    process's own memory, which Linux books to a child that execs right after ``vfork``."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    tree_peak, largest = 0, 0

    def status_kib(pid: int, field: str) -> int:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0])
        return 0

    def sample() -> tuple[int, int]:
        pids = [process.pid]
        with contextlib.suppress(OSError):
            pids += [int(c) for c in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/smaps_rollup").read_text().split("Pss:")[1].split()[0])
        return total, max(status_kib(pid, "VmHWM") for pid in pids)

    while True:
        pid, status, _ = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status), tree_peak / 1024, largest / 1024
        pss, hwm = sample()
        tree_peak, largest = max(tree_peak, pss), max(largest, hwm)
        time.sleep(0.1)


def section_rss(setup: Setup, steps: int) -> list[tuple[str, str, str]]:
    """Peak RSS of genre-train (the study recipe, a few steps; and with 2 loader workers), genre-eval
    on its checkpoint and genre-predict on the test images."""
    scripts = Path(sys.executable).parent
    run = setup.workdir / "rss"
    train = [
        str(scripts / "genre-train"),
        *setup.overrides,
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=2",
        "trainer.max_epochs=1",
    ]
    # The smoke run checks that each command runs and is measured; the figures it draws and the
    # full test split would only add seconds to the test suite.
    smoke = [] if setup.real else ["artifacts=none", "trainer.limit_test_batches=2"]
    train += smoke
    rows = []
    for name, command in (
        ("genre-train", [*train, f"hydra.run.dir={run}"]),
        ("genre-train, data.num_workers=2", [*train, "data.num_workers=2", f"hydra.run.dir={run}-workers"]),
    ):
        status, tree, largest = peak_rss(command)
        rows.append(
            (f"rss: {name} peak (PSS of all processes / RSS of the largest)", f"{tree:.0f} / {largest:.0f} MiB", "")
        )
        if status != 0:
            return [*rows[:-1], (f"rss: {name}", "failed", f"exit status {status}")]
    checkpoint = next((run / "checkpoints").glob("epoch*.ckpt"))
    test_folder = setup.workdir / "rss-test-images"
    test_folder.mkdir(exist_ok=True)
    for path in setup.files("test"):
        (test_folder / Path(path).name).write_bytes(Path(path).read_bytes())
    for name, command in (
        (
            "genre-eval",
            [
                str(scripts / "genre-eval"),
                f"ckpt_path={checkpoint}",
                "print_config=false",
                f"hydra.run.dir={run}-eval",
                *smoke,
            ],
        ),
        (
            "genre-predict",
            [
                str(scripts / "genre-predict"),
                f"ckpt_path={checkpoint}",
                f"input={test_folder}",
                f"hydra.run.dir={run}-predict",
            ],
        ),
    ):
        status, tree, largest = peak_rss(command)
        rows.append((f"rss: {name} peak", f"{largest:.0f} MiB" if status == 0 else "failed", ""))
    return rows


# ----------------------------------------------------------------------------- stream
def section_stream(setup: Setup, checkpoint: str | None) -> list[tuple[str, str, str]]:
    """genre-predict (the console script, default settings) on a folder of N and of 4N posters
    (copies of the data set's): its peak memory stays the same, since rows go to the CSV as they
    come and the folder is read lazily; and images/s, start-up included."""
    checkpoint = predict_checkpoint(setup, checkpoint)
    sources = list(setup.frame["file_path"])
    scripts = Path(sys.executable).parent
    env = {**os.environ, "GENRE_LIGHTNING_CACHE": str(setup.workdir / "stream-cache")}
    rows = []
    for copies in (1, 4):
        folder = setup.workdir / f"stream-{copies}"
        for copy in range(copies):
            (folder / str(copy)).mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(sources):
                os.symlink(path, folder / str(copy) / f"{i:05d}{Path(path).suffix}")  # the same bytes, no copy
        command = [
            str(scripts / "genre-predict"),
            f"ckpt_path={checkpoint}",
            f"input={folder}",
            f"output_csv={folder}.csv",
            f"hydra.run.dir={folder}-run",
        ]
        if copies == 1:  # the export on first use is not what this section measures
            subprocess.run([*command, "onnx_export=wait"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        status, _, largest = peak_rss(command, env=env)
        seconds = time.perf_counter() - started
        count = copies * len(sources)
        written = len(read_csv(f"{folder}.csv")) if status == 0 else 0
        rows.append(
            (
                f"stream: genre-predict on {count} files: peak RSS / images/s (start-up included)",
                f"{largest:.0f} MiB / {written / seconds:.1f} img/s" if written == count else f"failed ({status})",
                "",
            )
        )
    return rows


# ----------------------------------------------------------------------------- decoded
def loader_rate(setup: Setup, cache_dir: str | None) -> float:
    cfg = setup.config("loader", f"data.cache_dir={cache_dir}" if cache_dir else "data.cache_dir=null")
    datamodule, model, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    start = time.perf_counter()
    count = sum(len(batch["target"]) for batch in datamodule.train_dataloader())
    return count / (time.perf_counter() - start)


def section_decoded(setup: Setup, steps: int, warmup: int) -> list[tuple[str, str, str]]:
    cache = str(setup.workdir / "cache")
    loader_rate(setup, cache)  # fill the cache (a first epoch)
    off, on = loader_rate(setup, None), loader_rate(setup, cache)
    train_off = framework_train(setup, steps, warmup)
    train_on = framework_train(setup, steps, warmup, f"data.cache_dir={cache}")
    return [
        ("decoded cache: data loading only, off", f"{off:.1f} img/s", "1.00x"),
        ("decoded cache: data loading only, on", f"{on:.1f} img/s", f"{on / off:.2f}x"),
        ("decoded cache: training, off", f"{train_off:.2f} img/s", "1.00x"),
        ("decoded cache: training, on", f"{train_on:.2f} img/s", f"{train_on / train_off:.3f}x"),
    ]


# ----------------------------------------------------------------------------- features
class EpochLog(Callback):
    def __init__(self) -> None:
        self.start = 0.0
        self.epochs: list[tuple[float, float]] = []  # (seconds since fit start, val/acc)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:  # after the module has logged val/acc
        if not trainer.sanity_checking:
            self.epochs.append((time.perf_counter() - self.start, float(trainer.callback_metrics["val/acc"])))


def linear_probe(setup: Setup, epochs: int, *extra: str) -> EpochLog:
    log = EpochLog()
    cfg = setup.config(
        "probe",
        "finetune=linear_probe",
        f"trainer.max_epochs={epochs}",
        "test=false",
        "model/optimizer=adamw",
        "model.optimizer.lr=1e-2",
        "model/scheduler=cosine",
        "trainer.num_sanity_val_steps=0",
        *extra,
    )
    seed_everything(0)
    datamodule, model, trainer = build(cfg, extra_callbacks=[log])
    trainer.fit(model, datamodule=datamodule)
    return log


def section_features(setup: Setup, epochs: int) -> list[tuple[str, str, str]]:
    variants = {
        "off": ["~callbacks.feature_cache"],
        "on": [],
        "on, with the decoded-image cache": [f"data.cache_dir={setup.workdir / 'probe-cache'}"],
    }
    rows, totals, reached = [], {}, {}
    for label, extra in variants.items():
        log = linear_probe(setup, epochs, *extra)
        totals[label] = log.epochs[-1][0]
        reached[label] = next((t for t, acc in log.epochs if acc >= STUDY_ACCURACY), None)
        best = max(acc for _, acc in log.epochs)
        rows.append(
            (
                f"feature cache {label}: linear probe, s/epoch (mean)",
                f"{totals[label] / epochs:.1f} s",
                f"{totals['off'] / totals[label]:.1f}x",
            )
        )
        # Each ratio from its own measurement: time to the accuracy, not the whole run's time.
        both = reached["off"] is not None and reached[label] is not None
        rows.append(
            (
                f"feature cache {label}: time to val/acc >= {STUDY_ACCURACY:.2%}",
                f"{reached[label]:.0f} s" if reached[label] else f"not reached in {epochs} epochs (best {best:.2%})",
                f"{reached['off'] / reached[label]:.1f}x" if both else "n/a",
            )
        )
    return rows


# ----------------------------------------------------------------------------- workers
def section_workers(setup: Setup, steps: int, warmup: int) -> list[tuple[str, str, str]]:
    rows, base = [], None
    for workers in (0, 1, 2):
        for channels_last in (False, True):
            value = framework_train(
                setup,
                steps,
                warmup,
                f"data.num_workers={workers}",
                f"data.persistent_workers={workers > 0}",
                f"model.channels_last={channels_last}",
            )
            base = base or value
            rows.append(
                (
                    f"workers: num_workers={workers}, channels_last={channels_last}",
                    f"{value:.2f} img/s",
                    f"{value / base:.2f}x",
                )
            )
    return rows


SECTIONS = ("train", "micro", "predict", "stream", "rss", "decoded", "features", "workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="demo posters and a tiny network: seconds, not minutes")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=None, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per comparison")
    parser.add_argument("--probe-epochs", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="predict/stream: this checkpoint (default: trained here)")
    parser.add_argument(
        "--posters", type=Path, default=REAL_POSTERS, help="the real posters' folder (one subfolder per genre)"
    )
    args = parser.parse_args()
    steps = args.steps or (4 if args.smoke else 12)
    warmup = 2
    rounds = args.rounds or (1 if args.smoke else 2)
    probe_epochs = args.probe_epochs or (2 if args.smoke else 20)

    with tempfile.TemporaryDirectory(prefix="genre-bench-") as workdir:
        setup = Setup(args.smoke, Path(workdir), args.posters)
        print(
            f"# genre-lightning benchmark: {setup.description}; torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        sections = {
            "train": lambda: section_train(setup, steps, warmup, rounds),
            "micro": lambda: section_micro(setup, steps, warmup, rounds),
            "predict": lambda: section_predict(setup, rounds, args.checkpoint),
            "stream": lambda: section_stream(setup, args.checkpoint),
            "rss": lambda: section_rss(setup, steps),
            "decoded": lambda: section_decoded(setup, steps, warmup),
            "features": lambda: section_features(setup, probe_epochs),
            "workers": lambda: section_workers(setup, steps, warmup),
        }
        table = []
        for name in args.sections:
            started = time.perf_counter()
            rows = sections[name]()
            print(f"# {name}: {time.perf_counter() - started:.0f} s", flush=True)
            table += rows
        print("\n" + markdown_table(("measurement", "value", "ratio"), table))


if __name__ == "__main__":
    main()
