"""This process's place in a torchrun / accelerate launch (or alone), and its progress line."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import torch.distributed as dist

FAULT_ENV = "SAE_LAB_HEADLESS_EXIT_AFTER"  # "<rank>:<shards>": that rank exits after so many shards (resume tests)


def gather(obj: object) -> list:
    """Every rank's ``obj`` (one process: ``[obj]``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def fault_after(rank: int) -> int | None:
    """Shards after which this rank exits at once, as a killed worker would (from SAE_LAB_HEADLESS_EXIT_AFTER)."""
    spec = os.environ.get(FAULT_ENV, "")
    who, _, count = spec.partition(":")
    return int(count) if who.strip() == str(rank) and count.strip().isdigit() else None


@dataclass
class Meter:
    """One line per rank: prompts done, rows written, rows/s and the time left."""

    rank: int
    world_size: int
    total: int = 0
    prompts: int = 0
    rows: int = 0
    start: float = field(default_factory=time.perf_counter)

    def prompt_done(self, n: int) -> None:
        self.prompts += n

    unit: str = "prompts"  # what ``prompts`` counts; "images" for jobs that store no rows (profile, sweep)

    def line(self, what: str) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        left = (self.total - self.prompts) * elapsed / self.prompts if self.prompts else float("nan")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left == left else "?"
        speed = f"{self.rows} rows, {self.rows / elapsed:.1f} rows/s" if self.unit == "prompts" else \
            f"{self.prompts / elapsed:.2f} {self.unit}/s"
        return (f"[rank {self.rank}/{self.world_size}] {what}: {self.prompts}/{self.total} {self.unit}, {speed}, "
                f"ETA {eta}")

    def shard_done(self, index: int, rows: int) -> None:
        self.rows += rows
        print(self.line(f"shard {index}"), file=sys.stderr, flush=True)


def print_image_progress(meter: Meter) -> None:
    """One line per update of the node's progress bar (ComfyUI's global hook: the node code is unchanged)."""
    import comfy.utils

    def hook(value: int, total: int, preview=None, node_id=None, **_) -> None:
        meter.prompts, meter.total = int(value), int(total)
        print(meter.line("sampled"), file=sys.stderr, flush=True)

    comfy.utils.set_progress_bar_global_hook(hook)


def share_node(node: type, rank: int, world_size: int) -> type:
    """``node`` with this rank's share of its work (its ``share`` class attribute: sae_core.train.sharding)."""
    from sae_lab_pack.sae_core.train.sharding import WorkShare

    return type(node.__name__, (node,), {"share": WorkShare(rank, world_size, gather)})
