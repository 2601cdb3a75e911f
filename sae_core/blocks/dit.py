"""The diffusion-transformer adapter: blocks that map token sequences, called through ComfyUI's ``dit`` block
replacement (``transformer_options["patches_replace"]["dit"][(kind, i)]``) with a dict of inputs and returning a
dict of outputs.

The generated image is a patchified grid of ``h x w`` tokens (2 x 2 latent patches, padded when odd). Double
(dual-stream) blocks keep it in their ``img`` stream, followed by any reference-image tokens (Flux Kontext, Flux.2
and Qwen-Image edit); single blocks of Flux see one sequence ``cat(txt, img, refs)``. A view exposes only the
generated image's own tokens: edits, masks, heatmaps and collection never touch text or reference tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SAEInputError
from .context import CallContext
from .layout import Block, BlockLayout
from .patch import for_sae

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


@dataclass(frozen=True)
class TokenBlockView:
    """One call of a DiT block: the generated image's ``grid`` tokens at ``start`` of the output sequence ``y_out``
    (N, L, C), and the same tokens of the input (``x_image``, (N, h*w, C)), copied before the block ran: ComfyUI's
    Flux blocks add their update to their input in place. None when the patch reads only the output."""

    x_image: Tensor | None
    y_out: Tensor
    start: int
    grid: tuple[int, int]

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

    def with_delta(self, delta: Tensor) -> Tensor:
        y = self.y_out
        edited = y[:, self.start:self.stop] + delta.reshape(delta.shape[0], -1, delta.shape[-1]).to(y.dtype)
        return torch.cat([y[:, :self.start], edited, y[:, self.stop:]], dim=1)


def image_start(kind: str, args: dict, grid: tuple[int, int], ctx: CallContext, patch: int) -> int:
    """Where the generated image's tokens start in the block's ``img`` sequence."""
    if kind != SINGLE:
        return 0
    options = args.get("transformer_options") or {}
    img_slice = options.get("img_slice")  # ComfyUI 0.33+: [text tokens, ...]
    if isinstance(img_slice, (list, tuple)) and img_slice:
        return int(img_slice[0])
    return args["img"].shape[1] - grid[0] * grid[1] - ctx.ref_tokens(patch)  # cat(txt, img, refs)


def locate(kind: str, args: dict, ctx: CallContext, patch: int) -> tuple[int, tuple[int, int]]:
    """(start, grid) of the generated image's tokens in this call's ``img`` sequence, checked."""
    grid = token_grid(ctx.latent_shape, patch)
    start = image_start(kind, args, grid, ctx, patch)
    length = args["img"].shape[1]
    if start < 0 or start + grid[0] * grid[1] > length:
        raise SAEInputError(f"the block's sequence of {length} tokens does not hold the {grid[0]}x{grid[1]} "
                            f"image tokens at {start}; this model's token layout is not supported")
    return start, grid


def image_input(args: dict, start: int, grid: tuple[int, int]) -> Tensor:
    """A copy of the image tokens of the block's input, taken before the block runs."""
    return args["img"][:, start:start + grid[0] * grid[1]].clone()


def block_view(kind: str, args: dict, out: dict, ctx: CallContext, patch: int,
               x_image: Tensor | None = None) -> TokenBlockView:
    """The view of a call whose input image tokens (``x_image``, from :func:`image_input`) were kept; without them,
    taken from ``args`` now (right only for blocks that do not write into their input)."""
    start, grid = locate(kind, args, ctx, patch)
    if x_image is None:
        x_image = image_input(args, start, grid)
    return TokenBlockView(x_image, out["img"], start, grid)


@dataclass(frozen=True)
class BlockList:
    """One kind of block of a DiT family: where its modules are, and how each notation names block i."""

    kind: str          # DOUBLE or SINGLE: ComfyUI's replacement key
    attribute: str     # the ModuleList on the diffusion model (double_blocks, joint_blocks, ...)
    diffusers: str     # diffusers prefix (transformer_blocks, single_transformer_blocks)


@dataclass(frozen=True)
class DiTFamily:
    """What SAE Lab needs to know about one DiT architecture; each lives in a small file in ``families/``."""

    name: str                      # model_family of SAEs trained on it: flux, sd3, qwen_image
    title: str                     # as users call it, for messages
    class_names: tuple[str, ...]   # ComfyUI diffusion-model classes (matched by name: no ComfyUI import here)
    blocks: tuple[BlockList, ...]
    width: Callable[[object], int]  # hidden size, from the diffusion model

    def matches(self, diffusion_model) -> bool:
        return any(cls.__name__ in self.class_names for cls in type(diffusion_model).__mro__) and \
            all(hasattr(diffusion_model, b.attribute) for b in self.blocks)

    def layout(self, diffusion_model, label: str) -> BlockLayout:
        width = int(self.width(diffusion_model))
        blocks = [Block(f"{b.diffusers}.{i}", f"{b.attribute}.{i}", width, kind=b.kind, index=i)
                  for b in self.blocks for i in range(len(getattr(diffusion_model, b.attribute)))]
        return BlockLayout(label, blocks)

    def patch_size(self, diffusion_model) -> int:
        size = getattr(diffusion_model, "patch_size", 2)
        return int(size[-1] if isinstance(size, (tuple, list)) else size)
