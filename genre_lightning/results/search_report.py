"""genre-report on a cross-validated search folder (``launch/search.py`` wrote it).

Every number is recomputed from the trials' fold runs (their ``test_predictions.csv``), not taken from
the study: the table of trials (out-of-fold estimate with its 95% interval on the posters each trial
ran, paired difference to the winner, folds run, pruned or not, wall time), what pruning saved (or,
for a search that ran without pruning, what the paired rule would have saved and whether it would
have stopped a trial that finished ahead), Optuna's optimisation history and parameter importances as
figures, and the confirmation: the winner and the starting recipe refitted and tested on the fixed
test part, paired, beside the winner's out-of-fold estimate (the gap between the two is the winner's
curse made visible).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genre_lightning.results.bootstrap import group_weights, interval
from genre_lightning.results.recipe_tables import interval_text, recipe_markdown, recipe_table
from genre_lightning.results.recipes import (
    PREDICTIONS_FILE,
    Job,
    classes_of,
    groups_of_split,
    read_job,
    read_overrides,
    read_predictions,
    scores,
)
from genre_lightning.results.search_scores import (
    OBJECTIVES,
    out_of_fold_scores,
    paired_gap,
    replay_pruning,
    restrict,
)
from genre_lightning.results.search_storage import storage_for
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError

SEARCH_FILE = "search.json"
BASELINE = "baseline"
CONFIRM = "confirm"
TRIALS_FILE = "search_trials.csv"
HISTORY_FIGURE = "search_history.png"
IMPORTANCE_FIGURE = "search_importances.png"


def trial_folder(number: int) -> str:
    return f"trial_{number:04d}"


def is_search(folder: Path) -> bool:
    return (folder / SEARCH_FILE).is_file()


def _fold_jobs(folder: Path) -> list[Job]:
    """A trial's finished fold runs (with metrics and predictions), in fold order."""
    folds = sorted(folder.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    return [read_job(f) for f in folds if (f / "metrics.json").is_file() and (f / PREDICTIONS_FILE).is_file()]


def report_search(folder: Path, samples: int, seed: int, compare_with: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Write ``report.md`` and ``search_trials.csv`` (and the figures) into the search folder; print it.
    ``compare_with``: run folders tested on the same fixed test part (say a ``data.fold=all`` refit of the
    recipe in use) that join the confirmation table, paired with the refits on the same posters."""
    summary = json.loads((folder / SEARCH_FILE).read_text())
    metric, folds = summary["metric"], int(summary["folds"])
    groups = groups_of_split(folder)
    rows = [_row(folder, BASELINE, "baseline", "COMPLETE", "(the command line's recipe)", folds)]
    for trial in summary["trials"]:
        if trial.get("repeat_of") is not None:  # the same values as an earlier trial: not run again
            continue
        label = " ".join(trial.get("overrides") or []) or "—"
        rows.append(
            _row(
                folder,
                trial["folder"] or trial_folder(trial["number"]),
                str(trial["number"]),
                trial["state"],
                label,
                folds,
            )
        )
    rows = [r for r in rows if r is not None]
    table = _score_rows(rows, metric, groups, samples, seed)
    table.drop(columns=["frames"]).to_csv(folder / TRIALS_FILE, index=False)
    lines = [
        f"# Search `{summary['study_name']}`: {len(summary['trials'])} trials, {folds}-fold cross-validation\n",
        f"Objective: out-of-fold {metric} ({OBJECTIVES[metric][1]}); pruner: {summary['pruner']}. "
        f"Recipe of the command line: `{' '.join(summary['recipe'])}`\n",
        _trials_markdown(table, metric) + _repeats(summary),
        _pruning_markdown(table, summary, groups, folds),
        _figures(summary, folder),
        _confirmation_markdown(folder, table, groups, samples, seed, [Path(p) for p in compare_with]),
    ]
    markdown = "\n".join(line for line in lines if line) + "\n"
    (folder / "report.md").write_text(markdown)
    print(markdown)
    print(f"Wrote {folder / 'report.md'} and {folder / TRIALS_FILE}")
    return table


def _repeats(summary: dict) -> str:
    repeats = [t for t in summary["trials"] if t.get("repeat_of") is not None]
    if not repeats:
        return ""
    pairs = ", ".join(f"{t['number']} (= {t['repeat_of']})" for t in repeats)
    return f"\nTrials whose values an earlier trial had run, given its value without running: {pairs}.\n"


def _row(folder: Path, sub: str, name: str, state: str, label: str, folds: int) -> dict[str, Any] | None:
    jobs = _fold_jobs(folder / sub)
    if not jobs:
        return {"trial": name, "state": state, "recipe": label, "folds_run": 0, "frames": [], "wall_min": 0.0}
    wall = sum(float(j.metrics.get("wall_s") or 0) for j in jobs) / 60
    return {
        "trial": name,
        "state": state,
        "recipe": label,
        "folds_run": len(jobs),
        "frames": [read_predictions(j) for j in jobs],
        "wall_min": round(wall, 2),
    }


def _score_rows(rows: list[dict], metric: str, groups: dict, samples: int, seed: int) -> pd.DataFrame:
    """Each trial's out-of-fold estimate with its interval, on the posters of the folds it ran."""
    function, direction = OBJECTIVES[metric]
    for row in rows:
        if not row["frames"]:
            continue
        scored, posters, _ = out_of_fold_scores(row["frames"])
        weights = group_weights([groups.get(p, p) for p in posters], samples, seed)
        once = np.ones((1, len(posters)))
        for name in dict.fromkeys([metric, "top1", "logloss"]):
            f = OBJECTIVES[name][0]
            value = interval(f(scored, once)[0], f(scored, weights))
            row[name], row[f"{name}_low"], row[f"{name}_high"] = value.estimate, value.low, value.high
    table = pd.DataFrame(rows)
    full = table[(table["folds_run"] == table["folds_run"].max()) & (table["state"] == "COMPLETE")]
    best = full.sort_values(metric, ascending=direction == "minimize").iloc[0]
    table["winner"] = table["trial"] == best["trial"]
    best_scores, best_posters, _ = out_of_fold_scores(best["frames"])
    for i, row in table.iterrows():
        if not row["frames"] or row["trial"] == best["trial"]:
            continue
        scored, posters, _ = out_of_fold_scores(row["frames"])
        gap = paired_gap(
            scored,
            restrict(best_scores, best_posters, posters),
            [groups.get(p, p) for p in posters],
            metric,
            samples,
            seed,
        )
        table.loc[i, ["gap", "gap_low", "gap_high"]] = [
            gap.difference.estimate,
            gap.difference.low,
            gap.difference.high,
        ]
    return table


def _trials_markdown(table: pd.DataFrame, metric: str) -> str:
    scale = 1.0 if metric == "logloss" else 100.0
    digits = 3 if metric == "logloss" else 1
    lines = [
        f"| trial | state | recipe | folds | {metric} out of fold | top-1 | worse than the winner by (paired) | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        if not row["folds_run"]:
            lines.append(f"| {row['trial']} | {row['state']} | `{row['recipe']}` | 0 | — | — | — | — |")
            continue
        estimate = interval_text(row, metric, scale, digits)
        gap = "winner" if row["winner"] else interval_text(row, "gap", scale, digits)
        lines.append(
            f"| {row['trial']} | {row['state']} | `{row['recipe']}` | {row['folds_run']} | {estimate} | "
            f"{interval_text(row, 'top1')} | {gap} | {row['wall_min']:.1f} min |"
        )
    lines.append(
        "\nEach estimate is on the posters of the folds that trial ran (a pruned trial: fewer), with its 95% "
        "bootstrap interval over duplicate groups; the gap is paired with the winner on those same posters "
        "(positive: worse)."
    )
    return "\n".join(lines) + "\n"


def _pruning_markdown(table: pd.DataFrame, summary: dict, groups: dict, folds: int) -> str:
    trials = table[table["trial"] != BASELINE]
    pruned = trials[trials["state"] == "PRUNED"]
    run = trials["folds_run"].sum()
    lines = ["## Pruning\n"]
    if len(pruned):
        per_fold = [r["wall_min"] / r["folds_run"] for _, r in trials.iterrows() if r["folds_run"]]
        skipped = int((folds - pruned["folds_run"]).sum())
        saved = skipped * float(np.mean(per_fold))
        lines.append(
            f"{len(pruned)} of {len(trials)} trials were stopped early, after {pruned['folds_run'].mean():.1f} "
            f"folds on average: {skipped} fold runs not run, about {saved:.1f} min at the search's mean fold time "
            f"({skipped / (run + skipped):.0%} of the fold runs a search without pruning would have made)."
        )
    finished = {int(r["trial"]): r["frames"] for _, r in trials.iterrows() if r["folds_run"] == folds}
    if summary["pruner"] in ("none", "NopPruner") and len(finished) > 1:
        replayed = replay_pruning(finished, groups, summary["metric"])
        stopped = [r for r in replayed if r.stopped_after is not None]
        saved = sum(folds - r.stopped_after for r in stopped)
        ahead = [r.trial for r in stopped if r.finished_ahead]
        lines.append(
            f"This search ran every trial to the end. Replayed on it, the paired rule would have stopped "
            f"{len(stopped)} of {len(replayed)} trials, saving {saved} of {folds * len(replayed)} fold runs; "
            f"{len(ahead)} of the stopped trials finished ahead of the trial they were compared with"
            + (f" (trials {', '.join(map(str, ahead))})." if ahead else ".")
        )
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _figures(summary: dict, folder: Path) -> str:
    """Optuna's optimisation history and parameter importances (its matplotlib plots), from the study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=summary["study_name"], storage=storage_for(summary["storage"], folder))
    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, plot in (
            (HISTORY_FIGURE, plots.plot_optimization_history),
            (IMPORTANCE_FIGURE, plots.plot_param_importances),
        ):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # importances need two finished trials that differ
                made.append(f"{name}: not drawn ({str(error).splitlines()[0]})")
                continue
            axes.figure.savefig(folder / name, dpi=110, bbox_inches="tight")
            plt.close(axes.figure)
            made.append(f"![{name}]({name})")
    return "## Figures\n\n" + "\n\n".join(made) + "\n"


def _confirmation_markdown(
    folder: Path, table: pd.DataFrame, groups: dict, samples: int, seed: int, compare_with: list[Path]
) -> str:
    refits = {name: folder / CONFIRM / name for name in ("winner", "baseline")}
    tested = {n: f for n, f in refits.items() if _is_tested(f)}
    if len(tested) < 2:
        if compare_with:
            raise ConfigError(
                "compare_with",
                str(compare_with[0]),
                "left out until the search has ended: its refits are the confirmation that other runs join",
            )
        return (
            "## Confirmation\n\nNot made: the winner and the starting recipe are refitted and tested on the fixed "
            "test part when the search ends, with data.cv_test_fraction > 0.\n"
        )
    frames = {n: read_csv(f / "test_predictions.csv") for n, f in tested.items()}
    posters = sorted(frames["winner"]["file_path"])
    classes = classes_of(frames["winner"])
    winner = table[table["winner"]].iloc[0]
    names = {"winner": f"winner (trial {winner['trial']}), refit", "baseline": "starting recipe, refit"}
    scored = {names[n]: scores([frame], classes, posters) for n, frame in frames.items()}
    for run in compare_with:
        scored[f"{run} (compare_with)"] = scores([_tested_on(run, posters, classes)], classes, posters)
    confirmed = recipe_table(scored, posters, groups, classes, samples, seed)
    confirmed.to_csv(folder / "search_confirmation.csv", index=False)
    return (
        f"## Confirmation on the fixed test part ({len(posters)} posters no trial was scored on)\n\n"
        + recipe_markdown(confirmed)
        + f"\nThe winner's out-of-fold top-1 in the search: {interval_text(winner, 'top1')}; on the fixed "
        "test part above. The search picked the best of its trials on the same folds, so its out-of-fold figure is "
        'optimistic; the refits\' paired difference on unseen posters is the one to trust ("better" only where '
        "its interval excludes 0).\n\n" + _ship(tested["winner"])
    )


def _is_tested(run: Path) -> bool:
    """A finished run folder with its test predictions (a refit, or a ``compare_with`` run)."""
    return (run / "metrics.json").is_file() and (run / "test_predictions.csv").is_file()


def _tested_on(run: Path, posters: list[str], classes: list[str]) -> pd.DataFrame:
    """A ``compare_with`` run's test predictions, refused in one line unless they are of the same genres on
    exactly the search's fixed test part (a paired comparison needs the same posters)."""
    if not _is_tested(run):
        raise ConfigError(
            "compare_with", str(run), "a run folder holding metrics.json and test_predictions.csv (a finished run)"
        )
    frame = read_csv(run / "test_predictions.csv")
    if classes_of(frame) != classes:
        raise ConfigError("compare_with", str(run), f"a run of the search's genres {classes}, not {classes_of(frame)}")
    tested = set(frame["file_path"])
    if tested != set(posters):
        raise ConfigError(
            "compare_with",
            str(run),
            f"a run tested on the search's {len(posters)} fixed-test posters, not on {len(tested)} "
            f"({len(tested & set(posters))} in common): train it with the search's data settings and data.fold=all",
        )
    return frame


def _ship(refit: Path) -> str:
    """The commands that remake and ship the winner."""
    checkpoint = json.loads((refit / "metrics.json").read_text()).get("best_ckpt_path")
    command = " ".join(f"{k}={v}" for k, v in (read_overrides(refit) or {}).items())
    return (
        "Ship the winner: its refit (trained on every poster outside the test part) is\n\n"
        f"    {checkpoint}\n\nmade again by\n\n    genre-train {command}\n\n"
        f"and predicted or exported like any checkpoint:\n\n    genre-predict ckpt_path={checkpoint} input=<posters>\n"
        f"    genre-export ckpt_path={checkpoint} format=onnx\n"
    )
