"""SAeUron concept unlearning (papers.md section 4), with the SAE error kept exactly.

For a concept profile (per-step means ``m_c`` over the target prompts and ``m_o`` over the contrast
prompts of position-averaged latents) and each step t:

- score:      ``s[f] = m_c[f] / sum(m_c) - m_o[f] / sum(m_o)``  (normalised means, eps 1e-8 as the reference)
- selection:  features with ``s[f] > quantile(s, percentile / 100)`` (linear interpolation)
- threshold:  the paper uses the mean over *all concepts* of each concept's mean activation. A profile has
              one target set and one flat contrast set; we treat the target set as one concept and every
              contrast prompt as one other concept: ``thr = (m_c + K m_o) / (K + 1)`` with K contrast prompts.
              This is exactly the paper's rule when each contrast prompt stands for one other concept (its
              other set is ~50 styles, one mean each), and it keeps the threshold near the average activation
              over everything, as in the paper.
- edit:       at every position where a selected feature has ``z_f > thr[f]``: ``z_f <- z_f * m_c[f] * multiplier``.

The block output becomes ``y + decode(z') - decode(z) = y + sum_f (z'_f - z_f) d_f`` (no bias, no
reconstruction): positions and rows where nothing is edited are returned bit-identical. The reference
adds ``x_hat - x`` instead (BUG, not copied).

Steps are matched by sigma: a run's step uses the profile step whose sigma is nearest in log-sigma, so
a profile recorded with N steps applies to a run with M steps, another scheduler or img2img denoise.

Several concepts at once: their selected features are concatenated in one patch, in the order given.
A feature selected by more than one concept at a step is edited once per position, by the first
concept (in order) whose threshold it exceeds there, so overlapping concepts never compound.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks import host
from ..blocks.context import ALWAYS, CallContext, StepWindow, nearest
from ..blocks.passes import UNLEARN_PASSES, PassRows
from ..blocks.patch import BlockPatch, BlockView
from ..errors import SAEInputError
from ..observe.concept_profile import ConceptProfile, feature_scores
from ..sae.model import SparseAutoencoder
from ..validate import check_number

DEFAULT_PERCENTILE = 99.999
DEFAULT_MULTIPLIER = -1.0
PERCENTILE_RANGE = (0.001, 99.999)  # what a node accepts (its widget steps by 0.001)
MAX_MULTIPLIER = 100.0


# ---------------------------------------------------------------------- selection
def check_percentile(percentile: float) -> float:
    percentile = float(check_number("percentile", percentile) if not isinstance(percentile, float) else percentile)
    if not 0.0 < percentile < 100.0 or math.isnan(percentile):
        raise SAEInputError(f"percentile {percentile} is outside (0, 100); use e.g. 99.999 for styles or "
                            f"99.99-99.999 for objects (higher keeps fewer features)")
    return percentile


def select_features(scores: Tensor, percentile: float) -> Tensor:
    """Indices (sorted by descending score) of the features scoring above the percentile of one step's scores."""
    percentile = check_percentile(percentile)
    scores = scores.double()
    cut = torch.quantile(scores, percentile / 100.0)
    chosen = torch.nonzero(scores > cut).flatten()
    return chosen[torch.argsort(scores[chosen], descending=True, stable=True)]


def thresholds(profile: ConceptProfile) -> Tensor:
    """(steps, n_latents) float32: the mean over concepts, with each contrast prompt as one concept."""
    k = profile.n_other
    return (profile.target_mean.float() + k * profile.other_mean.float()) / (k + 1)


@dataclass(frozen=True)
class StepSelection:
    """What one concept edits at one of its profile's steps."""

    features: Tensor  # (F,) long, by descending score
    scores: Tensor    # (F,) float64
    thresholds: Tensor  # (F,) float32
    scales: Tensor    # (F,) float32: m_c[f] * multiplier


@dataclass(frozen=True)
class ConceptSelection:
    profile: ConceptProfile
    percentile: float
    multiplier: float
    steps: tuple[StepSelection, ...]

    @property
    def name(self) -> str:
        return self.profile.name


def select_concept(profile: ConceptProfile, percentile: float = DEFAULT_PERCENTILE,
                   multiplier: float = DEFAULT_MULTIPLIER) -> ConceptSelection:
    """The features, thresholds and scales of every profile step."""
    percentile = check_percentile(percentile)
    multiplier = check_number("multiplier", multiplier, -MAX_MULTIPLIER, MAX_MULTIPLIER)
    scores = feature_scores(profile.target_mean, profile.other_mean)
    thr = thresholds(profile)
    steps = []
    for t in range(profile.n_steps):
        chosen = select_features(scores[t], percentile)
        steps.append(StepSelection(chosen, scores[t, chosen], thr[t, chosen],
                                   profile.target_mean[t, chosen].float() * float(multiplier)))
    return ConceptSelection(profile, percentile, float(multiplier), tuple(steps))


