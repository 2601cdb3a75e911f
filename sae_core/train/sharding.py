"""One activation dataset written by many processes (torchrun ranks, machines on shared storage).

Rank ``r`` of ``W`` takes the shards whose index is ``r`` modulo ``W`` (a shard is a fixed group of
(prompt, seed) items, so every rank computes the same plan and the shares are disjoint). Ranks never write
``manifest.json`` while they work: each keeps a small worker record, ``workers/rank-<r>.json``, holding its
identity (model and SAE fingerprints, blocks, a hash of the settings and of the prompt list) and the shards it
finished, written atomically after each shard. Once every rank is done, rank 0 merges the records into the
manifest (:meth:`ShardedDatasetWriter.merge`). A re-run reads the manifest and every record, so finished shards
are kept and never written again whichever world size resumes; a shard file only counts once its record lists
it, so a half-written shard is never read. A worker whose identity disagrees with the folder's, or with the
other ranks', is refused.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write_text
from .dataset import ActivationDatasetWriter, ShardPlan

WORKERS_DIR = "workers"
WORKER_TAG = "sae-lab-activations-worker"
WORKER_VERSION = 1
FOLDER_KEYS = ("model", "sae", "blocks", "settings")  # what a folder and a worker must share
RUN_KEYS = (*FOLDER_KEYS, "work")  # what the ranks of one run must share (also the same prompts and seeds)
Item = TypeVar("Item")


def share_of(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The items of ``rank``: those at index ``rank`` modulo ``world_size`` (disjoint, together all of them)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise SAEInputError(f"rank {rank} is not in a world of {world_size} processes; valid ranks: 0.."
                            f"{world_size - 1} (torchrun sets RANK and WORLD_SIZE)")
    return [item for index, item in enumerate(items) if index % world_size == rank]


def _alone(obj: object) -> list:
    return [obj]


@dataclass(frozen=True)
class WorkShare:
    """The part of a sampling job this process does (a profile's batches, a sweep's runs): the items at index
    ``rank`` modulo ``world_size``, and ``gather(obj)``, every rank's ``obj`` in rank order (torchrun ranks:
    torch.distributed's all_gather_object). The default is the whole job in one process."""

    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list] = _alone

    def pick(self, items: Sequence[Item]) -> list[Item]:
        return share_of(items, self.rank, self.world_size)

    @property
    def alone(self) -> bool:
        return self.world_size == 1


