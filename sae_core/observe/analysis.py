"""Reading a Recording: which features fire, where, and when (paper section 3).

Every query first *selects* rows of the recording (one pass, one image or all, one step or all), then
aggregates in two stages so that each denoising step weighs the same: rows of the same step (several
model evaluations per step with some samplers, several conditionings per pass) are averaged first,
then the per-step results are averaged over steps. Spatial maps are averaged over the step axis only,
position by position (the reference demo's multi-step heatmap averaged the wrong axes).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks.passes import KIND_NAMES, NEGATIVE, PASS_NAMES
from ..errors import SAEInputError
from ..sae.feature_ids import parse_feature_list
from ..sae.model import SparseCode
from ..tables import text_table
from ..validate import check_choice
from .recording import Recording

PASS_KINDS = PASS_NAMES  # the passes a reader can pick (one at a time)
ALL = -1  # "all steps" / "all images" in the nodes' integer inputs


@dataclass(frozen=True)
class Sample:
    """One row of one block call: the code of one image in one pass at one step."""

    step: int
    grid: tuple[int, int]
    values: Tensor   # (positions, k) float32
    indices: Tensor  # (positions, k) int64


@dataclass(frozen=True)
class Selection:
    """The rows a query reads, and a human description of them for titles and tables."""

    samples: list[Sample]
    steps: list[int]
    description: str
    n_latents: int
    excluded: tuple[int, ...] = ()  # the SAE's always-on features (its authors' exclude list)

    @property
    def grid(self) -> tuple[int, int]:
        """The full-image grid: the largest grid among the rows (area-conditioning chunks can be smaller)."""
        counts = Counter(s.grid for s in self.samples)
        return max(counts, key=lambda g: (g[0] * g[1], counts[g]))


def recorded_steps(recording: Recording) -> list[int]:
    return sorted({_step(c.step) for c in recording.calls})


def recorded_batch(recording: Recording) -> int:
    return max((c.batch for c in recording.calls), default=0)


def _step(step: int | None) -> int:
    return 0 if step is None else int(step)


def check_recorded(recording: Recording) -> None:
    """Errors for the two ways a recording can be empty, each saying what to connect."""
    if recording.run is None:
        raise SAEInputError(
            f"nothing has been recorded at {recording.block}: the sampler has not run with the MODEL from "
            f"SAE Record Activations. Connect that MODEL output to the sampler, and connect the sampler's "
            f"LATENT (or the decoded IMAGE) to this node so it runs after sampling")
    if not recording.calls:
        raise SAEInputError(
            f"the sampler ran but never called block {recording.block}, so there is nothing to show. "
            f"Check that the recorded MODEL is the one the sampler uses and that no other patch replaces "
            f"that block")


def check_latent(recording: Recording, samples: Tensor | None) -> None:
    """The LATENT connected to a reading node must be the recorded run's (same batch and size)."""
    run = recording.run
    if samples is None or run is None or run.latent_shape is None:
        return
    got, want = tuple(samples.shape), run.latent_shape
    if got[0] != want[0] or got[-2:] != want[-2:]:
        raise SAEInputError(
            f"the LATENT connected (batch {got[0]}, {got[-1] * 8}x{got[-2] * 8} px) is not the recorded sampling "
            f"run (batch {want[0]}, {want[-1] * 8}x{want[-2] * 8} px). Connect the LATENT of the sampler that "
            f"uses the recorded MODEL; a model sampled twice keeps only its latest run, so give each sampler "
            f"its own SAE Record Activations")


def check_aspect(grid: tuple[int, int], height: int, width: int, what: str = "image") -> None:
    """The grid must cover the image: same aspect ratio up to one grid cell of rounding."""
    h, w = grid
    if abs(height / h - width / w) > max(height / h, width / w) / min(h, w) + 1e-6:
        raise SAEInputError(f"the {what} is {width}x{height} px but the recorded block grid is {w}x{h} "
                            f"(width x height): a different aspect ratio, so the {what} does not come from "
                            f"the recorded sampling run")


def check_image(recording: Recording, image: Tensor | None) -> None:
    """The IMAGE connected must be the recorded run's: same batch, and the aspect ratio of the block grid."""
    if image is None:
        return
    batch = recorded_batch(recording)
    if image.shape[0] != batch:
        raise SAEInputError(f"the IMAGE batch has {image.shape[0]} image(s) but the recording has {batch}: "
                            f"connect the decoded images of the recorded sampling run")
    grids = {c.grid for c in recording.calls}
    grid = max(grids, key=lambda g: g[0] * g[1])
    check_aspect(grid, image.shape[1], image.shape[2])


