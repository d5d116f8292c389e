"""Running on Slurm: launcher sizes that follow the trainer config, and checkpoint + requeue on the
Slurm signal.

Why not Lightning's own ``SLURMEnvironment(auto_requeue=True)`` handler? Under submitit (Hydra's
Slurm launcher) it never runs: it listens to USR1 while submitit asks Slurm for USR2, and set to
USR2 it finds submitit's handler installed and keeps it. And where it runs, it saves the
checkpoint inside the signal handler, at whatever bytecode the main thread was executing: possibly in the middle of
an optimizer step, and under DDP with a barrier that can interleave with the gradient all-reduce
of another rank. :class:`RequeueOnSignal` only records the signal in its handler; at the end of
the next training batch all ranks agree (one all-reduce of a flag), save ``last.ckpt`` together,
rank 0 runs ``scontrol requeue`` and every rank exits. The requeued job runs the same Hydra job
again in the same run folder, and ``genre-train`` resumes from ``last.ckpt`` there.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from genre_lightning.launch.launcher_check import CheckLauncher  # noqa: F401 (its old place, for user configs)
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")
# submitit's sbatch asks Slurm for USR2 before the time limit (SUBMITIT_PREEMPT_SIGNAL changes it);
# USR1 is Lightning's convention. Either one means "checkpoint and requeue".
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def _devices_per_node(devices: Any) -> int:
    """Lightning's forms: a count (2), a list of device indices ([0, 1]) or a string of them ("0,1")."""
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices) if len(devices) else _devices_per_node(0)
    try:
        count = int(devices)
    except (TypeError, ValueError):
        count = -1
    if count < 1:
        raise ConfigError(
            "trainer.devices",
            devices,
            "a number of devices per node for hydra/launcher=slurm or local (one task each), e.g. trainer.devices=4",
        )
    return count


def slurm_tasks_per_node(devices: Any) -> int:
    """One Slurm task per device: Lightning's SLURMEnvironment maps each task to one rank."""
    return _devices_per_node(devices)


def slurm_gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """As many GPUs as devices for a GPU trainer; none for a CPU (or ``auto``) trainer."""
    return _devices_per_node(devices) if str(accelerator) in GPU_ACCELERATORS else None


def slurm_cpus_per_task(num_workers: Any) -> int:
    """The training process plus its data-loading workers."""
    return int(num_workers) + 1


def register_resolvers() -> None:
    """The ``${slurm_*:...}`` resolvers of conf/hydra/launcher/*.yaml."""
    OmegaConf.register_new_resolver("slurm_tasks_per_node", slurm_tasks_per_node, replace=True)
    OmegaConf.register_new_resolver("slurm_gpus_per_node", slurm_gpus_per_node, replace=True)
    OmegaConf.register_new_resolver("slurm_cpus_per_task", slurm_cpus_per_task, replace=True)


def export_submitit_local_ranks() -> None:
    """Under ``hydra/launcher=local`` with several tasks, tell Lightning each task's rank.

    submitit's local executor starts one process per task but names the rank only in its own
    variables; its helper exports the torch ones (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*), which
    Lightning reads. Every process keeps seeing all the job's GPUs: Lightning picks one per rank.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task (submitit's multiruns)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def on_slurm() -> bool:
    """A Slurm batch job (not an interactive allocation, where requeueing makes no sense)."""
    return SLURMEnvironment.detect() and slurm_job_id() is not None


class Requeued(SystemExit):
    """Raised on every rank after the job was requeued: the process ends without a result."""


class RequeueOnSignal(Callback):
    """On the Slurm timeout/preemption signal: save ``last.ckpt`` at a step boundary, requeue, exit.

    The signal is acted on at the end of the current training batch, or at the end of ``fit`` if
    it came during the last validation. Inert outside a Slurm batch job. Outside ``fit`` the
    signal goes to whoever handled it before (submitit: it requeues the job, which then resumes
    from ``last.ckpt``).
    """

    def __init__(self, signals: tuple[int, ...] | list[int] = REQUEUE_SIGNALS) -> None:
        self.signals = [signal.Signals(s) for s in signals]
        self.received: signal.Signals | None = None
        self._fitting = False
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._fitting:
            self.received = signal.Signals(signum)  # acted on at the end of the current batch
            return
        previous = self._previous.get(signal.Signals(signum))
        if callable(previous):
            previous(signum, frame)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before Lightning registers its own handlers (after the setup hooks): it keeps ours.
        if stage != "fit" or not on_slurm():
            return
        if not self._previous:
            for signum in self.signals:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        self._fitting = True
        log.info("Slurm job %s: %s will checkpoint and requeue", slurm_job_id(), "/".join(s.name for s in self.signals))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._requeue_if_signalled(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A signal during the last validation: requeue rather than risk being killed while testing.
        self._requeue_if_signalled(trainer)

    def _requeue_if_signalled(self, trainer: Trainer) -> None:
        if not self._previous:
            return
        # Every rank takes the same decision at the same point, whichever rank got the signal.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        job_id = slurm_job_id()
        if trainer.is_global_zero:
            log.warning(
                "Signal %s: saved %s at epoch %d, global step %d; requeueing Slurm job %s",
                self.received.name if self.received else "(another rank)",
                path,
                trainer.current_epoch,
                trainer.global_step,
                job_id,
            )
            subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60)
        trainer.strategy.barrier("requeue")
        raise Requeued(0)

    @staticmethod
    def checkpoint_path(trainer: Trainer) -> Path:
        """``<checkpoints>/last.ckpt``: where ModelCheckpoint keeps the last state and the resume looks."""
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback and callback.dirpath else Path(trainer.default_root_dir)
        return folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._fitting = False
