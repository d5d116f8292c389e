"""A model card (``genre-export format=card``): the ``README.md`` a trained model travels with.

Filled from what the run folder holds beside the checkpoint (``metrics.json``, ``config.yaml``,
``data_report.json``, ``annotations.csv``) and from the checkpoint itself (genres, task, thresholds,
a calibration temperature where one is stored): intended use, data, per-genre test metrics with the
test-set size, known limits, the environment that made it and the command line that reproduces it.
A model trained on every fold of a cross-validation (a refit, a fold ensemble) carries the
cross-validation's out-of-fold estimate and fold assignment instead of a validation-based story
(``card_sections.py``; docs/provenance.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from genre_lightning.inference import card_sections as sections
from genre_lightning.models.checkpoint_io import file_digest, read_checkpoint
from genre_lightning.models.ensemble import member_tta
from genre_lightning.models.tta import checkpoint_tta
from genre_lightning.utils.errors import ConfigError

DEMO_MANIFEST = "demo_manifest.json"


def model_card(ckpt_path: str | Path, cv_estimate: sections.CvEstimate | None = None) -> str:
    """The card of ``ckpt_path`` as Markdown; its run folder must hold ``metrics.json``. ``cv_estimate``:
    the out-of-fold estimate of a model trained on every fold (``results/cv_estimate.py`` finds it)."""
    ckpt = Path(ckpt_path)
    checkpoint = read_checkpoint(ckpt)
    run = ckpt.resolve().parent.parent
    if not (run / "metrics.json").is_file():
        raise ConfigError("ckpt_path", str(ckpt), "a checkpoint in a run folder with metrics.json (test it first)")
    metrics = json.loads((run / "metrics.json").read_text())
    config = _yaml(run / "config.yaml")
    report = json.loads((run / "data_report.json").read_text()) if (run / "data_report.json").is_file() else {}
    hp = checkpoint["hyper_parameters"]
    classes = list(hp["classes"])
    multilabel = hp.get("task", "single") == "multilabel"
    data_config = _yaml(sections.data_run(run, checkpoint) / "config.yaml")  # an ensemble's: its first member's
    data = data_config.get("data", {}) or {}
    root = data.get("root") or data.get("annotations") or "?"
    if data.get("root"):  # a relative root is relative to the folder the run was started in
        root = str(Path((data_config.get("paths") or {}).get("root_dir", ".")) / str(data["root"]))
    synthetic = bool(data.get("root")) and (Path(root) / DEMO_MANIFEST).is_file()
    test = metrics.get("test", {})
    counts = ((report.get("split") or {}).get("counts") or {}).get("test") or {}
    n_test = _test_size(run, counts)
    every_fold = sections.trained_on_every_fold(metrics)
    members = hp.get("members") or []
    name = backbone_name(hp["backbone"])
    if members:
        name = f"ensemble of {len(members)} {backbone_name(members[0]['backbone'])}"
    split = f"{metrics['cross_validation']['folds']}-fold cross-validation" if every_fold else _fractions(report)
    lines = [
        f"# Model card: {name} movie-poster genre classifier",
        "",
        f"Checkpoint `{ckpt.name}` (SHA-256 `{file_digest(ckpt)}`), genres {', '.join(classes)}, "
        f"{'multi-label (a sigmoid per genre)' if multilabel else 'single-label (softmax)'}; "
        f"trained with genre-lightning (Lightning {checkpoint.get('pytorch-lightning_version', '?')}).",
        f"Test-time augmentation: {_tta(hp)}.",
        "",
        "## Intended use",
        "",
        "Suggesting the genre(s) of a movie poster image to a person who checks them: sorting, search, "
        "catalogue tagging. Not for decisions about people, and not for images other than posters.",
        "",
        "## Data",
        "",
        f"- Source: `{root}`"
        + (" (**synthetic demo posters**, drawn by `genre-train experiment=demo`)" if synthetic else ""),
        f"- Files found {report.get('n_found', '?')}, kept {report.get('n_kept', '?')}, "
        f"skipped {report.get('n_skipped', '?')} (unreadable), split {split}",
        f"- Test split: {n_test} images"
        + (f" ({', '.join(f'{g} {counts[g]}' for g in classes if g in counts)})" if counts else ""),
        f"- Single-genre share: {_single_genre_share(run)}",
        *_distill_lines(metrics),
        "",
        *(
            ["## Cross-validation", "", *sections.cross_validation_lines(metrics, config, cv_estimate), ""]
            if every_fold
            else []
        ),
        "## Test metrics",
        "",
        *_tested_lines(test, classes, counts, n_test, multilabel, every_fold, bool(members)),
        "",
        "## Calibration",
        "",
        f"- Temperature: {_temperature(checkpoint)}",
        f"- Expected calibration error (15 bins): {_number(test.get('test/ece'))}",
        *([f"- Decision thresholds (tuned on val): {_thresholds(checkpoint, classes)}"] if multilabel else []),
        "",
        "## Known limits",
        "",
        *_limits(synthetic, run, n_test, hp),
        "",
        "## Environment",
        "",
        *sections.environment_lines(checkpoint, metrics),
        "",
        "## Reproduce",
        "",
        "```bash",
        *_commands(config, root, ckpt, sections.recorded_command(run, checkpoint, config), run),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(ckpt_path: str | Path, output: str | Path, cv_estimate: sections.CvEstimate | None = None) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(model_card(ckpt_path, cv_estimate), encoding="utf-8")
    return output


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion."""
    if trials == 0:
        return (float("nan"), float("nan"))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def _tested_lines(
    test: Mapping[str, Any],
    classes: list[str],
    counts: Mapping[str, int],
    n_test: int,
    multilabel: bool,
    every_fold: bool,
    ensemble: bool,
) -> list[str]:
    if not (n_test and test):
        return [
            "Not tested: no poster is left that did not train it (data.cv_test_fraction=0)."
            + (" The out-of-fold estimate above stands for it." if every_fold else "")
        ]
    if ensemble:
        which = "The ensemble (its members' calibrated probabilities averaged)"
    elif every_fold:
        which = "The last epoch's checkpoint (trained on every fold: no validation split to choose on)"
    else:
        which = "Best checkpoint by validation accuracy"
    held_out = "posters of the fixed test part" if every_fold else "held-out test images"
    return [
        f"{which}, tested on the {n_test} {held_out}.",
        "",
        *_metric_lines(test, classes, counts, n_test, multilabel),
    ]


