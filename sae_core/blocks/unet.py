"""The U-Net adapter: a SpatialTransformer maps (N, C, h, w) to (N, C, h, w), and ``output - input`` is exactly
the update it writes (``proj_out(...) + x_in``); every spatial position is one SAE position."""
from __future__ import annotations

from dataclasses import dataclass

from einops import rearrange
from torch import Tensor

from .patch import apply, for_sae


def to_tokens(t: Tensor) -> Tensor:
    """(N, C, h, w) block activations -> (N, h, w, C) vectors for the SAE."""
    return rearrange(t, "n c h w -> n h w c")


def from_tokens(t: Tensor) -> Tensor:
    return rearrange(t, "n h w c -> n c h w")


@dataclass(frozen=True)
class UNetBlockView:
    """One SpatialTransformer call: its input and output, (N, C, h, w)."""

    x_in: Tensor
    y_out: Tensor

    @property
    def n_rows(self) -> int:
        return self.y_out.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.y_out.shape[-2:])

    def sae_input(self, input_kind: str | None) -> Tensor:
        y = for_sae(self.y_out)
        return to_tokens(y - for_sae(self.x_in) if input_kind == "diff" else y)

    def with_delta(self, delta: Tensor) -> Tensor:
        return self.y_out + from_tokens(delta).to(self.y_out.dtype)


def patched_output(patch, x_in: Tensor, y_out: Tensor, ctx) -> Tensor:
    """What a patched SpatialTransformer returns for ``patch`` (a BlockPatch): ``y_out`` itself when unchanged."""
    return apply(patch, UNetBlockView(x_in, y_out), ctx, y_out)
