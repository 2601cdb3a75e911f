"""Edits on a text-encoder layer: Concept Steerers' concept direction, and feature edits by id.

Concept Steerers (Kim & Ghadiyaram 2025): the layer's output for a *concept prompt* (T, C) is encoded by the SAE
without top-k (every latent its ReLU'd pre-activation), and that code, times a strength, is decoded through the
decoder directions alone (no decoder bias) into one vector per token position; the steered encoder adds it to its
layer output at the same positions, for every prompt it encodes. A prompt longer than the concept prompt (T5
prompts are not padded to one length) gets the direction of the concept's last position (a padding token's) at its
extra positions. Strength 0 is idle (bit-identical).

Feature edits by id use SAE Feature Steer's math (:class:`..edits.steering.FeatureSteering`) on every token.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks.context import CallContext
from ..blocks.patch import BlockPatch, BlockView, for_sae
from ..errors import SAEInputError
from ..sae.model import SparseAutoencoder

TEXT_MODES = ("concept", "add", "scale", "ablate", "clamp")  # concept: a prompt's direction; the others: feature ids


@torch.no_grad()
def concept_direction(sae: SparseAutoencoder, activations: Tensor, strength: float) -> Tensor:
    """(T, C): the concept prompt's layer output (T, C) encoded without top-k and decoded without the decoder bias,
    times ``strength`` (in the layer's own units: SAeUron-style standardising SAEs scale it back per token)."""
    if activations.ndim != 2 or activations.shape[0] == 0:
        raise SAEInputError(f"a concept prompt's layer output must be (tokens, width), got {tuple(activations.shape)}")
    x = for_sae(activations.detach())
    xs, norm = sae.standardize(x)
    pre = sae.pre_activations(xs, standardized=True)
    z = pre.relu() if sae.activation == "topk" else sae.activate(pre)
    direction = (z * strength) @ sae.W_dec.detach().to(z.device, z.dtype)
    return norm.undo_delta(direction).float().cpu()


class CaptureOutput(BlockPatch):
    """Keeps the SAE input of the first call of its layer (the concept prompt's encoding) and changes nothing. A
    copy: ComfyUI's CLIP and T5 layers add their updates to their input in place, so the next layer would
    overwrite this one's output."""

    def __init__(self):
        self.captured: Tensor | None = None

    def __call__(self, view: BlockView, ctx: CallContext) -> None:
        if self.captured is None:
            self.captured = view.sae_input("output").detach().clone()
        return None


class ConceptSteerPatch(BlockPatch):
    """Adds a concept direction (T, C) at the matching token positions of every row of every call."""

    input_kind = "output"

    def __init__(self, direction: Tensor, idle: bool):
        self.direction = direction.float().cpu()
        self.idle = idle  # strength 0: nothing to add, decided once on the host
        self._cast: dict[tuple, Tensor] = {}

    def skips(self, ctx: CallContext) -> bool:
        return self.idle

    def aligned(self, tokens: int, like: Tensor) -> Tensor:
        """(1, 1, tokens, C) on ``like``'s device and dtype: the concept's positions, the last one repeated past its
        end."""
        key = (tokens, like.device, like.dtype)
        if key not in self._cast:
            d = self.direction
            if tokens > d.shape[0]:
                d = torch.cat([d, d[-1:].expand(tokens - d.shape[0], -1)])
            self._cast[key] = d[:tokens].to(like.device, like.dtype)[None, None]
        return self._cast[key]

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor:
        u = view.sae_input(self.input_kind)
        return self.aligned(u.shape[2], u).expand_as(u)


class TokenSelection:
    """The token positions of chosen words in what the encoder is encoding now. ``see`` is given the token ids of
    each call of the encoder (rows = token chunks) before its layers run; a position is selected when its token is
    one of the words' tokens (so a word's sub-word pieces are found wherever they occur)."""

    def __init__(self, word_tokens: set[int]):
        if not word_tokens:
            raise SAEInputError("the chosen words give no tokens; write words that occur in the prompt")
        self.word_tokens = frozenset(word_tokens)
        self._rows: list[list[int]] = []

    def see(self, tokens) -> None:
        """Token ids of the current call, one list per chunk (entries that are embeddings, not ids, never match)."""
        self._rows = [[int(t) if isinstance(t, int) or (isinstance(t, Tensor) and t.numel() == 1) else -1
                       for t in row] for row in tokens]

    def weights(self, n_rows: int, n_tokens: int) -> Tensor:
        """(N, 1, T): 1 at the chosen words' tokens of each row, else 0 (rows the encoder added, such as the empty
        prompt ComfyUI appends for weighted prompts, get 0)."""
        out = torch.zeros(n_rows, 1, n_tokens)
        for r, row in enumerate(self._rows[:n_rows]):
            for i, token in enumerate(row[:n_tokens]):
                if token in self.word_tokens:
                    out[r, 0, i] = 1.0
        return out


class OnSelectedTokens(BlockPatch):
    """Another patch's change kept only at the selected tokens (every edit here is linear in its weight)."""

    def __init__(self, inner: BlockPatch, selection: TokenSelection):
        self.inner = inner
        self.selection = selection
        self.input_kind = inner.input_kind

    def skips(self, ctx: CallContext) -> bool:
        return self.inner.skips(ctx)

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor | None:
        weights = self.selection.weights(view.n_rows, view.grid[1])
        if not bool(weights.any()):
            return None
        delta = self.inner(view, ctx)
        return None if delta is None else delta * weights[..., None].to(delta.device, delta.dtype)
