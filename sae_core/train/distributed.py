"""Data-parallel training with torch.distributed: one process per GPU (nccl) or per CPU worker (gloo).

Launched by ``torchrun``, which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR. Every process holds the
same SAE, reads its slice of each global batch, and gradients are summed with one all-reduce per step
(the losses are global sums divided by global normalisers, so the sum is exactly the 1-process gradient).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, tensor: Tensor, op: str = "sum") -> Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        if not self.enabled:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return out

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        if self.enabled:
            dist.broadcast(tensor, src)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU) and pick this process's device."""
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not launched_by_torchrun():
        return SINGLE, torch.device(device if device != "auto" else "cuda" if use_cuda else "cpu")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group together: a rank that tears gloo down while rank 0 is still writing the
    result aborts at exit ("terminate called without an active exception"), so all ranks meet first."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