def check_ready(recording: Recording, latent: Tensor | None, image: Tensor | None, node: str) -> None:
    """Checks shared by the reading nodes, in the order that gives the most useful message."""
    if latent is None and image is None:
        raise SAEInputError(f"connect the sampler's LATENT (or the decoded IMAGE) to {node}, so it runs after "
                            f"sampling and always shows the current run")
    check_recorded(recording)
    check_latent(recording, latent)
    check_image(recording, image)


def select(recording: Recording, pass_name: str = "positive", batch: int = 0, step: int = ALL) -> Selection:
    """Rows of one pass, one batch item (or ALL), one step (or ALL), with clear errors when none match."""
    check_recorded(recording)
    kind = PASS_KINDS[check_choice("pass", pass_name, PASS_KINDS)]
    kinds_seen = sorted({k for c in recording.calls for k in c.chunk_kinds})
    if kind not in kinds_seen:
        seen = ", ".join(KIND_NAMES.get(k, str(k)) for k in kinds_seen)
        hint = " (at cfg 1 the sampler runs no negative pass)" if kind == NEGATIVE else ""
        raise SAEInputError(f"no {pass_name} pass was recorded{hint}; recorded passes: {seen}")
    n_batch = recorded_batch(recording)
    if batch != ALL and not 0 <= batch < n_batch:
        raise SAEInputError(f"batch_index {batch} is out of range: the recording has {n_batch} image(s) "
                            f"(0..{n_batch - 1}, or -1 for all)")
    steps = recorded_steps(recording)
    if step != ALL and step not in steps:
        raise SAEInputError(f"step {step} was not recorded; recorded steps: {_ranges(steps)} (or -1 for all steps)")
    samples = [
        Sample(_step(call.step), call.grid, values.float(), indices.long())
        for call in recording.calls if step == ALL or _step(call.step) == step
        for row_kind, item, values, indices in call.rows()
        if row_kind == kind and (batch == ALL or item == batch)
    ]
    chosen = sorted({s.step for s in samples})
    where = "all images" if batch == ALL else f"image {batch}"
    when = f"step {step} of {len(steps)}" if step != ALL else (
        f"mean over {len(chosen)} steps" if len(chosen) > 1 else "1 step")
    return Selection(samples, chosen, f"{recording.block}, {pass_name} pass, {where}, {when}", recording.n_latents,
                     tuple(getattr(recording, "excluded", ())))


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])
    return ", ".join(map(str, values))


def _by_step(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.step].append(s)
    return dict(sorted(groups.items()))


# ------------------------------------------------------------------ ranking
@dataclass(frozen=True)
class FeatureStats:
    """Per-feature statistics, ranked: mean activation over positions, fraction of positions active, peak."""

    features: Tensor  # (n,) int64, best first
    mean: Tensor
    fraction: Tensor
    peak: Tensor

    def __len__(self) -> int:
        return int(self.features.numel())

    def ids(self) -> list[int]:
        return [int(f) for f in self.features]


def dense_stats(selection: Selection) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, fraction, peak) for every latent: averages over positions, then over the steps' rows, then steps."""
    n = selection.n_latents
    per_step_mean, per_step_frac = [], []
    peak = torch.zeros(n, dtype=torch.float64)
    for rows in _by_step(selection.samples).values():
        total = torch.zeros(n, dtype=torch.float64)
        active = torch.zeros(n, dtype=torch.float64)
        for s in rows:
            positions = s.values.shape[0]
            idx, val = s.indices.reshape(-1), s.values.reshape(-1).double()
            fired = val > 0
            total += torch.bincount(idx, weights=val, minlength=n)[:n] / positions
            active += torch.bincount(idx[fired], minlength=n)[:n].double() / positions
            peak = torch.maximum(peak, torch.zeros(n, dtype=torch.float64).scatter_reduce(
                0, idx, val, reduce="amax"))
        per_step_mean.append(total / len(rows))
        per_step_frac.append(active / len(rows))
    return (torch.stack(per_step_mean).mean(0), torch.stack(per_step_frac).mean(0), peak)


def rank_features(selection: Selection, top_n: int) -> FeatureStats:
    """The ``top_n`` features by mean activation (the paper's ranking); features that never fired are left out, and
    so are the SAE's always-on features (the Flux demo zeroes its exclude list before ranking)."""
    if top_n < 1:
        raise SAEInputError(f"top_n must be at least 1, got {top_n}")
    mean, fraction, peak = dense_stats(selection)
    excluded = set(selection.excluded)
    order = sorted((f for f in range(len(mean)) if f not in excluded),
                   key=lambda f: (-float(mean[f]), -float(fraction[f]), f))
    chosen = [f for f in order[:top_n] if mean[f] > 0]
    index = torch.tensor(chosen, dtype=torch.long)
    return FeatureStats(index, mean[index].float(), fraction[index].float(), peak[index].float())