def _metric_lines(
    test: Mapping[str, Any], classes: list[str], counts: Mapping[str, int], n_test: int, multilabel: bool
) -> list[str]:
    accuracy = test.get("test/acc")
    lines = []
    if accuracy is not None and n_test:
        low, high = wilson_interval(round(accuracy * n_test), n_test)
        name = "top-1 (any true genre)" if multilabel else "top-1 accuracy"
        lines.append(f"- {name}: **{accuracy:.3f}** (95% Wilson interval {low:.3f}-{high:.3f}, n = {n_test})")
    for key, name in (("test/f1_macro", "macro F1"), ("test/acc_top2", "top-2 accuracy"), ("test/map", "mAP")):
        if key in test:
            lines.append(f"- {name}: {test[key]:.3f}")
    lines += ["", "| genre | test images | precision | recall | F1 |", "|---|---|---|---|---|"]
    for genre in classes:
        cells = [_number(test.get(f"test/{m}/{genre}")) for m in ("precision", "recall", "f1")]
        lines.append(f"| {genre} | {counts.get(genre, '?')} | " + " | ".join(cells) + " |")
    return lines


def _limits(synthetic: bool, run: Path, n_test: int, hp: Mapping[str, Any]) -> list[str]:
    limits = []
    if synthetic:
        limits.append(
            "- **Trained and tested on synthetic demo posters** (coloured shapes and noise): it says nothing "
            "about real posters. Train on real posters before any use."
        )
    limits += [
        f"- The test split has {n_test} images: small differences between models are within the interval above."
        if n_test
        else "- No held-out test: the out-of-fold estimate, where there is one, is the only accuracy figure.",
        "- Real posters often have two or three genres; on the study's 1,070 IMDB posters 94% are filed under "
        "one genre, so a single-label model names one genre, and a multi-label model sees few two-genre "
        f"examples. This run's data: {_single_genre_share(run)}.",
        f"- Only the genres {', '.join(hp['classes'])}: any other genre (drama, animation, ...) is forced into one "
        "of them.",
        "- Posters carry titles, credits and faces: check what the model looks at with "
        "`genre-predict ... explain=true` before trusting it on a new source.",
    ]
    return limits


