"""The collectives this project issues itself under DDP, and the one rule they all follow.

**The rule.** Every collective here is called by every rank, at the same point of the run, in
the same order, with tensors of the same shape and dtype, whatever data that rank holds. A rank
with nothing to contribute still takes part (zero gradients, an empty list, ``False``). A
decision that depends on data (did any rank update this metric? did any rank get the Slurm
signal?) is first agreed on with one collective, then acted on by every rank alike.

**Why the model logs only finished values.** Lightning reduces a value logged with
``sync_dist=True``, or a torchmetrics ``Metric`` passed to ``self.log``, lazily: whoever reads
it first starts the collective. The rich progress bar reads on rank 0 only, so rank 0 started an
``all_gather`` for ``train/loss`` that rank 1 never joined, while rank 1 went on to gather the
training metrics: gloo's ``op.preamble.length <= op.nbytes`` abort, or a hang on NCCL. So
``GenreClassifier`` computes (and thereby syncs) every epoch metric itself, on every rank, and
hands ``self.log`` values that are already global, with ``sync_dist=False``.

The other collectives of a run: DDP's gradient all-reduce, :func:`average_gradients` for
parameters unfrozen after DDP wrapped the model, the requeue decision in ``launch/slurm.py`` (Lightning's
``reduce_boolean_decision``), :func:`all_gather_objects` for failed images and test predictions,
:func:`barrier` and :func:`broadcast_from_zero` for the linear probe (every rank writes its
features to the shared store, rank 0 fits, every rank receives the head), and :func:`weights_agree`
at the end of fitting.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device(reference: torch.Tensor | None = None) -> torch.device:
    """NCCL moves only CUDA tensors; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return reference.device if reference is not None and reference.is_cuda else torch.device("cuda")
    return torch.device("cpu")


def any_rank(flags: Sequence[bool]) -> list[bool]:
    """For each flag, whether it is true on at least one rank: one all-reduce of a fixed-size tensor."""
    if not is_distributed() or not flags:
        return list(flags)
    votes = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return [bool(v) for v in votes.tolist()]


def all_gather_objects(payload: Any) -> list[Any]:
    """Every rank's ``payload`` (picklable, any size), in rank order; ``[payload]`` without DDP."""
    if not is_distributed():
        return [payload]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    return gathered


def barrier() -> None:
    """Wait until every rank gets here (e.g. until every rank has written its share of a file)."""
    if is_distributed():
        dist.barrier()


def broadcast_from_zero(payload: Any) -> Any:
    """Rank 0's ``payload`` (picklable) on every rank; the other ranks pass anything (e.g. None)."""
    if not is_distributed():
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, in one flat all-reduce.

    ``params`` must be the same list on every rank (chosen by configuration, not data). A parameter
    without a gradient on this rank (unused by its batch) takes part with zeros, and gets the average.
    """
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    device = _collective_device(flat)
    synced = flat.to(device)
    dist.all_reduce(synced)
    synced = synced.to(flat.device) / dist.get_world_size()
    for param, grad, value in zip(params, grads, torch._utils._unflatten_dense_tensors(synced, grads), strict=True):
        grad.copy_(value)
        param.grad = grad


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_agree(module: nn.Module) -> dict[str, Any]:
    """Whether every rank holds bit-identical weights: ``{world_size, weights_sha256, identical}``.

    Called by every rank after fitting. Ranks that differ mean a collective was skipped or a
    parameter trained on local gradients only; that is logged as an error.
    """
    digests = all_gather_objects(weights_digest(module))
    report = {"world_size": len(digests), "weights_sha256": digests, "identical": len(set(digests)) == 1}
    if not report["identical"]:
        log.error("DDP ranks ended with different weights (SHA-256 per rank: %s)", ", ".join(d[:12] for d in digests))
    return report
