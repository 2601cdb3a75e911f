"""Recording a concept profile: a block patch that accumulates position-averaged SAE latents of the positive
pass, per step, for the target prompts and for the contrast prompts."""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks.context import CallContext
from ..blocks.names import diffusers_name
from ..blocks.passes import PassRows
from ..blocks.patch import BlockPatch, BlockView
from ..errors import SAEInputError
from ..sae.model import SparseAutoencoder
from .concept_profile import GROUPS, ConceptProfile


class ConceptRecordPatch(BlockPatch):
    """A block patch that records position-averaged SAE latents of the positive pass, per step and group.

    Set ``group`` (``"target"`` or ``"other"``) before sampling each batch. Changes nothing in the block's
    output. Position averages are accumulated from the sparse top-k code (scatter-add of values),
    which equals the mean of the dense latents without materialising them. Calls are binned by the
    nearest step of the schedule, so samplers that evaluate the model twice per step contribute both
    evaluations to the step whose sigma is nearest.
    """

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae
        self.input_kind = sae.input_kind
        self.group = GROUPS[0]
        self.sigmas: tuple[float, ...] | None = None
        self._sums: dict[str, Tensor] = {}
        self._rows: dict[str, list[int]] = {}
        self.positive = PassRows("positive")

    def position_mean(self, u: Tensor) -> Tensor:
        """(rows, n_latents) float32: each row's latents averaged over its positions; u is (rows, h, w, C)."""
        rows = u.shape[0]
        if self.sae.k is None:
            return self.sae.encode(u).float().reshape(rows, -1, self.sae.n_latents).mean(dim=1)
        values, indices = self.sae.encode_topk(u)
        positions = values.shape[1] * values.shape[2]
        out = torch.zeros(rows, self.sae.n_latents, device=u.device, dtype=torch.float32)
        out.scatter_add_(1, indices.reshape(rows, -1), values.reshape(rows, -1).float())
        return out / positions

    def __call__(self, view: BlockView, ctx: CallContext) -> None:
        if self.group not in GROUPS:
            raise SAEInputError(f"recorder group {self.group!r} is not one of {GROUPS}")
        if ctx.step is None or ctx.sample_sigmas is None:
            raise SAEInputError("the sampler did not say which step it is at (no sigmas in transformer_options)")
        schedule = tuple(ctx.sample_sigmas[:-1]) or tuple(ctx.sample_sigmas)
        if self.sigmas is None:
            self.sigmas = schedule
        elif len(schedule) != len(self.sigmas):
            raise SAEInputError(f"the schedule changed between batches ({len(self.sigmas)} then {len(schedule)} "
                                f"steps); record a profile with one sampler setting")
        rows = self.positive.indices(ctx, view.n_rows)
        if not rows:
            return None
        u = view.sae_input(self.sae.input_kind)
        u = u if len(rows) == u.shape[0] else u[rows]
        with torch.no_grad():
            means = self.position_mean(u)
        n_steps = len(self.sigmas)
        if self.group not in self._sums:  # kept on the device of the block: nothing is read back per call
            self._sums[self.group] = torch.zeros(n_steps, self.sae.n_latents, dtype=torch.float64, device=u.device)
            self._rows[self.group] = [0] * n_steps
        # out of place: the sums may have been created under inference mode and updated outside it, or back
        step = torch.tensor([ctx.step], device=u.device)
        self._sums[self.group] = self._sums[self.group].index_add(0, step, means.sum(dim=0, keepdim=True).double())
        self._rows[self.group][ctx.step] += len(rows)
        return None

    def totals(self) -> dict:
        """What this recorder summed (on the CPU, picklable): merged with other processes' by :meth:`merge_totals`."""
        return {"sigmas": self.sigmas, "sums": {g: t.cpu() for g, t in self._sums.items()},
                "rows": {g: list(r) for g, r in self._rows.items()}}

    def merge_totals(self, parts: list[dict]) -> None:
        """Replace this recorder's sums by the sums of ``parts`` (every process's :meth:`totals`, in rank order,
        this one's included), so a profile sampled batch by batch over several processes is the one-process
        profile (float64 sums in another order: the same float32 means but for the last bit, rarely)."""
        schedules = {tuple(p["sigmas"]) for p in parts if p["sigmas"] is not None}
        if len(schedules) > 1:
            raise SAEInputError(f"the processes recorded {len(schedules)} different schedules; record a profile with "
                                f"one sampler setting on every process")
        self.sigmas = next(iter(schedules), None)
        sums: dict[str, Tensor] = {}
        rows: dict[str, list[int]] = {}
        for part in parts:
            for group, total in part["sums"].items():
                sums[group] = total.clone() if group not in sums else sums[group] + total
                counts = part["rows"][group]
                rows[group] = [a + b for a, b in zip(rows[group], counts)] if group in rows else list(counts)
        self._sums, self._rows = sums, rows

    def mean(self, group: str) -> Tensor:
        """(steps, n_latents) float32 mean over the recorded rows (zeros for a step never seen), on the CPU."""
        if group not in self._sums:
            raise SAEInputError(f"nothing was recorded for the {group} prompts")
        rows = torch.tensor(self._rows[group], dtype=torch.float64).clamp_min(1.0)[:, None]
        return (self._sums[group].cpu() / rows).float()

    def profile(self, n_target: int, n_other: int, block: str, **info) -> ConceptProfile:
        """The recorded statistics as a profile (``info``: name, prompts, sampling)."""
        name = diffusers_name(block)
        if name is None:
            raise SAEInputError(f"block {block!r} is not a diffusers block name")
        return ConceptProfile(self.mean("target"), self.mean("other"), n_target, n_other, tuple(self.sigmas or ()),
                              self.sae.identity(), name, **info)
