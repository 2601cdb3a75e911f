"""Training rows: a collected dataset (manifest + shards) or a plain folder of (N, d_in) arrays, streamed
in a shuffled order that is a pure function of (seed, position), so a resumed run sees the same rows.

Files are split into *chunks* of at most ``chunk_rows`` rows (read by slicing, never whole, so one file
may be larger than memory). Epoch ``e`` visits the chunks in a seeded random order; consecutive chunks
are grouped into buffers of about ``buffer_rows`` rows, and the rows of each buffer are shuffled with a
generator seeded by (seed, epoch, buffer). The stream is the concatenation of all epochs; batch ``i``
is rows ``[i*B, (i+1)*B)`` of it and rank ``r`` of ``W`` takes the r-th slice of each batch.
"""
from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import SAEFormatError, SAEInputError
from .dataset import ACTIVATIONS_KEY, MANIFEST, choose_block, read_manifest

CHUNK_ROWS = 1 << 16
BUFFER_ROWS = 1 << 18
ARRAY_SUFFIXES = (".safetensors", ".npy")


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one 2-D array in one file."""

    path: Path
    key: str | None  # tensor name in a .safetensors file; None for .npy
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _array_shape(path: Path) -> tuple[str | None, tuple[int, ...], str]:
    """(tensor key, shape, dtype name) of the one array a file holds."""
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise SAEFormatError(path, "cannot be read as .npy", found=f"{type(exc).__name__}: {exc}") from None
        return None, tuple(array.shape), str(array.dtype)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if ACTIVATIONS_KEY in keys:
                key = ACTIVATIONS_KEY
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise SAEFormatError(path, "holds several tensors and none is named 'activations'",
                                     found=", ".join(sorted(keys)[:8]),
                                     expected="one (N, d_in) tensor, or one named 'activations'")
            sliced = handle.get_slice(key)
            return key, tuple(sliced.get_shape()), str(sliced.get_dtype())
    except SAEFormatError:
        raise
    except Exception as exc:
        raise SAEFormatError(path, "cannot be read as safetensors (truncated or corrupt?)",
                             found=f"{type(exc).__name__}: {exc}") from None


class ActivationSource:
    """The rows of a dataset, as chunks of one width, plus what is known about where they came from."""

    def __init__(self, chunks: list[Chunk], d_in: int, info: dict | None = None, label: str = ""):
        if not chunks:
            raise SAEInputError(f"{label or 'dataset'} holds no rows")
        self.chunks = chunks
        self.d_in = d_in
        self.info = info or {}
        self.label = label
        self.total_rows = sum(c.rows for c in chunks)

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, block: str | None = None, chunk_rows: int = CHUNK_ROWS) -> ActivationSource:
        """A collected dataset folder (pick ``block`` if it holds several), a folder of arrays, or one file."""
        path = Path(path).expanduser()
        if path.is_dir() and (path / MANIFEST).is_file():
            return cls._open_collected(path, block, chunk_rows)
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix in ARRAY_SUFFIXES and not p.name.startswith(".")),
                           key=_natural_key)
            if not files:
                raise SAEInputError(f"{str(path)!r} holds no manifest.json and no .safetensors/.npy arrays; give a "
                                    f"dataset made by SAE Collect Activations or a folder of (N, d_in) arrays")
            return cls._open_files(files, chunk_rows, label=str(path))
        if path.is_file() and path.suffix in ARRAY_SUFFIXES:
            return cls._open_files([path], chunk_rows, label=str(path))
        raise SAEInputError(f"training data {str(path)!r} does not exist or is not a dataset folder, a folder of "
                            f".safetensors/.npy arrays, or one such file")

    @classmethod
    def _open_files(cls, files: list[Path], chunk_rows: int, label: str, info: dict | None = None) -> ActivationSource:
        chunks: list[Chunk] = []
        d_in = None
        for path in files:
            key, shape, dtype = _array_shape(path)
            if len(shape) != 2:
                raise SAEFormatError(path, "is not a 2-D array of rows", found=f"shape {shape}",
                                     expected="shape (N, d_in), channels last: one row per position")
            if "float" not in dtype.lower() and dtype not in ("F16", "BF16", "F32", "F64"):
                raise SAEFormatError(path, "does not hold floating point values", found=dtype)
            if d_in is None:
                d_in = shape[1]
            elif shape[1] != d_in:
                raise SAEFormatError(path, "has another width than the first file", found=f"d_in {shape[1]}",
                                     expected=f"d_in {d_in} (from {files[0].name})")
            chunks.extend(Chunk(path, key, s, min(s + chunk_rows, shape[0])) for s in range(0, shape[0], chunk_rows))
        return cls(chunks, int(d_in), info, label)

    @classmethod
    def _open_collected(cls, root: Path, block: str | None, chunk_rows: int) -> ActivationSource:
        manifest = read_manifest(root)
        blocks = manifest.get("blocks") or {}
        chosen = choose_block(blocks, block, root)
        files = [root / shard["files"][chosen] for shard in manifest.get("shards", []) if chosen in shard["files"]]
        if not files:
            raise SAEInputError(f"dataset {str(root)!r} has no finished shard yet for block {chosen}; run the "
                                f"collection (it resumes where it stopped)")
        meta = blocks[chosen]
        model = manifest.get("model", {})
        info = {"hookpoint": meta.get("hookpoint"), "input_kind": manifest.get("input_kind"),
                "model_family": model.get("architecture") or model.get("family"), "block": chosen,
                "dataset": str(root), "dataset_name": manifest.get("name")}
        return cls._open_files(files, chunk_rows, label=f"{root} [{chosen}]", info=info)

    # ------------------------------------------------------------ reading
    def read(self, chunk: Chunk) -> Tensor:
        """The chunk's rows on the CPU, in the stored dtype; rows holding NaN or infinite values are refused (an
        SAE trained on them has NaN weights)."""
        if chunk.key is None:
            array = np.load(chunk.path, mmap_mode="r")[chunk.start:chunk.stop]
            rows = torch.from_numpy(np.array(array, copy=True))
        else:
            from safetensors import safe_open

            with safe_open(str(chunk.path), framework="pt") as handle:
                rows = handle.get_slice(chunk.key)[chunk.start:chunk.stop]
        finite = torch.isfinite(rows).all(dim=-1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            first = chunk.start + int((~finite).nonzero()[0, 0])
            raise SAEFormatError(chunk.path, f"{bad} of rows {chunk.start}..{chunk.stop - 1} hold NaN or infinite "
                                             f"values (the first is row {first})",
                                 expected="finite activations: collect this shard again or remove it")
        return rows

    def read_rows(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in file order (no shuffling), e.g. for statistics."""
        pieces, offset = [], 0
        for chunk in self.chunks:
            lo, hi = max(start, offset), min(stop, offset + chunk.rows)
            if lo < hi:
                pieces.append(self.read(Chunk(chunk.path, chunk.key, chunk.start + lo - offset,
                                              chunk.start + hi - offset)))
            offset += chunk.rows
            if offset >= stop:
                break
        return torch.cat(pieces) if pieces else torch.empty(0, self.d_in)

    def describe(self) -> str:
        files = len({c.path for c in self.chunks})
        return f"{self.label}: {self.total_rows} rows of width {self.d_in} in {files} file(s)"


