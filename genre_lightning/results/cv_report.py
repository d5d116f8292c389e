"""genre-report on a cross-validation: out-of-fold predictions, intervals, paired comparisons, and the
models trained on every fold.

Every fold run (``data.fold=i``) predicted the fold it held out (its ``test_predictions.csv``). For
each recipe (and seed) the folds are concatenated into ``oof_predictions.csv``: every poster exactly
once (a missing fold, or a poster in two folds' predictions, stops the report in one line). Those
out-of-fold predictions are scored like one test set of every poster: top-1, top-2, macro-F1,
per-genre F1 and ECE with 95% bootstrap intervals over duplicate groups, and every recipe against
the best one on the same posters (paired bootstrap interval, McNemar's p).

Runs trained on every fold (``data.fold=all`` refits, ``genre-ensemble`` of the fold checkpoints) are
scored on the fixed test part (``data.cv_test_fraction``), when there is one, in a table of their own.
The report also prints how to make the final model of the best recipe both ways.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.data.folds import ALL_FOLDS
from genre_lightning.results.recipe_tables import genre_f1_markdown, median, recipe_markdown, recipe_table
from genre_lightning.results.recipes import Job, classes_of, duplicate_groups, read_predictions, scores
from genre_lightning.utils.csvio import write_csv
from genre_lightning.utils.errors import ConfigError

OOF_FILE = "oof_predictions.csv"
FINAL_FILE = "final_models.csv"
# The refit's own settings, which replace its recipe's (e.g. its trainer.max_epochs).
REFIT_SETTINGS = ("data.fold", "seed", "trainer.max_epochs", "model.temperature", "finetune.probe_c_grid", "test")


def fold_runs(
    jobs: Sequence[Job], folder: Path, incomplete: str = "fail"
) -> tuple[dict[tuple[str, str], list[Job]], list[str]]:
    """(recipe, seed) -> its fold jobs in fold order. A missing or repeated fold is a one-line error
    (``incomplete="fail"``); while a cross-validation still runs, ``"skip"`` leaves such runs out and
    ``"common"`` scores every run on the folds all of them finished (interim, paired numbers on fewer
    posters). What was left out is said in the returned notes."""
    runs: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        runs[(job.recipe, job.seed)].append(job)
    notes = []
    count = int(jobs[0].cross_validation["folds"])
    for (recipe, seed), members in list(runs.items()):
        found = Counter(job.fold for job in members)
        missing = [str(k) for k in range(count) if str(k) not in found]
        twice = sorted(f for f, n in found.items() if n > 1)
        which = f"`{recipe}`" + (f" (seed {seed})" if seed != "(default)" else "")
        if twice or (missing and incomplete == "fail"):
            problem = f"fold(s) {', '.join(twice)} run twice" if twice else f"fold(s) {', '.join(missing)} missing"
            raise ConfigError(
                "sweep_dir",
                str(folder),
                f"every fold of each recipe exactly once: {which} has {problem} of {count} "
                "(incomplete=skip leaves such runs out; incomplete=common compares on the folds all runs have)",
            )
        if missing and incomplete == "skip":
            notes.append(f"Left out (incomplete=skip): {which} has fold(s) {', '.join(missing)} missing of {count}.")
            del runs[(recipe, seed)]
            continue
        members.sort(key=lambda job: int(job.fold))
    if incomplete == "common" and runs:
        common = set.intersection(*({job.fold for job in members} for members in runs.values()))
        if len(common) < count:
            kept = ", ".join(sorted(common, key=int)) or "none"
            notes.append(
                f"Interim (incomplete=common): every recipe is scored on fold(s) {kept} of {count}, the folds all of "
                "them finished; the others are left out until every recipe has them."
            )
        runs = {key: [job for job in members if job.fold in common] for key, members in runs.items()}
        runs = {key: members for key, members in runs.items() if members}
    return dict(runs), notes


def out_of_fold(runs: dict[tuple[str, str], list[Job]]) -> dict[tuple[str, str], pd.DataFrame]:
    """Each run's folds concatenated: every poster once (a poster in two folds is a one-line error)."""
    result = {}
    for (recipe, seed), members in runs.items():
        frames = [read_predictions(job).assign(fold=job.fold) for job in members]
        frame = pd.concat(frames, ignore_index=True)
        repeated = frame[frame["file_path"].duplicated(keep=False)]
        if len(repeated):
            poster = repeated["file_path"].iloc[0]
            folds = ", ".join(repeated.loc[repeated["file_path"] == poster, "fold"])
            raise ConfigError(
                "sweep_dir",
                str(members[0].folder.parent),
                f"fold runs that predict each poster once: {poster} is in the predictions of folds {folds} "
                f"of `{recipe}`",
            )
        result[(recipe, seed)] = frame
    return result


