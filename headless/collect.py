"""``python -m headless collect``: SAE Collect Activations' own code (nodes.collect.collect_dataset) on this rank's
share of the shards, into the one dataset folder; rank 0 writes the merged manifest once every rank is done."""
from __future__ import annotations

import os
import sys
import time

from sae_lab_pack.nodes.collect import SAECollectActivations, collect_dataset
from sae_lab_pack.sae_core.train.sharding import ShardedDatasetWriter

from .ranks import Meter, barrier, fault_after, gather

NODE = SAECollectActivations


def rank_writer(rank: int, world_size: int, meter: Meter):
    """The dataset writer of this rank: its share, its worker record, a progress line per shard."""
    exit_after = fault_after(rank)

    class RankWriter(ShardedDatasetWriter):
        def __init__(self, root, header, shown_name=None):
            super().__init__(root, header, shown_name, rank=rank, world_size=world_size, gather=gather)
            self.written_now = 0

        def write_shard(self, plan, per_block):
            entry = super().write_shard(plan, per_block)
            self.written_now += 1
            meter.shard_done(plan.index, sum(entry["rows"].values()))
            if exit_after is not None and self.written_now >= exit_after:
                print(f"[rank {rank}/{world_size}] exiting after {self.written_now} shards, as "
                      f"SAE_LAB_HEADLESS_EXIT_AFTER asks", file=sys.stderr, flush=True)
                os._exit(17)
            return entry

    return RankWriter


def run(sockets: dict, values: dict, options, rank: int, world_size: int) -> str:
    """Collect this rank's share; rank 0 merges. Returns the summary line (the merged total on rank 0)."""
    meter = Meter(rank, world_size)

    def progress(total: int):
        meter.total = total
        return meter.prompt_done

    barrier()  # one start for every rank (model loads take different times), so rows/s counts every rank's work
    start = time.perf_counter()
    done = collect_dataset(sockets["model"], sockets["clip"], **values, label=NODE.node_name(),
                           writer_class=rank_writer(rank, world_size, meter), progress=progress)
    print(meter.line("done"), file=sys.stderr, flush=True)
    barrier()  # every rank's shards and records are on disk
    if rank != 0:
        return f"[rank {rank}/{world_size}] {done.info}"
    manifest = done.writer.merge()
    rows: dict[str, int] = {}
    for shard in manifest["shards"]:
        for block, n in shard["rows"].items():
            rows[block] = rows.get(block, 0) + n
    elapsed = time.perf_counter() - start
    total = sum(rows.values())
    per_block = ", ".join(f"{block}: {n} rows" for block, n in rows.items())
    return (f"merged output/sae_datasets/{done.name}: {len(manifest['shards'])} shards of "
            f"{len(manifest['prompts'])} prompts from {world_size} process(es); {per_block}; "
            f"{total / max(elapsed, 1e-9):.1f} rows/s in all")
