"""The cross-validated search: Optuna asks for a recipe, every fold of it runs, the out-of-fold metric answers.

``genre-train -m hparams_search=<preset> data.folds=K ...`` runs it (the sweeper is
``hydra_plugins.genre_lightning_search.CrossValidatedSearch``; the presets are in conf/hparams_search/).
In the search folder (``hydra.sweep.dir``, named after the study so that the same command finds it again):

* ``baseline/fold_<k>``: the recipe of the command line itself, on every fold: the first trial to beat;
* ``trial_<n>/fold_<k>``: each trial's fold runs (its full config in ``.hydra/``), launched fold by fold
  for a batch of ``n_jobs`` trials at a time, in parallel where the launcher runs jobs in parallel
  (``hydra/launcher=slurm``); after each fold a trial reports its running out-of-fold value and may be
  stopped (``results/search_scores.py``: the paired rule, or any Optuna pruner);
* ``confirm/winner`` and ``confirm/baseline``: both refitted on every poster outside the fixed test part
  (``data.cv_test_fraction``) and tested on it: posters the search never scored a trial on;
* ``search.json``: what happened, for ``genre-report sweep_dir=<search folder>``; ``study.journal``: the study.

A fold run that finished is never run again: a search killed at any point and started again with the
same command resumes the trial it was running, from the folds it had finished.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobStatus
from omegaconf import DictConfig
from optuna.trial import TrialState  # the search is Optuna's: imported only when a search runs

from genre_lightning.data.annotations import ANNOTATIONS_FILE, fold_digest
from genre_lightning.launch.search_checks import PRUNERS, check_search
from genre_lightning.launch.search_space import SearchSpace, as_overrides, is_the_recipe_of, merged
from genre_lightning.launch.search_study import check_fold_digest, one_sweeper, open_study, storage_for, trial_records
from genre_lightning.results.cv_report import refit_overrides
from genre_lightning.results.recipes import Job, groups_of_split, read_job, read_predictions
from genre_lightning.results.search_report import BASELINE, CONFIRM, SEARCH_FILE, trial_folder
from genre_lightning.results.search_scores import (
    objective_direction,
    objective_value,
    out_of_fold_scores,
    paired_gap,
    pruning_level,
    restrict,
)
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import find_user_error

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """``hydra.sweeper.*`` (conf/hydra/sweeper/cv_search.yaml explains each)."""

    study_name: str
    storage: str | None = None
    metric: str = "logloss"
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = None
    pruner: Any = "paired"
    min_folds: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    conditional: dict[str, Any] = field(default_factory=dict)
    confirm: bool = True


@dataclass
class FoldResult:
    job: Job
    predictions: pd.DataFrame


@dataclass
class TrialRun:
    """A trial in progress: its Optuna trial, overrides, folder and finished folds."""

    trial: Any
    overrides: list[str]
    folder: str
    folds: dict[int, FoldResult] = field(default_factory=dict)

    def fold_frames(self) -> list[pd.DataFrame]:
        return [self.folds[k].predictions for k in sorted(self.folds)]

    def value(self, metric: str) -> float:
        """The out-of-fold ``metric`` of the folds it has finished."""
        return objective_value(out_of_fold_scores(self.fold_frames())[0], metric)


class Search:
    def __init__(self, config: DictConfig, launcher: Any, config_loader: Any, settings: SearchSettings) -> None:
        self.config, self.launcher, self.config_loader, self.settings = config, launcher, config_loader, settings
        self.folder = Path(config.hydra.sweep.dir)
        self.folds = config.data.get("folds")
        self.next_job = 0
        self.best_frames: dict[str, list[pd.DataFrame]] = {}

    # -- the search -------------------------------------------------------------------------------------
    def run(self, arguments: Sequence[str]) -> dict[str, Any]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs what it does itself
        space = check_search(self.config, self.settings, arguments, self.config_loader)
        self.base = [a for a in arguments if not a.startswith("hydra.")]
        s = self.settings
        direction = objective_direction(s.metric)
        signature = {"metric": s.metric, "space": space.describe(), "recipe": sorted(self.base), "folds": self.folds}
        pruner = optuna.pruners.NopPruner() if s.pruner in PRUNERS else s.pruner
        with one_sweeper(self.folder):
            study = open_study(
                storage_for(s.storage, self.folder), s.study_name, signature, direction, s.sampler, pruner
            )
            shared = self.folder / ANNOTATIONS_FILE
            if shared.is_file():
                check_fold_digest(study, fold_digest(read_csv(shared)), str(shared))
            self.groups = groups_of_split(self.folder)  # duplicate groups, read once: the pruner resamples by them
            if study.trials and hasattr(s.sampler, "reseed_rng"):
                s.sampler.reseed_rng()  # a seeded sampler would repeat the draws it made before the stop
            baseline = self._baseline(study)
            while True:
                trials = study.get_trials(deepcopy=False)
                done = sum(t.state.is_finished() for t in trials)
                stale = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                if done >= s.n_trials and not stale:
                    break
                new = max(0, s.n_trials - done - len(stale))
                batch = [self._resumed(study, t) for t in stale[: s.n_jobs]]
                batch += [self._asked(study, space) for _ in range(min(new, s.n_jobs - len(batch)))]
                self._run_batch(study, [run for run in batch if not self._repeat(study, run, baseline)], baseline)
                self._write_summary(study, baseline)
            confirmation = self._confirm(study, baseline) if s.confirm else None
            return self._write_summary(study, baseline, confirmation)

    def _asked(self, study: Any, space: SearchSpace) -> TrialRun:
        trial = study.ask()
        overrides = as_overrides(space.ask(trial))
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("folder", trial_folder(trial.number))
        log.info("Trial %d: %s", trial.number, " ".join(overrides))
        return TrialRun(trial, overrides, trial_folder(trial.number))

    def _repeat(self, study: Any, run: TrialRun, baseline: TrialRun) -> bool:
        """A trial whose values a finished trial, or the command line's recipe, already ran (likely where
        the space is all choices) gets that value (or is pruned as it was) without running again."""
        finished = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED])
        twin = next((t for t in finished if t.user_attrs.get("overrides") == run.overrides), None)
        if twin is not None:
            name, folder, state, value = twin.number, twin.user_attrs["folder"], twin.state, twin.value
            name = twin.user_attrs.get("repeat_of", name)  # a repeat's repeat names the run that was made
        elif is_the_recipe_of(run.overrides, self.config):
            name, folder, state = BASELINE, BASELINE, TrialState.COMPLETE
            value = baseline.value(self.settings.metric)
        else:
            return False
        run.trial.set_user_attr("repeat_of", name)
        run.trial.set_user_attr("folder", folder)
        if state == TrialState.PRUNED:
            study.tell(run.trial, state=TrialState.PRUNED)
        else:
            study.tell(run.trial, value)
        log.info("Trial %d: the values of %s (%s), not run again", run.trial.number, folder, state.name)
        return True

    def _resumed(self, study: Any, frozen: Any) -> TrialRun:
        """A trial a killed sweeper left running: the same trial, its finished folds kept."""
        import optuna

        log.info("Trial %d: resumed (its sweeper stopped while it ran)", frozen.number)
        trial = optuna.trial.Trial(study, frozen._trial_id)
        return TrialRun(trial, list(frozen.user_attrs["overrides"]), frozen.user_attrs["folder"])

    def _baseline(self, study: Any) -> TrialRun:
        """The command line's own recipe on every fold (the trial the search starts from)."""
        run = TrialRun(None, [], BASELINE)
        self._run_folds(study, [run], range(self.folds))
        return run

    def _run_batch(self, study: Any, batch: list[TrialRun], baseline: TrialRun) -> None:
        """The batch's trials fold by fold (all folds at once when nothing is pruned: more in parallel)."""
        import optuna

        active = list(batch)
        steps = [range(self.folds)] if self.settings.pruner == "none" else [[k] for k in range(self.folds)]
        for folds in steps:
            for run in self._run_folds(study, active, folds):
                active.remove(run)  # its fold failed: told FAIL
            for run in list(active):
                self._report(run)
                if len(run.folds) < self.folds and self._stop(study, run, baseline):
                    study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
                    active.remove(run)
        for run in active:
            value = run.value(self.settings.metric)
            study.tell(run.trial, value)
            log.info("Trial %d: %s %.4f out of fold", run.trial.number, self.settings.metric, value)

    def _report(self, run: TrialRun) -> None:
        """The running out-of-fold value after each finished fold (what an Optuna pruner reads)."""
        folds = sorted(run.folds)
        for step, fold in enumerate(folds):
            frames = [run.folds[k].predictions for k in folds[: step + 1]]
            with warnings.catch_warnings():  # a step reported before (a resumed trial) is ignored
                warnings.simplefilter("ignore")
                run.trial.report(objective_value(out_of_fold_scores(frames)[0], self.settings.metric), fold)
        run.trial.set_user_attr("folds_run", len(run.folds))
        run.trial.set_user_attr("wall_s", _wall(run))

    def _stop(self, study: Any, run: TrialRun, baseline: TrialRun) -> bool:
        """Whether the pruner stops ``run`` after the folds it has finished."""
        s = self.settings
        if len(run.folds) < s.min_folds:
            return False
        if s.pruner == "none":
            return False
        if s.pruner != "paired":
            return run.trial.should_prune()
        best_folder, best_frames = self._incumbent(study, baseline)
        trial, posters, _ = out_of_fold_scores(run.fold_frames())
        best, best_posters, _ = out_of_fold_scores(best_frames)
        groups = self.groups
        level = pruning_level(self.folds, s.min_folds)  # the looks after each fold share the 5%
        groups_of = [groups.get(p, p) for p in posters]
        gap = paired_gap(trial, restrict(best, best_posters, posters), groups_of, s.metric, level=level)
        run.trial.set_user_attr("gap_to_best", [gap.difference.estimate, gap.difference.low, gap.difference.high])
        if gap.clearly_behind:
            d = gap.difference
            log.info(
                "Trial %d: stopped after %d fold(s): %s %.4f [%.4f, %.4f] worse than %s (paired, same posters)",
                *(run.trial.number, len(run.folds), s.metric, d.estimate, d.low, d.high, best_folder),
            )
            run.trial.set_user_attr("compared_with", best_folder)
        return gap.clearly_behind

    def _incumbent(self, study: Any, baseline: TrialRun) -> tuple[str, list[pd.DataFrame]]:
        """The best finished trial (the baseline until a trial beats it) and its fold predictions."""
        best_folder, best_value = BASELINE, baseline.value(self.settings.metric)
        minimize = objective_direction(self.settings.metric) == "minimize"
        for frozen in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
            if (frozen.value < best_value) if minimize else (frozen.value > best_value):
                best_folder, best_value = frozen.user_attrs["folder"], frozen.value
        if best_folder not in self.best_frames:
            self.best_frames[best_folder] = [
                read_predictions(read_job(self.folder / best_folder / f"fold_{k}")) for k in range(self.folds)
            ]
        return best_folder, self.best_frames[best_folder]

    # -- jobs -------------------------------------------------------------------------------------------
    def _run_folds(self, study: Any, runs: list[TrialRun], folds: Sequence[int]) -> list[TrialRun]:
        """Launch the folds of ``runs`` not finished yet (in one launch: in parallel where the launcher is);
        record them; the runs whose fold failed are told FAIL and returned."""
        import optuna

        wanted = []
        for run in runs:
            for fold in folds:
                folder = self.folder / run.folder / f"fold_{fold}"
                if (folder / "metrics.json").is_file():
                    self._record(study, run, fold, folder)  # finished before the sweeper was stopped
                else:
                    wanted.append((run, fold))
        returns = self._launch(
            [(f"{run.folder}/fold_{fold}", [*run.overrides, f"data.fold={fold}"]) for run, fold in wanted]
        )
        failed = []
        for (run, fold), result in zip(wanted, returns, strict=True):
            if result.status == JobStatus.FAILED:
                error = result._return_value
                if find_user_error(error) is not None or run.trial is None:
                    raise error
                log.warning("Trial %d: fold %d failed: %s", run.trial.number, fold, error)
                run.trial.set_user_attr("error", str(error).splitlines()[0] if str(error) else type(error).__name__)
                study.tell(run.trial, state=optuna.trial.TrialState.FAIL)
                failed.append(run)
                continue
            self._record(study, run, fold, self.folder / run.folder / f"fold_{fold}")
        return failed

    def _launch(self, jobs: list[tuple[str, list[str]]]) -> Sequence[Any]:
        if not jobs:
            return []
        # The folder pinned as resolved here: the presets name it after ${task_name}, which a trial that
        # chooses another experiment changes, and its fold runs would land in another search's folder.
        here = [f"hydra.sweep.dir='{self.folder.resolve()}'"]
        overrides = [[*merged(self.base, extra), *here, f"hydra.sweep.subdir={subdir}"] for subdir, extra in jobs]
        returns = self.launcher.launch(overrides, initial_job_idx=self.next_job)
        self.next_job += len(jobs)
        return returns

    def _record(self, study: Any, run: TrialRun, fold: int, folder: Path) -> None:
        job = read_job(folder)
        digest = (job.cross_validation or {}).get("fold_digest")
        check_fold_digest(study, digest, str(folder))
        run.folds[fold] = FoldResult(job, read_predictions(job))

    # -- confirmation on the fixed test part --------------------------------------------------------------
    def _confirm(self, study: Any, baseline: TrialRun) -> dict[str, Any] | None:
        if not float(self.config.data.get("cv_test_fraction") or 0):
            log.warning("No confirmation: data.cv_test_fraction=0 leaves no posters the search never saw")
            return None
        best_folder, _ = self._incumbent(study, baseline)
        members = {
            "winner": [read_job(self.folder / best_folder / f"fold_{k}") for k in range(self.folds)],
            "baseline": [j.job for j in (baseline.folds[k] for k in range(self.folds))],
        }
        jobs = []
        for name, folds in members.items():
            subdir = f"{CONFIRM}/{name}"
            if not (self.folder / subdir / "metrics.json").is_file():
                jobs.append((subdir, [o for o in refit_overrides(folds) if not o.startswith("hydra.")]))
        for result in self._launch(jobs):
            if result.status == JobStatus.FAILED:
                raise result._return_value
        return {"winner": best_folder, "refits": {name: f"{CONFIRM}/{name}" for name in members}}

    def _write_summary(self, study: Any, baseline: TrialRun, confirmation: dict | None = None) -> dict[str, Any]:
        metric = self.settings.metric
        pruner = self.settings.pruner
        summary = {
            "study_name": study.study_name,
            "storage": self.settings.storage,
            "metric": metric,
            "direction": objective_direction(metric),
            "pruner": pruner if isinstance(pruner, str) else type(pruner).__name__,
            "folds": self.folds,
            "recipe": self.base,
            "baseline": {
                "folder": BASELINE,
                "value": baseline.value(metric),
                "wall_s": _wall(baseline),
            },
            "trials": trial_records(study),
            "confirmation": confirmation,
        }
        (self.folder / SEARCH_FILE).write_text(json.dumps(summary, indent=2, default=str))
        return summary


def _wall(run: TrialRun) -> float:
    return round(sum(float(r.job.metrics.get("wall_s") or 0) for r in run.folds.values()), 1)