def cv_sections(
    jobs: Sequence[Job], folder: Path, samples: int, seed: int, incomplete: str = "fail"
) -> tuple[str, pd.DataFrame]:
    """The Markdown of the cross-validation sections, and the out-of-fold table (written as report.csv)."""
    fold_jobs = [j for j in jobs if j.metrics and j.fold not in (None, ALL_FOLDS)]
    final_jobs = [j for j in jobs if j.metrics and j.fold == ALL_FOLDS]
    if not fold_jobs:  # refits and fold ensembles only
        return _final_models(final_jobs, folder, duplicate_groups(final_jobs), samples, seed), pd.DataFrame()
    runs, left_out = fold_runs(fold_jobs, folder, incomplete)
    if not runs:
        raise ConfigError("sweep_dir", str(folder), "at least one recipe with every fold finished")
    oof = out_of_fold(runs)
    write_csv(
        pd.concat([f.assign(recipe=r, seed=s) for (r, s), f in oof.items()], ignore_index=True).pipe(_front),
        folder / OOF_FILE,
    )
    first = next(iter(oof.values()))
    if "label" not in first.columns:  # multi-label runs: their metrics are not top-1 of one genre
        note = f"Out-of-fold predictions of {len(oof)} multi-label run(s) written to {OOF_FILE}; the interval "
        note += "table and the paired comparisons are for single-label runs."
        return note + "\n", pd.DataFrame({"recipe": sorted({r for r, _ in oof})})
    classes = classes_of(first)
    groups = duplicate_groups(fold_jobs)
    table, notes = _scored_table(oof, classes, groups, samples, seed)
    wall = {recipe: _wall(members) for (recipe, _), members in runs.items()}
    lines = [
        f"## Out of fold ({int(fold_jobs[0].cross_validation['folds'])}-fold cross-validation, "
        f"{table['posters'].iloc[0]} posters)\n",
        recipe_markdown(table, {"wall (all folds)": [wall[r] for r in table["recipe"]]}),
        genre_f1_markdown(table, classes),
        "Each fold run predicted the fold it held out; its best epoch, probe C and temperature were chosen "
        "on its inner validation split (data.cv_val_fraction of its training folds), never on those posters. "
        "Metrics in percent (ECE as a fraction) with 95% bootstrap intervals, resampling posters by duplicate "
        f"group ({samples} samples); Δ: paired difference to the best recipe on the same posters, with McNemar's "
        "exact p; an interval that contains 0 is not distinguishable. Runs: seeds, whose metrics are averaged.",
        *notes,
        *left_out,
        _final_model_commands(runs, table.loc[0, "recipe"])
        if all(len(members) == int(members[0].cross_validation["folds"]) for members in runs.values())
        else "The final-model commands are printed once every fold has finished.",
    ]
    if final_jobs:
        lines.append(_final_models(final_jobs, folder, groups, samples, seed))
    return "\n".join(lines) + "\n", table


def _front(frame: pd.DataFrame) -> pd.DataFrame:
    first = ["recipe", "seed", "fold"]
    return frame[first + [c for c in frame.columns if c not in first]]


def _scored_table(
    predictions: dict[tuple[str, str], pd.DataFrame], classes: list[str], groups: dict, samples: int, seed: int
) -> tuple[pd.DataFrame, list[str]]:
    """The recipe table over the posters most recipes share (others are named in a note)."""
    by_recipe: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for (recipe, _), frame in predictions.items():
        by_recipe[recipe].append(frame)
    poster_sets = {r: frozenset(f["file_path"]) for r, frames in by_recipe.items() for f in frames[:1]}
    common, _ = Counter(poster_sets.values()).most_common(1)[0]
    posters = sorted(common)
    apart = sorted(r for r, s in poster_sets.items() if s != common)
    scored = {r: scores(frames, classes, posters) for r, frames in by_recipe.items() if r not in apart}
    notes = []
    if apart:
        notes.append(
            "Not compared (other posters: another fold assignment or fixed test part): "
            + ", ".join(f"`{r}`" for r in apart)
        )
    return recipe_table(scored, posters, groups, classes, samples, seed), notes


