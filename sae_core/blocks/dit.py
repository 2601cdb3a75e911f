"""The diffusion-transformer adapter: blocks that map token sequences, called through ComfyUI's ``dit`` block
replacement (``transformer_options["patches_replace"]["dit"][(kind, i)]``) with a dict of inputs and returning a
dict of outputs.

The generated image is a patchified grid of ``h x w`` tokens (``patch`` x ``patch`` latent patches, padded when
odd) somewhere in one stream of the block's sequence; a family's :class:`TokenLayout` says where. Flux's double
(dual-stream) blocks keep it at the start of their ``img`` stream, followed by any reference-image tokens (Flux
Kontext, Flux.2 and Qwen-Image edit); its single blocks see one sequence ``cat(txt, img, refs)``. A view exposes
only the generated image's own tokens: edits, masks, heatmaps and collection never touch text or reference tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SAEInputError
from .context import CallContext
from .patch import BlockPatch, apply, for_sae, reads_block_input

DOUBLE, SINGLE = "double_block", "single_block"  # ComfyUI's replacement keys


def token_grid(latent_shape: tuple[int, ...] | None, patch: int) -> tuple[int, int]:
    """(h, w) tokens of the generated image for a latent (B, C, [T,] H, W): patches of ``patch`` x ``patch``."""
    if not latent_shape or len(latent_shape) < 4:
        raise SAEInputError("the sampler did not say the latent's size (no SAE Lab call context); patch the model "
                            "with an SAE Lab node and sample it with a ComfyUI sampler")
    if len(latent_shape) == 5 and latent_shape[2] != 1:
        raise SAEInputError(f"a latent of {latent_shape[2]} frames is a video; SAE Lab patches image models")
    h, w = latent_shape[-2:]
    return (h + patch // 2) // patch, (w + patch // 2) // patch


class TokenLayout:
    """Where one kind of block holds the generated image's tokens: in the sequence ``args[stream]`` (and the output
    ``out[stream]``), starting at ``image_start``. This base class is the image at the start of its stream
    (Flux's double blocks, SD3's joint blocks, Qwen-Image's blocks: the image, then any reference tokens)."""

    stream = "img"

    def image_start(self, sequence: Tensor, n_image: int, args: dict, ctx: CallContext, patch: int) -> int:
        return 0

    def view(self, x_image: Tensor | None, out: dict, start: int, grid: tuple[int, int]) -> TokenBlockView:
        """What a patch sees of one call (a layout with other tensors can return another BlockView)."""
        return TokenBlockView(x_image, out, self.stream, start, grid)


class ImageAfterText(TokenLayout):
    """One sequence ``cat(txt, img, refs)`` (Flux's single blocks): ComfyUI 0.33+ says where the text ends
    (``transformer_options["img_slice"]``); before, the image is counted back from the end past the references."""

    def image_start(self, sequence: Tensor, n_image: int, args: dict, ctx: CallContext, patch: int) -> int:
        img_slice = (args.get("transformer_options") or {}).get("img_slice")
        if isinstance(img_slice, (list, tuple)) and img_slice:
            return int(img_slice[0])
        return sequence.shape[1] - n_image - ctx.ref_tokens(patch)


IMAGE_FIRST, IMAGE_AFTER_TEXT = TokenLayout(), ImageAfterText()


def locate(tokens: TokenLayout, args: dict, ctx: CallContext, patch: int) -> tuple[int, tuple[int, int]]:
    """(start, grid) of the generated image's tokens in this call's sequence, checked."""
    grid = token_grid(ctx.latent_shape, patch)
    sequence = args[tokens.stream]
    start = tokens.image_start(sequence, grid[0] * grid[1], args, ctx, patch)
    length = sequence.shape[1]
    if start < 0 or start + grid[0] * grid[1] > length:
        raise SAEInputError(f"the block's sequence of {length} tokens does not hold the {grid[0]}x{grid[1]} "
                            f"image tokens at {start}; this model's token layout is not supported")
    return start, grid


@dataclass(frozen=True)
class TokenBlockView:
    """One call of a DiT block: the generated image's ``grid`` tokens at ``start`` of the output sequence
    ``out[stream]`` (N, L, C), and the same tokens of the input (``x_image``, (N, h*w, C)), copied before the block
    ran (ComfyUI's Flux blocks add their update to their input in place); None when the patch reads only the
    output."""

    x_image: Tensor | None
    out: dict
    stream: str
    start: int
    grid: tuple[int, int]

    @property
    def y_out(self) -> Tensor:
        return self.out[self.stream]

    @property
    def n_rows(self) -> int:
        return self.y_out.shape[0]

    @property
    def stop(self) -> int:
        return self.start + self.grid[0] * self.grid[1]

    def sae_input(self, input_kind: str | None) -> Tensor:
        u = for_sae(self.y_out[:, self.start:self.stop])
        if input_kind == "diff":
            if self.x_image is None:
                raise SAEInputError("this block's input was not kept, so its update cannot be read")
            u = u - for_sae(self.x_image)
        return u.reshape(u.shape[0], *self.grid, u.shape[-1])

    def with_delta(self, delta: Tensor) -> dict:
        """The block's output dict with ``delta`` (N, h, w, C) added to the image tokens of its stream."""
        y = self.y_out
        edited = y[:, self.start:self.stop] + delta.reshape(delta.shape[0], -1, delta.shape[-1]).to(y.dtype)
        return {**self.out, self.stream: torch.cat([y[:, :self.start], edited, y[:, self.stop:]], dim=1)}


@dataclass(frozen=True)
class BlockList:
    """One numbered list of a DiT family's blocks: how ComfyUI replaces them, where their modules are, how each
    notation names block i, and where a call holds the image's tokens."""

    kind: str                    # DOUBLE or SINGLE: ComfyUI's replacement key
    attribute: str               # the ModuleList on the diffusion model (double_blocks, joint_blocks, ...)
    diffusers: str               # diffusers prefix (transformer_blocks, single_transformer_blocks)
    short: tuple[str, ...]       # short codes: the first is printed, the others accepted (block, double, ...)
    tokens: TokenLayout = IMAGE_FIRST


def patched_block(patch: BlockPatch, tokens: TokenLayout, args: dict, run_block: Callable[[dict], dict],
                  ctx: CallContext, patch_size: int) -> dict:
    """What a patched DiT block returns: ``run_block(args)``'s own dict when the patch changes nothing. The image
    tokens of the input are copied first, and only for a patch that will read them (blocks update in place)."""
    start, grid = locate(tokens, args, ctx, patch_size)
    sequence = args[tokens.stream]
    x_image = sequence[:, start:start + grid[0] * grid[1]].clone() if reads_block_input(patch, ctx) else None
    out = run_block(args)
    return apply(patch, tokens.view(x_image, out, start, grid), ctx, out)
