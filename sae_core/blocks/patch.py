"""The contract between SAE Lab's patches and the blocks they patch.

A *block view* is one call of one transformer block as an architecture adapter presents it: the positions of the
generated image on a grid, what an SAE reads there (the block's update or its output), and a way to write a
change back into the block's own output. A *block patch* is called with the view and the call's context after the
block ran, and returns the change of the SAE input at every position, or None to leave the output untouched.
Only adapters (``unet``, the DiT families) know how a block lays out its tensors; patches see (N, h, w, C).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from .context import CallContext

INPUT_KINDS = ("diff", "output")  # what an SAE encodes: the block's update (output - input) or its output


class BlockView(Protocol):
    @property
    def n_rows(self) -> int:
        """Batch rows of the call (pass chunks x images)."""

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): the generated image's positions at this block."""

    def sae_input(self, input_kind: str | None) -> Tensor:
        """(N, h, w, C): the block's update (``"diff"``) or output at every position of the generated image."""

    def with_delta(self, delta: Tensor) -> Any:
        """The block's output with ``delta`` (N, h, w, C) added at the generated image's positions."""


class BlockPatch:
    """The base class of SAE Lab's patches (as diffusers' ModelHook: every method but ``__call__`` is a documented
    no-op). Adapters call ``skips`` before the block runs and ``__call__`` after it; the APPLY_MODEL wrapper calls
    ``prepare`` once per model call, before any block runs."""

    input_kind: str | None = "diff"  # what the patch reads: "diff" needs the block's input kept (adapters copy it)

    def prepare(self, ctx: CallContext, device: torch.device) -> None:
        """Before each model call, outside any region torch.compile traces: build caches and casts on ``device``
        (host work that the block call must not do). Nothing by default."""

    def skips(self, ctx: CallContext) -> bool:
        """True when this call certainly changes and reads nothing (a host fact: idle, or outside the window), so
        adapters need not keep the block's input. False by default."""
        return False

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor | None:
        """The change of the SAE input (N, h, w, C), or None when the output stays exactly as it is."""
        raise NotImplementedError


HALF = (torch.float16, torch.bfloat16)


def for_sae(t: Tensor) -> Tensor:
    """What SAE math runs on: fp32 for fp16/bf16 blocks. Top-k selection and unlearning thresholds compare
    pre-activations that half precision rounds to 8 (bf16) or 11 (fp16) bits, which picks other features near a
    tie; fp32 models keep their own tensors. The change an edit makes is cast back to the block's dtype."""
    return t.float() if t.dtype in HALF else t


def reads_block_input(patch: BlockPatch, ctx: CallContext) -> bool:
    """Whether ``patch`` will read the block's input in this call: adapters whose blocks update their input in place
    (Flux) copy it first, which is wasted on a patch that is idle or outside its window (``skips(ctx)``)."""
    return patch.input_kind == "diff" and not patch.skips(ctx)


def apply(patch: BlockPatch, view: BlockView, ctx: CallContext, output: Any) -> Any:
    """What the patched block returns: its own output object when the patch skips this call or changes nothing
    (bit-identical)."""
    if patch.skips(ctx):
        return output
    delta = patch(view, ctx)
    return output if delta is None else view.with_delta(delta)
