"""Recording what an SAE sees during a real sampling run: sparse codes per block call.

Dense latents would cost steps x positions x n_latents floats (20480 x 256 x 100 steps = 2 GB for one
SAeUron run); the top-k values and indices of each position cost steps x positions x k, which for a
TopK SAE is the whole code (every other latent is exactly zero). ReLU/JumpReLU SAEs keep their
strongest ``DENSE_SAE_KEEP`` latents per position.

A run is one sampling call (one KSampler execution). ``begin_run`` drops the previous run, so a
recording always describes the most recent sampling of the model it was attached to.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..blocks.context import CallContext
from ..blocks.host import HostCopies
from ..blocks.passes import POSITIVE
from ..blocks.patch import BlockPatch, BlockView
from ..sae.model import SparseAutoencoder

DENSE_SAE_KEEP = 64  # latents kept per position for SAEs without a k
FP16_MAX = 65504.0


@dataclass
class RecordedCall:
    """One call of the block: ``values``/``indices`` (rows, positions, k); rows are pass chunks x batch."""

    step: int | None
    sigma: float | None
    chunk_kinds: tuple[int, ...]
    grid: tuple[int, int]
    values: Tensor
    indices: Tensor

    @property
    def batch(self) -> int:
        return self.values.shape[0] // max(len(self.chunk_kinds), 1)

    def rows(self):
        """``(pass kind, batch item, values (P, k), indices (P, k))`` for every row of the call."""
        per_chunk = self.batch
        for r in range(self.values.shape[0]):
            yield self.chunk_kinds[r // per_chunk], r % per_chunk, self.values[r], self.indices[r]



@dataclass
class Run:
    """One sampling call: its schedule, the latent batch it sampled and every block call recorded."""

    number: int
    n_steps: int | None = None
    latent_shape: tuple[int, ...] | None = None
    calls: list[RecordedCall] = field(default_factory=list)
    finished: bool = False

    def nbytes(self) -> int:
        return sum(c.values.numel() * c.values.element_size() + c.indices.numel() * c.indices.element_size()
                   for c in self.calls)


class Recording:
    """Sparse codes of one SAE on one block, for the latest sampling run of the recorded model."""

    def __init__(self, sae: SparseAutoencoder, block: str, keep: int | None = None):
        self.n_latents = sae.n_latents
        self.keep = keep or sae.k or min(DENSE_SAE_KEEP, sae.n_latents)
        self.block = block
        self.sae_description = sae.describe()
        self.sae_path = sae.source_path  # lets readers find the SAE's feature atlas
        self.excluded = tuple(getattr(sae, "excluded", ()))  # always-on features, never ranked as "top"
        self.index_dtype = torch.int16 if sae.n_latents <= torch.iinfo(torch.int16).max else torch.int32
        self.run: Run | None = None
        self._runs_started = 0
        self._copies = HostCopies()  # the codes' copies to the host, read after one synchronisation

    # ------------------------------------------------------------ lifecycle (driven by the sampler)
    def begin_run(self, n_steps: int | None = None, latent_shape: tuple[int, ...] | None = None) -> None:
        """A new sampling call starts: the previous run's data is dropped."""
        self._runs_started += 1
        self.run = Run(self._runs_started, n_steps, tuple(latent_shape) if latent_shape is not None else None)

    def end_run(self) -> None:
        """Sampling finished (or failed): the codes' copies to the host are complete (one synchronisation)."""
        if self.run is not None:
            self._copies.wait()
            self.run.finished = True

    # ------------------------------------------------------------ per block call
    def add(self, ctx: CallContext, values: Tensor, indices: Tensor) -> None:
        """Store one call's code; ``values``/``indices`` are (rows, h, w, k)."""
        if self.run is None or self.run.finished:  # sampled without the run wrapper: open a run ourselves
            self.begin_run(ctx.n_steps)
        rows, h, w, k = values.shape
        self.run.calls.append(RecordedCall(
            step=ctx.step, sigma=ctx.sigma, chunk_kinds=tuple(ctx.chunk_kinds) or (POSITIVE,), grid=(h, w),
            values=self._copies.copy(values.detach().reshape(rows, h * w, k).clamp(max=FP16_MAX).to(torch.float16)),
            indices=self._copies.copy(indices.detach().reshape(rows, h * w, k).to(self.index_dtype)),
        ))

    # ------------------------------------------------------------ facts for the readers
    @property
    def calls(self) -> list[RecordedCall]:
        self._copies.wait()  # a reader may come before the run's end (sampled without the run wrapper)
        return [] if self.run is None else self.run.calls

    def nbytes(self) -> int:
        return 0 if self.run is None else self.run.nbytes()

    def summary(self) -> str:
        if self.run is None:
            return f"recording of {self.block}: nothing recorded yet"
        steps = sorted({c.step for c in self.calls if c.step is not None})
        return (f"recording of {self.block}: run {self.run.number}, {len(self.calls)} block calls, "
                f"{len(steps)} steps, {self.nbytes() / 1e6:.2f} MB")


class RecordPatch(BlockPatch):
    """Block patch that encodes the SAE input of every call and stores its sparse code.

    It changes nothing: recording never changes what the model computes.
    """

    def __init__(self, sae: SparseAutoencoder, recording: Recording):
        self.sae = sae
        self.input_kind = sae.input_kind
        self.recording = recording

    def prepare(self, ctx: CallContext, device: torch.device) -> None:
        self.sae.warm(device)

    def __call__(self, view: BlockView, ctx: CallContext) -> None:
        code = self.sae.encode_topk(view.sae_input(self.sae.input_kind), self.recording.keep)
        self.recording.add(ctx, code.values, code.indices)