# ---------------------------------------------------------------- shuffled stream
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across platforms and Python versions."""
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class _Buffer:
    chunks: tuple[Chunk, ...]
    start: int  # first row of this buffer within its epoch
    rows: int


class ShuffledStream:
    """Batches of rows in a reproducible shuffled order; ``batches(position)`` resumes anywhere."""

    def __init__(self, source: ActivationSource, batch_size: int, seed: int = 0, buffer_rows: int = BUFFER_ROWS,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, prefetch: bool = True):
        if batch_size < 1 or batch_size % world_size:
            raise SAEInputError(f"batch size {batch_size} must be a positive multiple of the number of "
                                f"processes ({world_size})")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.buffer_rows, self.rank, self.world_size = max(1, buffer_rows), rank, world_size
        self.shuffle, self.prefetch = shuffle, prefetch
        self.local_batch = batch_size // world_size
        self._plans: dict[int, tuple[list[_Buffer], list[int]]] = {}

    def epoch_plan(self, epoch: int) -> tuple[list[_Buffer], list[int]]:
        """The epoch's buffers (chunks in shuffled order, grouped) and their start rows."""
        plan = self._plans.get(epoch)
        if plan is not None:
            return plan
        chunks = self.source.chunks
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=g).tolist()]
        buffers, group, rows, start = [], [], 0, 0
        for chunk in chunks:
            group.append(chunk)
            rows += chunk.rows
            if rows >= self.buffer_rows:
                buffers.append(_Buffer(tuple(group), start, rows))
                start, group, rows = start + rows, [], 0
        if group:
            buffers.append(_Buffer(tuple(group), start, rows))
        plan = (buffers, [b.start for b in buffers])
        # a new dict each time (the prefetch thread may be reading the old one); keep the last few epochs
        self._plans = dict([*list(self._plans.items())[-3:], (epoch, plan)])
        return plan

    def _load(self, epoch: int, index: int) -> Tensor:
        buffer = self.epoch_plan(epoch)[0][index]
        rows = torch.cat([self.source.read(c) for c in buffer.chunks])
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
            rows = rows[torch.randperm(rows.shape[0], generator=g)]
        return rows

    def _next_buffer(self, epoch: int, index: int) -> tuple[int, int]:
        buffers = self.epoch_plan(epoch)[0]
        return (epoch, index + 1) if index + 1 < len(buffers) else (epoch + 1, 0)

    def batches(self, position: int = 0) -> Iterator[Tensor]:
        """This rank's slice of every batch, starting at stream row ``position`` (a multiple of the batch size)."""
        total = self.source.total_rows
        pool = ThreadPoolExecutor(1) if self.prefetch else None
        loaded: tuple[tuple[int, int], Tensor] | None = None
        pending: tuple[tuple[int, int], Future] | None = None

        def buffer_at(key: tuple[int, int]) -> Tensor:
            nonlocal loaded, pending
            if loaded is not None and loaded[0] == key:
                return loaded[1]
            if pending is not None and pending[0] == key:
                rows = pending[1].result()
            else:
                rows = self._load(*key)
            loaded, pending = (key, rows), None
            if pool is not None:
                after = self._next_buffer(*key)
                pending = (after, pool.submit(self._load, *after))
            return rows

        try:
            while True:
                lo = position + self.rank * self.local_batch
                hi = lo + self.local_batch
                pieces, row = [], lo
                while row < hi:
                    epoch, offset = divmod(row, total)
                    buffers, starts = self.epoch_plan(epoch)
                    index = bisect_right(starts, offset) - 1
                    rows = buffer_at((epoch, index))
                    local = offset - buffers[index].start
                    take = min(hi - row, buffers[index].rows - local)
                    pieces.append(rows[local:local + take])
                    row += take
                yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                position += self.batch_size
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
