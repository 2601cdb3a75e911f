"""Activation datasets: what a block computed for a list of prompts, written for SAE training.

Layout of a dataset folder::

    manifest.json                       what was collected, how, and which shards are finished
    <block>/shard_00000.safetensors     rows of one group of prompts at one block

Each shard file holds ``activations`` (rows, d_in) in the chosen dtype (channels last: one row per
spatial position, step and pass) and, per row, ``prompt`` (index into the manifest's prompts),
``step`` (sampling step), ``position`` (flat index into the block's h x w grid) and ``pass``
(0 positive, 1 negative). Shards and the manifest are written atomically and the manifest lists a
shard only once all of its block files exist, so an interrupted collection keeps every finished
shard and a re-run skips them. Nothing here imports ComfyUI: the node supplies a function that
samples one prompt while :class:`ActivationRecorder` patches are installed on the blocks.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from .block_call import NEGATIVE, POSITIVE, CallContext, sae_input
from .errors import SAEFormatError, SAEInputError
from .io_utils import atomic_write, atomic_write_text

MANIFEST = "manifest.json"
FORMAT_TAG = "sae-lab-activations"
FORMAT_VERSION = 1
ACTIVATIONS_KEY = "activations"
ROW_KEYS = ("prompt", "step", "position", "pass")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
STORE_PASSES = ("positive", "both")
PROMPT_COLUMNS = ("prompt", "caption", "text")


# ---------------------------------------------------------------- prompts
def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a CSV file (a prompt/caption/text column, or the first)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SAEInputError(f"prompt file {str(path)!r} does not exist; give a .txt (one prompt per line) or "
                            f".csv file (with a 'prompt', 'caption' or 'text' column)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() != ".csv":
        return parse_prompts(text)
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in PROMPT_COLUMNS if name in header), None)
    if column is None:
        column, body = 0, rows
    else:
        body = rows[1:]
    return [row[column].strip() for row in body if len(row) > column and row[column].strip()]


# ---------------------------------------------------------------- recording one block
@dataclass
class ShardData:
    """Rows collected at one block: activations plus per-row prompt, step, position and pass."""

    activations: list[Tensor] = field(default_factory=list)
    rows: dict[str, list[Tensor]] = field(default_factory=lambda: {key: [] for key in ROW_KEYS})
    grid: tuple[int, int] | None = None

    @property
    def n_rows(self) -> int:
        return sum(a.shape[0] for a in self.activations)

    def tensors(self) -> dict[str, Tensor]:
        out = {ACTIVATIONS_KEY: torch.cat(self.activations).contiguous()}
        for key in ROW_KEYS:
            out[key] = torch.cat(self.rows[key]).to(torch.int32).contiguous()
        return out


class ActivationRecorder:
    """A block patch that stores what an SAE at this block would encode and changes nothing.

    ``__call__(x_in, y_out, ctx)`` returns ``y_out`` itself; rows of the chosen passes are copied to the
    CPU in the storage dtype, one row per spatial position, tagged with ``prompt_index`` (set by the caller).
    """

    def __init__(self, input_kind: str, passes: str = "positive", dtype: str = "fp16"):
        if input_kind not in ("diff", "output"):
            raise SAEInputError(f"store {input_kind!r} is not valid; valid: diff (block update), output (block output)")
        if passes not in STORE_PASSES:
            raise SAEInputError(f"passes {passes!r} is not valid; valid: {', '.join(STORE_PASSES)}")
        if dtype not in DTYPES:
            raise SAEInputError(f"dtype {dtype!r} is not valid; valid: {', '.join(DTYPES)}")
        self.input_kind, self.passes, self.dtype = input_kind, passes, DTYPES[dtype]
        self.prompt_index = 0
        self.data = ShardData()

    def __call__(self, x_in: Tensor, y_out: Tensor, ctx: CallContext) -> Tensor:
        with torch.no_grad():
            u = sae_input(x_in, y_out, self.input_kind)  # (N, h, w, C)
            n, h, w, c = u.shape
            kinds = ctx.chunk_kinds or (POSITIVE,)
            if n % len(kinds):
                raise SAEInputError(f"batch of {n} rows cannot be split into {len(kinds)} passes {list(kinds)}")
            row_kind = torch.tensor(kinds).repeat_interleave(n // len(kinds))
            wanted = (POSITIVE, NEGATIVE) if self.passes == "both" else (POSITIVE,)
            keep = torch.isin(row_kind, torch.tensor(wanted))
            if not bool(keep.any()):
                return y_out
            picked = u[keep.to(u.device)]
            positions = h * w
            self.data.activations.append(picked.reshape(-1, c).to(device="cpu", dtype=self.dtype))
            kept = int(keep.sum())
            self.data.rows["prompt"].append(torch.full((kept * positions,), self.prompt_index, dtype=torch.int32))
            self.data.rows["step"].append(torch.full((kept * positions,), ctx.step or 0, dtype=torch.int32))
            self.data.rows["position"].append(torch.arange(positions, dtype=torch.int32).repeat(kept))
            self.data.rows["pass"].append(row_kind[keep].to(torch.int32).repeat_interleave(positions))
            self.data.grid = (h, w)
        return y_out

    def take(self) -> ShardData:
        data, self.data = self.data, ShardData()
        return data


# ---------------------------------------------------------------- the dataset on disk
@dataclass(frozen=True)
class ShardPlan:
    index: int
    prompts: tuple[int, int]  # [start, stop) into the prompt list

    @property
    def n_prompts(self) -> int:
        return self.prompts[1] - self.prompts[0]


def shard_file(block: str, index: int) -> str:
    return f"{block}/shard_{index:05d}.safetensors"


def fingerprint(named_tensors: Iterable[tuple[str, Tensor]], extra: Iterable[str] = (), samples: int = 1024) -> str:
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


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SAEFormatError(path, "is missing", expected="an activation dataset folder with manifest.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(path, "is not valid JSON", found=str(exc)) from None
    if manifest.get("format") != FORMAT_TAG:
        raise SAEFormatError(path, "is not an SAE Lab activation manifest", found=repr(manifest.get("format")),
                             expected=repr(FORMAT_TAG))
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise SAEFormatError(path, "was written by a newer version of this package",
                             found=f"version {manifest.get('version')}", expected=f"<= {FORMAT_VERSION}")
    return manifest


class ActivationDatasetWriter:
    """Creates or continues a dataset folder. ``header`` fixes what every shard must share (model, blocks,
    settings, dtype...): continuing a dataset with a different header is refused, naming the difference."""

    def __init__(self, root: str | Path, header: dict):
        self.root = Path(root)
        self.header = json.loads(json.dumps(header))  # plain JSON types, as they will be compared on resume
        self.manifest = {"format": FORMAT_TAG, "version": FORMAT_VERSION, **self.header, "prompts": [],
                         "seeds": [], "shards": []}
        if (self.root / MANIFEST).exists():
            existing = read_manifest(self.root)
            for key, value in self.header.items():
                if existing.get(key) != value:
                    raise SAEInputError(
                        f"dataset {str(self.root)!r} already exists with a different {key!r} "
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
                    f"dataset {str(self.root)!r} already holds shard {shard['index']} made from other prompts or "
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
        for block, data in per_block.items():
            if not data.activations:
                raise SAEInputError(f"block {block} recorded nothing for prompts {plan.prompts[0]}..{plan.prompts[1] - 1}"
                                    f"; was the sampler run with the recorder installed?")
            name = shard_file(block, plan.index)
            tensors = data.tensors()
            meta = {"block": block, "grid": json.dumps(list(data.grid or ())), "dataset_format": FORMAT_TAG}
            with atomic_write(self.root / name) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
            entry["files"][block] = name
            entry["rows"][block] = int(tensors[ACTIVATIONS_KEY].shape[0])
            entry["grid"][block] = list(data.grid or ())
        self.manifest["shards"] = sorted([s for s in self.manifest["shards"] if s["index"] != plan.index] + [entry],
                                         key=lambda s: s["index"])
        self.save_manifest()
        return entry

    def save_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1))


@dataclass
class CollectResult:
    written: list[int]
    skipped: list[int]
    rows: dict[str, int]


def collect(writer: ActivationDatasetWriter, plans: list[ShardPlan], recorders: dict[str, ActivationRecorder],
            run_prompt: Callable[[int], None], on_prompt_done: Callable[[int], None] | None = None,
            check_cancel: Callable[[], None] | None = None) -> CollectResult:
    """Run every prompt of every unfinished shard through ``run_prompt`` (which samples with the recorders
    installed), writing each shard when its prompts are done. ``check_cancel`` may raise to stop: finished
    shards stay on disk, the shard in progress is dropped. ``on_prompt_done(n)`` reports progress."""
    written, skipped = [], []
    for plan in plans:
        if writer.is_done(plan):
            skipped.append(plan.index)
            if on_prompt_done:
                on_prompt_done(plan.n_prompts)
            continue
        for recorder in recorders.values():
            recorder.take()  # drop anything left from an interrupted shard
        for prompt_index in range(*plan.prompts):
            if check_cancel:
                check_cancel()
            for recorder in recorders.values():
                recorder.prompt_index = prompt_index
            run_prompt(prompt_index)
            if on_prompt_done:
                on_prompt_done(1)
        if check_cancel:
            check_cancel()
        writer.write_shard(plan, {block: recorder.take() for block, recorder in recorders.items()})
        written.append(plan.index)
    rows: dict[str, int] = {}
    for shard in writer.manifest["shards"]:
        for block, n in shard["rows"].items():
            rows[block] = rows.get(block, 0) + n
    return CollectResult(written, skipped, rows)