def stats_of(selection: Selection, features: list[int]) -> FeatureStats:
    """Statistics of given features, in the given order (zeros when they never fired)."""
    mean, fraction, peak = dense_stats(selection)
    index = torch.tensor(features, dtype=torch.long)
    return FeatureStats(index, mean[index].float(), fraction[index].float(), peak[index].float())


def format_table(stats: FeatureStats, title: str = "") -> str:
    """Aligned plain-text table: rank, feature id, mean activation, fraction of positions active, peak."""
    rows = [(i + 1, int(f), f"{float(m):.4g}", f"{100 * float(a):.1f}%", f"{float(p):.4g}")
            for i, (f, m, a, p) in enumerate(zip(stats.features, stats.mean, stats.fraction, stats.peak))]
    return text_table(("rank", "feature", "mean act", "active", "peak"), rows, title=title,
                      empty="(no feature fired)")


# ------------------------------------------------------------------ maps and timelines
def _activations(sample: Sample, features: Tensor) -> Tensor:
    """(positions, F): each feature's activation at each position (0 where it is not in the top k)."""
    hits = sample.indices[:, :, None] == features[None, None, :]
    return (sample.values[:, :, None] * hits).sum(1)


def step_maps(selection: Selection, features: list[int]) -> tuple[list[int], Tensor]:
    """Per-step maps (S, F, h, w) on the full-image grid, rows of one step averaged."""
    grid = selection.grid
    feats = torch.tensor(features, dtype=torch.long)
    steps, maps = [], []
    for step, rows in _by_step(selection.samples).items():
        rows = [s for s in rows if s.grid == grid]
        if not rows:
            continue
        acts = torch.stack([_activations(s, feats) for s in rows]).mean(0)  # (P, F)
        maps.append(acts.t().reshape(len(features), *grid))
        steps.append(step)
    return steps, torch.stack(maps)


def feature_maps(selection: Selection, features: list[int]) -> Tensor:
    """(F, h, w): each feature's map averaged over the *step axis only* (position by position)."""
    _, maps = step_maps(selection, features)
    return maps.mean(0)


def timeline(selection: Selection, features: list[int]) -> tuple[list[int], Tensor]:
    """Steps and (S, F) mean activation over positions at each step."""
    feats = torch.tensor(features, dtype=torch.long)
    steps, values = [], []
    for step, rows in _by_step(selection.samples).items():
        values.append(torch.stack([_activations(s, feats).mean(0) for s in rows]).mean(0))
        steps.append(step)
    return steps, torch.stack(values)


# ------------------------------------------------------------------ which features to show
_TOP = re.compile(r"^\s*top\s*(\d+)\s*$", re.IGNORECASE)


def parse_features(text: str, n_latents: int) -> int | list[int]:
    """``"top 6"`` -> 6 (rank and take the best six); ``"4998, 2301"`` -> explicit ids (range-checked).

    Explicit lists may carry ``:strength`` suffixes (pasted from a steer node); they are ignored here.
    """
    m = _TOP.match(text or "")
    if m:
        n = int(m.group(1))
        if n < 1:
            raise SAEInputError(f"'top {n}' shows nothing; use 'top 1' or more, or feature ids like '4998, 2301'")
        return n
    try:
        return [e.feature for e in parse_feature_list(text, n_latents, 0.0)]
    except SAEInputError as exc:
        raise SAEInputError(f"{exc}; or write 'top N' to show the N strongest features") from None


def choose_features(selection: Selection, spec: int | list[int]) -> FeatureStats:
    """Explicit ids keep their order; ``top N`` ranks the selection."""
    return rank_features(selection, spec) if isinstance(spec, int) else stats_of(selection, spec)


def aggregated_code(selection: Selection, k: int) -> SparseCode:
    """The selection as one sparse code on its grid, (h, w, k): the code itself for a single row, else the
    per-position mean activation (rows of a step first, then steps) reduced to its k strongest latents."""
    grid = selection.grid
    rows = [s for s in selection.samples if s.grid == grid]
    h, w = grid
    if len(rows) == 1:
        values, indices = rows[0].values, rows[0].indices
        keep = min(k, values.shape[-1])
        top = values.topk(keep, dim=-1)
        return SparseCode(top.values.reshape(h, w, keep), indices.gather(-1, top.indices).reshape(h, w, keep))
    per_step = []
    for step_rows in _by_step(rows).values():
        dense = torch.zeros(h * w, selection.n_latents)
        for s in step_rows:
            dense.scatter_add_(1, s.indices, s.values)
        per_step.append(dense / len(step_rows))
    mean = torch.stack(per_step).mean(0)
    top = mean.topk(min(k, selection.n_latents), dim=-1)
    return SparseCode(top.values.reshape(h, w, -1), top.indices.reshape(h, w, -1))
