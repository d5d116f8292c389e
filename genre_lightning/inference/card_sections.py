"""The model card's provenance sections: the environment that made the model, the command line that
reproduces it, and, for a model trained on every fold of a cross-validation (a ``data.fold=all``
refit, a fold ensemble), the cross-validation's out-of-fold estimate and fold assignment.

The estimate itself is found by ``results/cv_estimate.py`` (it reads genre-report's output) and
handed to the card as a :class:`CvEstimate`; this module only writes it down.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genre_lightning.models.checkpoint_io import provenance
from genre_lightning.utils.environment import describe_environment

SPLIT_FILE_KEY = "data.split_file"
PROGRAMS = {"train": "genre-train", "ensemble": "genre-ensemble", "eval": "genre-eval"}
# The out-of-fold metrics the card shows (report.csv's columns) and how.
OOF_METRICS = (("top1", "top-1 accuracy", True), ("top2", "top-2 accuracy", True), ("f1_macro", "macro F1", True))


@dataclass
class CvEstimate:
    """A cross-validation's out-of-fold estimate of one recipe (a row of genre-report's ``report.csv``)
    and the fold assignment it was made on; ``reason`` instead when none was found."""

    folds: int | None = None
    fold_digest: str | None = None
    split_seed: Any = None
    recipe: str | None = None
    runs: int | None = None
    posters: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # report.csv columns: top1, top1_low, top1_high, ...
    report: str | None = None
    fold_runs: list[str] = field(default_factory=list)
    reason: str | None = None


def trained_on_every_fold(metrics: Mapping[str, Any]) -> bool:
    """A refit (``data.fold=all``) or an ensemble of fold runs: no poster outside the fixed test part is unseen."""
    return str((metrics.get("cross_validation") or {}).get("fold")) == "all"


def data_run(run: Path, checkpoint: Mapping[str, Any]) -> Path:
    """The run folder whose config names the model's data: an ensemble's first member's (genre-ensemble
    takes its posters from its members), else the model's own."""
    members = checkpoint.get("ensemble_members") or []
    return Path(members[0]).parent.parent if members and Path(members[0]).is_file() else run


def environment_lines(checkpoint: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """The environment stored in the checkpoint (else in ``metrics.json``), as Markdown lines."""
    env = provenance(checkpoint).get("environment") or metrics.get("environment")
    if not env:
        return ["Not recorded (a checkpoint written before genre-lightning 0.3 records no environment)."]
    return describe_environment(env)


def cross_validation_lines(
    metrics: Mapping[str, Any], config: Mapping[str, Any], estimate: CvEstimate | None
) -> list[str]:
    """The fold assignment of a model trained on every fold, and the out-of-fold estimate that stands for it."""
    cv = metrics.get("cross_validation") or {}
    split_seed = (config.get("data") or {}).get("split_seed")
    if estimate is not None and estimate.split_seed is not None:
        split_seed = estimate.split_seed
    ensemble = bool(metrics.get("ensemble_members"))
    what = (
        f"the ensemble of the {len(metrics['ensemble_members'])} fold runs"
        if ensemble
        else "the refit on every poster outside the fixed test part (data.fold=all)"
    )
    lines = [
        f"This model is {what} of a {cv.get('folds', '?')}-fold cross-validation: every poster it could be scored "
        "on trained it, so its accuracy on new posters is estimated out of fold: each poster predicted by "
        "the fold run that did not train on it, for the same recipe.",
        "",
        f"- Fold assignment: {cv.get('folds', '?')} folds, data.split_seed={split_seed}, assignment digest "
        f"`{cv.get('fold_digest', '?')}` (the `fold` column of the run's annotations.csv)",
    ]
    if estimate is None or estimate.reason:
        reason = estimate.reason if estimate is not None else "no cross-validation report was looked for"
        return [
            *lines,
            f"- **No out-of-fold estimate found**: {reason}. Run `genre-report sweep_dir=<the cross-validation's "
            "sweep folder>`, then `genre-export ckpt_path=... format=card cv_report=<that folder>`.",
        ]
    lines.append(
        f"- Out of fold: recipe `{estimate.recipe}`, {estimate.runs} run(s) (seeds averaged), {estimate.posters} "
        f"posters, from `{estimate.report}`"
    )
    for key, name, percent in OOF_METRICS:
        if key in estimate.metrics:
            value, low, high = (estimate.metrics.get(f"{key}{end}") for end in ("", "_low", "_high"))
            scale = 100 if percent else 1
            lines.append(
                f"- Out-of-fold {name}: **{scale * value:.1f}%** (95% bootstrap interval "
                f"{scale * low:.1f}-{scale * high:.1f}%)"
            )
    if "ece" in estimate.metrics:
        m = estimate.metrics
        lines.append(
            f"- Out-of-fold ECE: {m['ece']:.3f} (95% bootstrap interval {m['ece_low']:.3f}-{m['ece_high']:.3f})"
        )
    if estimate.fold_runs:
        lines.append("- Fold runs: " + ", ".join(f"`{name}`" for name in estimate.fold_runs))
    return lines


def recorded_command(run: Path, checkpoint: Mapping[str, Any], config: Mapping[str, Any]) -> list[str] | None:
    """The run's program and Hydra overrides as typed (``.hydra/overrides.yaml``, else the checkpoint's
    record); None when neither has them (a run made through the Python API)."""
    import yaml

    record = provenance(checkpoint)
    program = record.get("program") or PROGRAMS.get(str(config.get("task_name")), "genre-train")
    overrides_file = run / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        return [program, *map(str, yaml.safe_load(overrides_file.read_text()) or [])]
    if record.get("overrides"):
        return [program, *map(str, record["overrides"])]
    return None


def reproduce_lines(command: Sequence[str], run: Path, config: Mapping[str, Any]) -> list[str]:
    """The recorded command, with ``data.split_file`` set to the run's own ``annotations.csv`` (the same
    split, or fold assignment) for a training run."""
    program, *overrides = command
    if program == "genre-train":
        overrides = [o for o in overrides if o.lstrip("+~").partition("=")[0] != SPLIT_FILE_KEY]
        overrides.append(f"{SPLIT_FILE_KEY}={(run / 'annotations.csv').resolve()}")
    started = (config.get("paths") or {}).get("root_dir")
    return [
        f"# the run's own command line (.hydra/overrides.yaml); started in {started or '?'}: relative paths are",
        "# relative to it; the configs' defaults are those of the code recorded under Environment",
        " ".join([program, *(shlex.quote(o) for o in overrides)]),
    ]