def _wall(members: Sequence[Job]) -> str:
    seconds = [job.metrics.get("wall_s") for job in members]
    return "—" if None in seconds else f"{sum(seconds) / 60:.1f} min"


def _best_epoch(job: Job) -> int | None:
    match = re.search(r"epoch(\d+)", Path(job.metrics.get("best_ckpt_path") or "").name)
    return int(match.group(1)) if match else None


def _chosen_c(job: Job) -> float | None:
    probe = job.folder / "probe.json"
    return json.loads(probe.read_text()).get("chosen_C") if probe.is_file() else None


def refit_overrides(members: Sequence[Job]) -> list[str]:
    """The command-line overrides that refit a recipe on every poster (``data.fold=all``) with the epoch
    count (median best epoch), temperature and probe C its fold runs chose."""
    epochs = median([e + 1 for e in map(_best_epoch, members) if e is not None])
    temperature = median([job.metrics.get("temperature") for job in members])
    c_values = [c for c in map(_chosen_c, members) if c is not None]
    test_fraction = float(members[0].cross_validation.get("cv_test_fraction") or 0)
    refit = [f"{k}={v}" for k, v in members[0].overrides.items() if k.lstrip("+~") not in REFIT_SETTINGS]
    refit.append("data.fold=all")
    if epochs is not None:
        refit.append(f"trainer.max_epochs={round(epochs)}")
    if temperature is not None:
        refit.append(f"model.temperature={temperature:.4g}")
    if c_values:
        refit.append(f"finetune.probe_c_grid=[{Counter(c_values).most_common(1)[0][0]:g}]")
    if not test_fraction:
        refit.append("test=false")
    return refit


def _final_model_commands(runs: dict[tuple[str, str], list[Job]], best: str) -> str:
    """How to make the best recipe's final model: the fold ensemble, or the refit with what the CV chose."""
    members = next(m for (recipe, _), m in runs.items() if recipe == best)
    if any(job.overrides.get("ckpt_paths") for job in members):
        return f"\nThe best recipe, `{best}`, ensembles per-fold runs: its final model ensembles their final models.\n"
    test_fraction = float(members[0].cross_validation.get("cv_test_fraction") or 0)
    refit = refit_overrides(members)
    checkpoints = ",".join(str(job.metrics.get("best_ckpt_path")) for job in members)
    return (
        f"\nFinal model of the best recipe, `{best}`: the ensemble of its fold checkpoints\n\n"
        f"    genre-ensemble 'ckpt_paths=[{checkpoints}]'\n\n"
        "or the refit on every poster with the epoch count (median best epoch), temperature and probe C "
        "its folds chose:\n\n"
        f"    genre-train {' '.join(refit)}\n"
        + (
            ""
            if test_fraction
            else "\nWithout a fixed test part (data.cv_test_fraction=0) neither can be tested: "
            "every poster trained them.\n"
        )
    )


def _final_models(jobs: Sequence[Job], folder: Path, groups: dict, samples: int, seed: int) -> str:
    """Refits and fold ensembles on the fixed test part."""
    tested = [j for j in jobs if (j.metrics.get("test") or {}) and j.predictions_path.is_file()]
    if not tested:
        return (
            "\nModels trained on every fold: "
            + ", ".join(j.name for j in jobs)
            + " (none was tested: no fixed test part)\n"
        )
    predictions = {(j.recipe, j.seed): read_predictions(j) for j in tested}
    classes = classes_of(next(iter(predictions.values())))
    table, notes = _scored_table(predictions, classes, groups, samples, seed)
    table.to_csv(folder / FINAL_FILE, index=False)
    return "\n".join(
        [
            f"\n## Trained on every fold, tested on the fixed test part ({table['posters'].iloc[0]} posters)\n",
            recipe_markdown(table),
            *notes,
        ]
    )