def _commands(
    config: Mapping[str, Any], root: str, ckpt: Path, recorded: list[str] | None = None, run: Path | None = None
) -> list[str]:
    if recorded and run is not None:  # the run's own command line
        return [
            *sections.reproduce_lines(recorded, run, config),
            f"genre-eval ckpt_path={ckpt}",
            f"genre-export ckpt_path={ckpt} format=card",
        ]
    data = config.get("data", {}) or {}
    model = config.get("model", {}) or {}
    parts = ["genre-train", f"data.root={root}" if data.get("root") else f"data.annotations={root}"]
    parts += [backbone_override(model.get("backbone")), f"seed={config.get('seed')}"]
    if config.get("trainer", {}).get("max_epochs") is not None:
        parts.append(f"trainer.max_epochs={config['trainer']['max_epochs']}")
    return [
        "# its command line was not recorded (a run made through the Python API): an outline of it, with",
        "# its split; the run's full resolved config is config.yaml beside the checkpoint",
        " ".join(parts) + " data.split_file=<run>/annotations.csv",
        f"genre-eval ckpt_path={ckpt}",
        f"genre-export ckpt_path={ckpt} format=card",
    ]


def backbone_name(backbone: str | Sequence[str]) -> str:
    """One backbone's timm name, or a backbone list as the concatenated features it makes."""
    if isinstance(backbone, str):
        return backbone
    return " + ".join(map(str, backbone)) + " (features concatenated)"


def backbone_override(backbone: str | Sequence[str] | None) -> str:
    """The command-line override that names the backbone again (a list quoted for the shell)."""
    if backbone is None or isinstance(backbone, str):
        return f"model.backbone={backbone}"
    return f"'model.backbone=[{','.join(map(str, backbone))}]'"


def _test_size(run: Path, counts: Mapping[str, int]) -> int:
    predictions = run / "test_predictions.csv"
    if predictions.is_file():
        return len(pd.read_csv(predictions, usecols=["file_path"]))
    return int(sum(counts.values())) if counts else 0


def _single_genre_share(run: Path) -> str:
    annotations = run / "annotations.csv"
    if not annotations.is_file():
        return "not recorded"
    frame = pd.read_csv(annotations, keep_default_na=False)
    if "labels" not in frame or frame.empty:
        return "every poster has one genre"
    single = (frame["labels"].astype(str).str.count(r"\|") == 0).mean()
    return f"{single:.0%} of {len(frame)} posters have one genre"


def _distill_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The teacher of a distilled run (``distill.teacher``; metrics.json's ``distill``), if any."""
    taught = metrics.get("distill")
    if not taught:
        return []
    fold = f", its fold {taught['teacher_fold']}" if taught.get("teacher_fold") is not None else ""
    return [
        f"- Distilled from teacher `{taught['checkpoint']}` (SHA-256 `{taught['sha256'][:16]}`{fold}): "
        f"alpha {taught['alpha']}, temperature {taught['temperature']}"
    ]


def _fractions(report: Mapping[str, Any]) -> str:
    fractions = (report.get("split") or {}).get("fractions") or {}
    return "/".join(f"{round(100 * v)}" for v in fractions.values()) + " train/val/test %" if fractions else "?"


def _temperature(checkpoint: Mapping[str, Any]) -> str:
    """A calibration temperature stored in the checkpoint (a hyper-parameter or a ``temperature`` buffer)."""
    value = checkpoint["hyper_parameters"].get("temperature")
    for key, tensor in checkpoint.get("state_dict", {}).items():
        if key.split(".")[-1] == "temperature":
            value = float(tensor.reshape(-1)[0])
    return f"{float(value):.4f} (logits divided by it before the softmax/sigmoid)" if value else "none (not calibrated)"


def _tta(hp: Mapping[str, Any]) -> str:
    """The views evaluation, prediction and the exported network average (``models/tta.py``)."""
    if hp.get("members"):
        return "each member's own: " + "; ".join(member_tta(m).describe() for m in hp["members"])
    return checkpoint_tta(hp).describe()


def _thresholds(checkpoint: Mapping[str, Any], classes: list[str]) -> str:
    tensor = checkpoint.get("state_dict", {}).get("task.tuned_thresholds")
    if tensor is None:
        return "not stored"
    return ", ".join(f"{c} {float(t):.2f}" for c, t in zip(classes, tensor.tolist(), strict=True))


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path.is_file() else {}
