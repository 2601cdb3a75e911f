"""Feature edits of "Unpacking SDXL Turbo": add/paint, scale, ablate, clamp, replace-block (feature icon).

Every edit is a change ``du`` of the SAE input u (the block update or output) and the block output
becomes ``y + du``. Only the edited features' decoded contributions change, so the SAE reconstruction
error is kept and a position with zero edit weight is left bit-identical.

With ``d_f`` the decoder direction, ``z_f`` the feature's activation, ``w`` the mask x pass weight
and ``a_f`` the strength (times the feature's mean activation for add/clamp/replace when the SAE
carries statistics):

- add:     du = w a_f d_f                    (paint a feature onto an area)
- scale:   du = w a_f z_f d_f                (z_f -> (1 + a_f) z_f; -1 removes it, +5 amplifies)
- ablate:  du = -w z_f d_f                   (exactly removes the feature's contribution)
- clamp:   du = w (a_f - z_f) d_f            (z_f -> a_f)
- replace: du = w (sum_f a_f d_f - u)        (the update becomes one direction: the feature icon)
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks.context import CallContext, StepWindow
from ..blocks.masks import EditWeights
from ..blocks.patch import BlockPatch, BlockView
from ..errors import SAEInputError
from ..sae.feature_ids import FeatureEdit
from ..sae.model import SparseAutoencoder
from ..validate import check_choice

MODES = ("add", "scale", "ablate", "clamp", "replace")
MAX_STRENGTH = 100.0  # the widget's range; a per-feature strength in the text obeys the same bound


class FeatureSteering:
    """The change of the SAE input for a set of feature edits in one mode."""

    def __init__(self, sae: SparseAutoencoder, edits: list[FeatureEdit], mode: str):
        check_choice("mode", mode, MODES)
        if not edits:
            raise SAEInputError("no features to edit")
        self.sae = sae
        self.mode = mode
        self.features = torch.tensor([e.feature for e in edits], dtype=torch.long)
        strengths = torch.tensor([e.strength for e in edits], dtype=torch.float32)
        in_mean_units = mode in ("add", "clamp", "replace")
        self.amounts = strengths * sae.strength_unit(self.features) if in_mean_units else strengths
        self._directions = sae.W_dec.detach()[self.features].float().cpu()  # (F, C)
        self._cast: dict[tuple, tuple[Tensor, Tensor]] = {}

        # True when the edit cannot change anything (strength 0 in add/scale mode): decided once, on the host
        self.idle = self.mode in ("add", "scale") and bool((self.amounts == 0).all())
        # what the edit reads of the block: adding a direction needs the SAE input only to standardise it
        self.reads = "output" if mode == "add" and not sae.input_norm else sae.input_kind

    def _tensors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = (self.amounts.to(like.device, like.dtype), self._directions.to(like.device, like.dtype))
        return self._cast[key]

    def delta(self, u: Tensor, weight: Tensor) -> Tensor:
        """``du`` (N, h, w, C) for SAE input u (N, h, w, C) and edit weights (N, h, w)."""
        amounts, directions = self._tensors(u)
        w = weight[..., None]
        needs_norm = self.sae.input_norm or self.mode == "replace"
        us, norm = self.sae.standardize(u) if needs_norm else (u, None)
        if self.mode == "add":
            du = w * (amounts @ directions)
        elif self.mode == "replace":
            target = norm.undo(amounts @ directions) if norm is not None else amounts @ directions
            return w * (target - u)
        else:
            z = self.sae.feature_activations(us, self.features, standardized=needs_norm)
            if self.mode == "scale":
                coeff = z * amounts
            elif self.mode == "ablate":
                coeff = -z
            else:  # clamp
                coeff = amounts - z
            du = w * (coeff @ directions)
        return norm.undo_delta(du) if norm is not None else du


class SteerPatch(BlockPatch):
    """The per-call edit installed on one block: gating by sigma window, pass and mask, then ``du``."""

    def __init__(self, steering: FeatureSteering, window: StepWindow, passes: str, mask: Tensor | None):
        self.steering = steering
        self.window = window
        self.weights = EditWeights(mask, passes)
        self.input_kind = steering.reads

    def prepare(self, ctx: CallContext, device: torch.device) -> None:
        """Before each model call, outside any compiled region: the casts this edit uses on ``device``."""
        self.steering.sae.warm(device)
        self.steering._tensors(torch.empty(0, device=device))

    def skips(self, ctx: CallContext) -> bool:
        """Nothing to do in this call (a host fact: the edit is idle or the step is outside the window)."""
        return self.steering.idle or not self.window.contains(ctx.sigma)

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor | None:
        u = view.sae_input(self.input_kind)
        weight, any_weight = self.weights.weights(ctx, view.n_rows, view.grid, u)
        if not any_weight:
            return None
        return self.steering.delta(u, weight)
