"""Activation datasets: what a block computed for a list of prompts, written for SAE training.

Layout of a dataset folder::

    manifest.json                       what was collected, how, and which shards are finished
    <block>/shard_00000.safetensors     rows of one group of prompts at one block

Each shard file holds ``activations`` (rows, d_in) in the chosen dtype (channels last: one row per
spatial position, step and pass) and, per row, ``prompt`` (index into the manifest's prompts),
``step`` (sampling step), ``position`` (flat index into the block's h x w grid) and ``pass``
(0 positive, 1 negative). Shards and the manifest are written atomically and the manifest lists a
shard only once all of its block files exist, so an interrupted collection keeps every finished
shard and a re-run skips them.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..blocks.layout import Block
from ..blocks.names import diffusers_name
from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write, atomic_write_text, check_version

MANIFEST = "manifest.json"
FORMAT_TAG = "sae-lab-activations"
FORMAT_VERSION = 1
ACTIVATIONS_KEY = "activations"
ROW_KEYS = ("prompt", "step", "position", "pass")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class ShardData:
    """Rows collected at one block: activations plus per-row prompt, step, position and pass."""

    activations: list[Tensor] = field(default_factory=list)
    rows: dict[str, list[Tensor]] = field(default_factory=lambda: {key: [] for key in ROW_KEYS})
    grid: tuple[int, int] | None = None
    meta: dict[str, str] = field(default_factory=dict)  # extra shard-file metadata (a text collection's tokens)

    @property
    def n_rows(self) -> int:
        return sum(a.shape[0] for a in self.activations)

    def tensors(self) -> dict[str, Tensor]:
        out = {ACTIVATIONS_KEY: torch.cat(self.activations).contiguous()}
        for key in ROW_KEYS:
            out[key] = torch.cat(self.rows[key]).to(torch.int32).contiguous()
        return out


@dataclass(frozen=True)
class ShardPlan:
    index: int
    prompts: tuple[int, int]  # [start, stop) into the prompt list

    @property
    def n_prompts(self) -> int:
        return self.prompts[1] - self.prompts[0]


def shard_file(block: str, index: int) -> str:
    return f"{block}/shard_{index:05d}.safetensors"


def weights_digest(named_tensors: Iterable[tuple[str, Tensor]], extra: Iterable[str] = (), samples: int = 1024) -> str:
    """A cheap identity of a set of weights: names, shapes, dtypes and a strided sample of values."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // samples)
        sample = flat[::stride][:samples].float().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    for item in extra:
        digest.update(str(item).encode())
    return digest.hexdigest()[:16]


def collection_header(name: str, model: dict, input_kind: str, dtype: str, blocks: Iterable[Block], *, steps: int,
                      cfg: float, sampler: str, scheduler: str, seed: int, width: int, height: int, passes: str,
                      negative: str, prompts_per_shard: int, positions_per_image: int) -> dict:
    """The manifest header of a collection: what every shard of the dataset shares (the model's fingerprint and
    family, what is stored, how it was sampled, the blocks), so continuing it with anything else is refused."""
    return {
        "name": name,
        "model": model,
        "input_kind": input_kind,
        "dtype": dtype,
        "settings": {"steps": steps, "cfg": cfg, "sampler": sampler, "scheduler": scheduler, "seed": seed,
                     "width": width, "height": height, "passes": passes, "negative": negative,
                     "prompts_per_shard": prompts_per_shard, "positions_per_image": positions_per_image},
        "blocks": block_entries(blocks),
    }