WHOLE = WorkShare()


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def worker_identity(header: dict, prompts: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """What makes two workers' rows belong in one dataset: the model, the SAE (if any), the blocks, the rest of
    the header (store, dtype, sampling settings) as a hash, and the work list (prompts and seeds) as a hash."""
    model = header.get("model") or {}
    settings = {k: v for k, v in header.items() if k not in ("model", "blocks", "sae")}
    return {"model": model.get("fingerprint") if isinstance(model, dict) else model,
            "sae": (header.get("sae") or {}).get("fingerprint") if isinstance(header.get("sae"), dict) else None,
            "blocks": sorted(header.get("blocks") or ()), "settings": _digest(settings),
            "work": _digest([prompts or [], seeds or []])}


def identity_difference(expected: dict, found: dict, keys: Sequence[str] = FOLDER_KEYS) -> str | None:
    """The first field where two identities disagree, as ``'model' (abc vs def)``; None when they agree."""
    for key in keys:
        if expected.get(key) != found.get(key):
            return f"{key!r} ({json.dumps(expected.get(key))} vs {json.dumps(found.get(key))})"
    return None


def check_same_run(identities: Sequence[dict]) -> None:
    """Every rank of one run must have the same identity as rank 0, or the run is refused (naming the rank)."""
    for rank, identity in enumerate(identities[1:], start=1):
        difference = identity_difference(identities[0], identity, RUN_KEYS)
        if difference:
            raise SAEInputError(f"rank {rank} disagrees with rank 0 on {difference}; every rank must load the same "
                                f"model, SAE, blocks, settings and prompt list; nothing was collected")


def merge_shards(*shard_lists: Sequence[dict], exists: Callable[[dict], bool] = lambda shard: True) -> list[dict]:
    """The union of shard entries (the first entry of each index wins), sorted by index; entries whose files
    ``exists`` rejects are left out (collected again)."""
    merged: dict[int, dict] = {}
    for shards in shard_lists:
        for shard in shards:
            if shard["index"] not in merged and exists(shard):
                merged[shard["index"]] = shard
    return [merged[index] for index in sorted(merged)]


def read_worker_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(path, "is not valid JSON", found=str(exc)) from None
    if not isinstance(record, dict) or record.get("format") != WORKER_TAG or not isinstance(record.get("shards"),
                                                                                             list):
        raise SAEFormatError(path, "is not an SAE Lab worker record", expected=repr(WORKER_TAG))
    return record


class ShardedDatasetWriter(ActivationDatasetWriter):
    """An :class:`ActivationDatasetWriter` for rank ``rank`` of ``world_size``: it plans only its share, writes
    its progress to its worker record, and leaves the manifest to :meth:`merge` (rank 0, after every rank is
    done). ``gather(obj)`` returns every rank's ``obj`` (torch.distributed's all_gather_object; one rank: [obj])."""

    def __init__(self, root: str | Path, header: dict, shown_name: str | None = None, *, rank: int = 0,
                 world_size: int = 1, gather: Callable[[object], list] | None = None):
        super().__init__(root, header, shown_name)  # refuses a header that differs from manifest.json's
        share_of([], rank, world_size)  # checks the rank
        self.rank, self.world_size = rank, world_size
        self.gather = gather or (lambda obj: [obj])
        self.identity = worker_identity(self.header)
        records = [self._checked(path) for path in sorted((self.root / WORKERS_DIR).glob("rank-*.json"))]
        self._recorded = {int(k): v for r in records for k, v in (r.get("work") or {}).items()}
        in_manifest = {shard["index"] for shard in self.manifest["shards"]}
        self.manifest["shards"] = merge_shards(self.manifest["shards"], *(r["shards"] for r in records),
                                               exists=self._files_exist)
        self._from_records = [s for s in self.manifest["shards"] if s["index"] not in in_manifest]

    @property
    def record_path(self) -> Path:
        return self.root / WORKERS_DIR / f"rank-{self.rank:05d}.json"

    def _files_exist(self, shard: dict) -> bool:
        return all((self.root / f).is_file() for f in shard["files"].values())

    def _checked(self, path: Path) -> dict:
        record = read_worker_record(path)
        difference = identity_difference(record.get("identity") or {}, self.identity)
        if difference:
            raise SAEInputError(
                f"dataset {self.label!r} is being collected by a worker with a different {difference} (its record "
                f"{WORKERS_DIR}/{path.name}); this worker (rank {self.rank}) is refused. Load the same model, SAE, "
                f"blocks and settings, or choose another dataset name")
        return record

    def plan(self, prompts: list[str], seeds: list[int], prompts_per_shard: int) -> list[ShardPlan]:
        """This rank's share of the shards, once every rank agrees on what is collected."""
        for shard in self._from_records:  # the manifest does not list their prompts: their records' hashes do
            start, stop = shard["prompts"]
            if self._recorded.get(shard["index"]) != _digest([prompts[start:stop], seeds[start:stop]]):
                raise SAEInputError(
                    f"dataset {self.label!r} already holds shard {shard['index']} made from other prompts or seeds "
                    f"(prompts {start}..{stop - 1}); keep the finished prompts in the same order and add new ones "
                    f"at the end, or choose another dataset name")
        known = self.manifest["prompts"]
        self.manifest["prompts"] = known + list(prompts[len(known):])
        self.manifest["seeds"] = self.manifest["seeds"] + list(seeds[len(self.manifest["seeds"]):])
        plans = super().plan(prompts, seeds, prompts_per_shard)
        self.identity = worker_identity(self.header, prompts, seeds)
        check_same_run(self.gather(self.identity))
        return share_of(plans, self.rank, self.world_size)

    def _shard_work(self, shard: dict) -> str:
        start, stop = shard["prompts"]
        return _digest([self.manifest["prompts"][start:stop], self.manifest["seeds"][start:stop]])

    def save_manifest(self) -> None:
        """After each shard: this rank's record (the manifest is written by :meth:`merge`)."""
        record = {"format": WORKER_TAG, "version": WORKER_VERSION, "rank": self.rank, "world_size": self.world_size,
                  "identity": self.identity, "shards": self.manifest["shards"],
                  "work": {str(s["index"]): self._shard_work(s) for s in self.manifest["shards"]}}
        atomic_write_text(self.record_path, json.dumps(record, indent=1))

    def merge(self) -> dict:
        """Rank 0, after every rank finished and after :meth:`plan` (which gives the prompt list): the manifest
        of every finished shard (then the records go)."""
        if not self.manifest["prompts"]:
            raise SAEInputError(f"dataset {self.label!r}: plan the prompts before merging the workers' records")
        records = [read_worker_record(path) for path in sorted((self.root / WORKERS_DIR).glob("rank-*.json"))]
        self.manifest["shards"] = merge_shards(self.manifest["shards"], *(r["shards"] for r in records),
                                               exists=self._files_exist)
        super().save_manifest()
        for path in (self.root / WORKERS_DIR).glob("rank-*.json"):
            path.unlink(missing_ok=True)
        return self.manifest
