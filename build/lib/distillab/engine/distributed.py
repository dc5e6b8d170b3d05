"""Data-parallel training over ``torch.distributed`` (gloo on CPU, nccl on CUDA).

``distillab run SPEC --nproc N`` starts N processes through torchrun (``torch.distributed.run
--standalone``); ``torchrun ... -m distillab.cli run SPEC`` works too. Every process runs the
same job: it builds the same data, reads the teacher cache (filled once, under the cache's
lock) and draws the same global batch from the same generator, then trains on its share of
it, ``batch[rank::world]``. After each backward the gradients are summed over the processes,
each weighted by its share of the batch, so every process takes the optimizer step that one
process would take on the whole batch; buffers (batch-norm statistics) are broadcast from
rank 0 after each step. What differs from one process is what depends on the batch's
composition inside a loss (per-process batch-norm statistics during the forward, relational
losses over pairs), as with ``DistributedDataParallel``, whose bucketed all-reduce this
replaces with one flat all-reduce per step: strategies hold teachers, students and extra
modules, which one wrapper around the student would not cover.

Rank 0 writes the run folder; the other ranks work in a private temporary folder.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

# keys whose first dimension is the teacher, the batch second: (n_teachers, B, ...)
TEACHER_FIRST = ("teacher_logits", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR, MASTER_PORT); True when this is a multi-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return True


def shard(batch: dict, rank: int, size: int) -> dict:
    """This process's share of a global batch: every ``size``-th sample from ``rank``."""
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
        elif key in TEACHER_FIRST:
            out[key] = value[:, rank::size]
        else:
            out[key] = value[rank::size]
    return out


def sync_gradients(parameters, local_count: int, global_count: int) -> None:
    """Replace each gradient by the batch-weighted sum over processes (one flat all-reduce):
    the gradient of the whole batch's mean loss."""
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat.mul_(local_count / global_count)
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad in zip(parameters, grads):
        n = grad.numel()
        parameter.grad = flat[offset: offset + n].view_as(grad).to(grad.dtype)
        offset += n


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every process."""
    for buffer in module.buffers():
        dist.broadcast(buffer.data, 0)


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over processes."""
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()