def block_entries(blocks: Iterable[Block]) -> dict[str, dict]:
    """The manifest's ``blocks``: each block's names (the hookpoint becomes a trained SAE's) and width."""
    return {b.short: {"diffusers": b.diffusers, "comfy": b.comfy, "hookpoint": b.hookpoint, "channels": b.channels}
            for b in blocks}


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SAEFormatError(path, "is missing", expected="an activation dataset folder with manifest.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(path, "is not valid JSON", found=str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_TAG:
        found = repr(manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__)[:80]
        raise SAEFormatError(path, "is not an SAE Lab activation manifest", found=found, expected=repr(FORMAT_TAG))
    version = manifest.get("version", 0)
    check_version(path, version if isinstance(version, int) else 0, FORMAT_VERSION)
    return manifest


class ActivationDatasetWriter:
    """Creates or continues a dataset folder. ``header`` fixes what every shard must share (model, blocks,
    settings, dtype...): continuing a dataset with a different header is refused, naming the difference."""

    def __init__(self, root: str | Path, header: dict, shown_name: str | None = None):
        self.root = Path(root)
        self.label = shown_name or str(self.root)  # how messages name the dataset
        self.header = json.loads(json.dumps(header))  # plain JSON types, as they will be compared on resume
        self.manifest = {"format": FORMAT_TAG, "version": FORMAT_VERSION, **self.header, "prompts": [],
                         "seeds": [], "shards": []}
        if (self.root / MANIFEST).exists():
            existing = read_manifest(self.root)
            for key, value in self.header.items():
                if existing.get(key) != value:
                    raise SAEInputError(
                        f"dataset {self.label!r} already exists with a different {key!r} "
                        f"(saved: {json.dumps(existing.get(key))}, now: {json.dumps(value)}); "
                        f"choose another dataset name, or delete the folder to start again")
            self.manifest = existing

    @property
    def done(self) -> dict[int, dict]:
        return {shard["index"]: shard for shard in self.manifest["shards"]}

    def plan(self, prompts: list[str], seeds: list[int], prompts_per_shard: int) -> list[ShardPlan]:
        """Shards for this prompt list; finished shards must hold exactly the same prompts and seeds."""
        if not prompts:
            raise SAEInputError("no prompts given: type one prompt per line, or give a .txt/.csv prompt file")
        if prompts_per_shard < 1:
            raise SAEInputError(f"prompts_per_shard must be at least 1, got {prompts_per_shard}")
        plans = [ShardPlan(i, (start, min(start + prompts_per_shard, len(prompts))))
                 for i, start in enumerate(range(0, len(prompts), prompts_per_shard))]
        old_prompts, old_seeds = self.manifest["prompts"], self.manifest["seeds"]
        kept = []
        for shard in self.manifest["shards"]:
            start, stop = shard["prompts"]
            if prompts[start:stop] != old_prompts[start:stop] or seeds[start:stop] != old_seeds[start:stop]:
                raise SAEInputError(
                    f"dataset {self.label!r} already holds shard {shard['index']} made from other prompts or "
                    f"seeds (prompts {start}..{stop - 1}); keep the finished prompts in the same order and add new "
                    f"ones at the end, or choose another dataset name")
            if shard["index"] < len(plans) and tuple(shard["prompts"]) == plans[shard["index"]].prompts:
                kept.append(shard)  # else: a last, partial shard that new prompts extend; it is collected again
        self.manifest["shards"] = kept
        self.manifest["prompts"], self.manifest["seeds"] = list(prompts), list(seeds)
        return plans

    def is_done(self, plan: ShardPlan) -> bool:
        shard = self.done.get(plan.index)
        return shard is not None and all((self.root / f).is_file() for f in shard["files"].values())

    def write_shard(self, plan: ShardPlan, per_block: dict[str, ShardData]) -> dict:
        """Write one shard's block files, then record it in the manifest (both atomic)."""
        from safetensors.torch import save_file

        entry = {"index": plan.index, "prompts": list(plan.prompts), "files": {}, "rows": {}, "grid": {}}
        prompts = f"prompts {plan.prompts[0]}..{plan.prompts[1] - 1}"
        ready = {}
        for block, data in per_block.items():  # every block checked before any file is written
            if not data.activations:
                raise SAEInputError(f"block {block} recorded nothing for {prompts}; was the sampler run with the "
                                    f"recorder installed?")
            tensors = data.tensors()
            rows = tensors[ACTIVATIONS_KEY]
            bad = int((~torch.isfinite(rows.float())).any(dim=-1).sum())
            if bad:
                raise SAEInputError(
                    f"block {block} computed NaN or infinite values in {bad} of {rows.shape[0]} rows of shard "
                    f"{plan.index} ({prompts}); nothing was written for this shard. The model diverges there: check "
                    f"the model, its dtype and the sampler settings")
            ready[block] = (tensors, data.grid, data.meta)
        for block, (tensors, grid, extra) in ready.items():
            name = shard_file(block, plan.index)
            meta = {**extra, "block": block, "grid": json.dumps(list(grid or ())), "dataset_format": FORMAT_TAG}
            with atomic_write(self.root / name) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
            entry["files"][block] = name
            entry["rows"][block] = int(tensors[ACTIVATIONS_KEY].shape[0])
            entry["grid"][block] = list(grid or ())
        self.manifest["shards"] = sorted([s for s in self.manifest["shards"] if s["index"] != plan.index] + [entry],
                                         key=lambda s: s["index"])
        self.save_manifest()
        return entry

    def save_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1))


def choose_block(blocks: dict, block: str | None, root: Path) -> str:
    if not blocks:
        raise SAEFormatError(root / MANIFEST, "lists no blocks")
    if not block:
        if len(blocks) == 1:
            return next(iter(blocks))
        raise SAEInputError(f"dataset {str(root)!r} holds several blocks ({', '.join(blocks)}); choose one")
    wanted = diffusers_name(block) or block.strip()
    for short, meta in blocks.items():
        if wanted in (short, meta.get("diffusers"), meta.get("comfy"), meta.get("hookpoint")):
            return short
    raise SAEInputError(f"block {block!r} is not in dataset {str(root)!r}; it holds: {', '.join(blocks)}")