# ---------------------------------------------------------------------- step matching
def match_step(profile_sigmas: Sequence[float], sigma: float | None, step: int | None = None,
               n_steps: int | None = None) -> int:
    """The profile step for a run's current sigma: nearest in log-sigma on the profile's own schedule.

    Without a sigma, the run's fraction of the schedule (step / n_steps) picks the profile step at the
    same fraction; with neither, the first step.
    """
    n = len(profile_sigmas)
    if n == 0:
        raise SAEInputError("the concept profile has no steps")
    if sigma is not None and math.isfinite(sigma):
        target = math.log(max(sigma, 1e-12))
        return nearest([math.log(max(s, 1e-12)) for s in profile_sigmas], target)
    if step is not None and n_steps:
        return min(n - 1, int(round(step / n_steps * n)))
    return 0


# ---------------------------------------------------------------------- the edit
class _Table:
    """Selected entries of all concepts for one combination of profile steps, cast to the caller's dtype.

    Also holds the encoder rows of the selected features: their pre-activations bound their activations
    (``z_f <= max(pre_f, 0)`` for TopK, ReLU and JumpReLU SAEs), so positions where no selected feature's
    pre-activation reaches its threshold cannot be edited and skip the full SAE encode.
    """

    def __init__(self, sae: SparseAutoencoder, entries: list[StepSelection]):
        feats = torch.cat([e.features for e in entries]) if entries else torch.zeros(0, dtype=torch.long)
        self.size = int(feats.numel())
        self.unique, self.entry_to_unique = torch.unique(feats, return_inverse=True)
        self.thresholds = torch.cat([e.thresholds for e in entries]).float() if entries else torch.zeros(0)
        self.scales = torch.cat([e.scales for e in entries]).float() if entries else torch.zeros(0)
        same = feats[:, None] == feats[None, :]
        earlier = torch.ones(self.size, self.size, dtype=torch.bool).tril(-1)
        self.blockers = (same & earlier).float()  # [e, e'] = 1 when e' < e edits the same feature
        self.has_overlap = bool(self.blockers.any())
        self.prefilter = self.size > 0 and bool((self.thresholds >= 0).all())
        w = {name: getattr(sae, name).detach().float().cpu() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        self.directions = w["W_dec"][feats]
        self.enc_rows, self.enc_bias, self.b_dec = w["W_enc"][self.unique], w["b_enc"][self.unique], w["b_dec"]
        self._cast: dict[tuple, tuple] = {}

    def tensors(self, like: Tensor) -> tuple:
        key = (like.device, like.dtype)
        if key not in self._cast:
            floats = (self.thresholds, self.scales, self.directions, self.blockers, self.enc_rows, self.enc_bias,
                      self.b_dec)
            self._cast[key] = tuple(t.to(like.device, like.dtype) for t in floats) + (
                self.unique.to(like.device), self.entry_to_unique.to(like.device))
        return self._cast[key]


class _StepStack:
    """Every profile step of every concept in padded tensors, for the accelerator path: the step is chosen on the
    device (nearest profile sigma in log-sigma to the call's sigma tensor), so a call reads nothing back to the host,
    and under torch.compile one graph serves every step.

    Concept c's steps have ``E_c`` entries each (padded with entries that never fire: threshold +inf); ``features``
    index into ``union``, the features any step of any concept selects, whose activations one encode gives.
    """

    def __init__(self, sae: SparseAutoencoder, selections: list[ConceptSelection]):
        feats = [st.features.long() for sel in selections for st in sel.steps]
        self.union = torch.unique(torch.cat(feats)) if feats else torch.zeros(0, dtype=torch.long)
        self.empty = self.union.numel() == 0
        position = {int(f): i for i, f in enumerate(self.union.tolist())}
        self.log_sigmas, self.features, self.ids, self.thresholds, self.scales = [], [], [], [], []
        pad_id = -1
        for sel in selections:
            width = max(1, max((st.features.numel() for st in sel.steps), default=0))
            steps = len(sel.steps)
            f = torch.zeros(steps, width, dtype=torch.long)
            ids = torch.empty(steps, width, dtype=torch.long)
            thr = torch.full((steps, width), float("inf"))
            scale = torch.ones(steps, width)
            for j, st in enumerate(sel.steps):
                n = st.features.numel()
                f[j, :n] = torch.tensor([position[int(x)] for x in st.features.tolist()], dtype=torch.long)
                ids[j, :n] = st.features
                thr[j, :n], scale[j, :n] = st.thresholds.float(), st.scales.float()
                for k in range(n, width):  # padding: distinct ids, so no real entry is blocked by it
                    ids[j, k], pad_id = pad_id, pad_id - 1
            self.log_sigmas.append(torch.tensor([math.log(max(x, 1e-12)) for x in sel.profile.sigmas]))
            self.features.append(f)
            self.ids.append(ids)
            self.thresholds.append(thr)
            self.scales.append(scale)
        total = sum(f.shape[1] for f in self.features)
        self.earlier = torch.ones(total, total, dtype=torch.bool).tril(-1)
        self.directions = sae.W_dec.detach().float().cpu()[self.union]
        self.first_sigma = float(selections[0].profile.sigmas[0]) if selections[0].profile.sigmas else 1.0
        self._cast: dict[torch.device, tuple] = {}

    def tensors(self, device: torch.device) -> tuple:
        if device not in self._cast:
            def move(ts):
                return [t.to(device) for t in ts]

            self._cast[device] = (move(self.log_sigmas), move(self.features), move(self.ids), move(self.thresholds),
                                  move(self.scales), self.earlier.to(device), self.union.to(device),
                                  self.directions.to(device))
        return self._cast[device]

    def entries(self, sigma: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(union, union index, threshold, scale, blockers, direction) of this call's entries, chosen on the
        device."""
        log_sigmas, features, ids, thresholds, scales, earlier, union, directions = self.tensors(device)
        target = sigma.to(device=device, dtype=torch.float32).clamp_min(1e-12).log()
        # one profile step per concept, kept on the device (indexing with it as a Python number would read it back)
        picks = [(ls - target).abs().argmin().reshape(1) for ls in log_sigmas]

        def rows(tables: list[Tensor]) -> Tensor:
            return torch.cat([table.index_select(0, j)[0] for table, j in zip(tables, picks)])

        f, i, thr, scale = rows(features), rows(ids), rows(thresholds), rows(scales)
        blockers = ((i[:, None] == i[None, :]) & earlier).float()
        return union, f, thr, scale, blockers, directions[f]


def edit_coefficients(z: Tensor, thr: Tensor, scales: Tensor, blockers: Tensor | None = None) -> Tensor:
    """``z'_f - z_f`` per entry, (..., E), for the activations z (..., E) of the entries' features.

    An entry edits where its feature exceeds its threshold; with overlapping entries (``blockers[e, e']`` = 1
    when an earlier e' has the same feature) only the first one that fires does.
    """
    fire = z > thr
    if blockers is not None:
        blocked = (fire.to(blockers.dtype) @ blockers.t()) > 0
        fire = fire & ~blocked
    return torch.where(fire, z * (scales - 1), torch.zeros_like(z))


class UnlearnPatch(BlockPatch):
    """The per-call edit of SAEUnlearnConcept on one block: ``y + sum_f (z'_f - z_f) d_f``."""

    PREFILTER_MARGIN = 1e-2  # relative slack of the cheap pre-activation bound (rounding differs from the full encode)

    def __init__(self, sae: SparseAutoencoder, selections: list[ConceptSelection], window: StepWindow = ALWAYS,
                 passes: str = "both"):
        self.rows = PassRows(passes, UNLEARN_PASSES)
        if not selections:
            raise SAEInputError("no concept to unlearn")
        self.sae = sae
        self.input_kind = sae.input_kind
        self.selections = list(selections)
        self.window = window
        self._tables: dict[tuple[int, ...], _Table] = {}
        self._steps: _StepStack | None = None  # every step's entries, for the accelerator path
        self._edited_host, self._edited_device = 0, None  # running count of edited positions, for diagnostics
        self.encoded_positions = 0  # positions that needed the full SAE encode (CPU path)

    def prepare(self, ctx: CallContext, device: torch.device) -> None:
        """Before each model call, outside any compiled region: the tables and their casts, built on the host."""
        self.sae.warm(device)
        self._stack().tensors(device)  # the accelerator (and compiled) path
        if device.type == "cpu" and self.window.contains(ctx.sigma):
            self.table(ctx).tensors(torch.empty(0, device=device))

    def skips(self, ctx: CallContext) -> bool:
        """Outside its window (a host fact): the block's input need not be kept."""
        return not self.window.contains(ctx.sigma)

    def steps_for(self, ctx: CallContext) -> tuple[int, ...]:
        return tuple(match_step(s.profile.sigmas, ctx.sigma, ctx.step, ctx.n_steps) for s in self.selections)

    def table(self, ctx: CallContext) -> _Table:
        key = self.steps_for(ctx)
        if key not in self._tables:
            entries = [s.steps[j] for s, j in zip(self.selections, key) if s.steps[j].features.numel()]
            self._tables[key] = _Table(self.sae, entries)
        return self._tables[key]

    @property
    def edited_positions(self) -> int:
        """Positions edited so far (device counts are read here, not in the patch)."""
        return self._edited_host + (int(self._edited_device) if self._edited_device is not None else 0)

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor | None:
        """The edit; without a gradient, unless the block's input carries one (an adversarial attack through the
        model, sae_core/evaluate/attack.py). Then which entries fire is a discrete choice held constant and the
        gradient flows through the kept activations ``z_f (s_f - 1)``; the value is the same as without autograd."""
        u = view.sae_input(self.sae.input_kind)
        with torch.set_grad_enabled(torch.is_grad_enabled() and u.requires_grad):
            return self._edit(view, ctx, u)

    def _edit(self, view: BlockView, ctx: CallContext, u: Tensor) -> Tensor | None:
        signs, any_rows = self.rows.signs(ctx, view.n_rows, u)
        if not any_rows:
            return None
        rows = signs != 0
        if host.host_reads_are_free(u):
            table = self.table(ctx)
            if not table.size:
                return None
            us, norm = self.sae.standardize(u)
            return self._edit_candidates(table, table.tensors(u), u, us, norm, rows)
        stack = self._stack()
        if stack.empty:
            return None
        us, norm = self.sae.standardize(u)
        return self._edit_everywhere(stack, us, norm, rows, ctx)

    def _edit_everywhere(self, stack: _StepStack, us: Tensor, norm, rows: Tensor, ctx: CallContext) -> Tensor:
        """On an accelerator: every position through the same kernels, the profile step chosen on the device, nothing
        read back to the host. Positions where nothing fires get a zero change: the output there is unchanged."""
        sigma = ctx.sigma_tensor if ctx.sigma_tensor is not None else torch.tensor(
            ctx.sigma if ctx.sigma is not None else stack.first_sigma)
        union, f, thr, scale, blockers, directions = stack.entries(sigma, us.device)
        z = self.sae.feature_activations(us, union, standardized=True)[..., f]
        coeff = edit_coefficients(z, thr.to(z.dtype), scale.to(z.dtype), blockers.to(z.dtype))
        coeff = coeff * rows[:, None, None, None].to(coeff.dtype)
        changed = (coeff != 0).any(dim=-1).sum()
        self._edited_device = changed if self._edited_device is None else self._edited_device + changed
        du = coeff @ directions.to(coeff.dtype)
        return du * norm.scale if norm.scale is not None else du

    def _stack(self) -> _StepStack:
        if self._steps is None:
            self._steps = _StepStack(self.sae, self.selections)
        return self._steps

    def _edit_candidates(self, table: _Table, tensors: tuple, u: Tensor, us: Tensor, norm, rows: Tensor):
        """On the CPU: only positions where a selected feature can reach its threshold get the full encode (an
        exact bound from their pre-activations), which host reads make cheap to pick."""
        thr, scales, directions, blockers, enc_rows, enc_bias, b_dec, unique, entry_to_unique = tensors
        candidates = rows[:, None, None].expand(us.shape[:-1])
        if table.prefilter:
            pre = ((us - b_dec) @ enc_rows.t() + enc_bias)[..., entry_to_unique]  # (N, h, w, E)
            reach = pre > thr - self.PREFILTER_MARGIN * (thr.abs() + pre.abs())
            candidates = candidates & reach.any(dim=-1)
        if not bool(candidates.any()):
            return None
        picked = us[candidates]  # (P, C): only positions that may fire get the full (top-k) encode
        self.encoded_positions += picked.shape[0]
        z = self.sae.feature_activations(picked, unique, standardized=True)[..., entry_to_unique]
        coeff = edit_coefficients(z, thr, scales, blockers if table.has_overlap else None)
        changed = (coeff != 0).any(dim=-1)
        if not bool(changed.any()):
            return None
        self._edited_host += int(changed.sum())
        du = coeff @ directions  # (P, C)
        if norm.scale is not None:
            du = du * norm.scale[candidates]
        delta = torch.zeros_like(u)
        delta[candidates] = du
        return delta
