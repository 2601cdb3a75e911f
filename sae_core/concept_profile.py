"""Concept profiles for SAeUron unlearning: how strongly each SAE feature fires, step by step, on a set
of prompts showing a concept (the *target* set) and on prompts showing other things (the *contrast* set).

A profile keeps the sufficient statistics of SAeUron's rule (papers.md section 4): for every sampling
step, the mean over the target prompts and the mean over the contrast prompts of each prompt's
position-averaged latents, plus the prompt counts. Everything else (selection, thresholds, scales)
is derived at unlearning time, so one profile serves any percentile and multiplier.

It also remembers what it is valid for: the SAE (a fingerprint of its weights), the block, the
prompts, the sampling settings and the sigma of each step (used to match steps of a run with
another number of steps).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from .block_call import CallContext, row_signs, sae_input
from .blocks import diffusers_name, short_code
from .errors import SAEFormatError, SAEInputError
from .formats.common import read_safetensors
from .io_utils import atomic_write
from .model import SparseAutoencoder

FORMAT_TAG = "sae-lab-concept"
FORMAT_VERSION = 1
GROUPS = ("target", "other")


def sae_identity(sae: SparseAutoencoder) -> dict:
    """What a profile records about its SAE (the fingerprint decides; the rest makes errors readable)."""
    return {"fingerprint": sae.fingerprint(), "d_in": sae.d_in, "n_latents": sae.n_latents,
            "hookpoint": sae.hookpoint, "input_kind": sae.input_kind, "name": sae.name}


def parse_prompts(text: str, what: str) -> list[str]:
    """One prompt per non-empty line (surrounding spaces dropped)."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise SAEInputError(f"the {what} prompts are empty; write one prompt per line")
    return prompts


def check_prompt_sets(target: list[str], other: list[str]) -> None:
    """SAeUron's score compares the two sets: they must differ, or every score is zero."""
    if sorted(target) == sorted(other):
        raise SAEInputError("the target prompts and the other prompts are identical, so no feature can tell the "
                            "concept apart; put prompts showing the concept in target_prompts and prompts showing "
                            "other things (other styles or objects) in other_prompts")


@dataclass
class ConceptProfile:
    """Per-step mean position-averaged SAE latents of a target set and a contrast set.

    ``target_mean`` and ``other_mean`` have shape (steps, n_latents), float32; ``sigmas`` has one entry per
    step (the sigma that step denoises from), decreasing.
    """

    target_mean: Tensor
    other_mean: Tensor
    n_target: int
    n_other: int
    sigmas: tuple[float, ...]
    sae: dict
    block: str  # diffusers name, e.g. up_blocks.1.attentions.2
    name: str = "concept"
    target_prompts: list[str] = field(default_factory=list)
    other_prompts: list[str] = field(default_factory=list)
    sampling: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.target_mean.ndim != 2 or self.target_mean.shape != self.other_mean.shape:
            raise SAEInputError(f"target and other means must both be (steps, n_latents), got "
                                f"{tuple(self.target_mean.shape)} and {tuple(self.other_mean.shape)}")
        if len(self.sigmas) != self.target_mean.shape[0]:
            raise SAEInputError(f"{len(self.sigmas)} sigmas for {self.target_mean.shape[0]} steps")
        if diffusers_name(self.block) != self.block:
            raise SAEInputError(f"block {self.block!r} is not a diffusers transformer-block name "
                                f"(e.g. up_blocks.1.attentions.2)")
        if self.n_target < 1 or self.n_other < 1:
            raise SAEInputError(f"a profile needs target and other prompts, got {self.n_target} and {self.n_other}")

    @property
    def n_steps(self) -> int:
        return self.target_mean.shape[0]

    @property
    def n_latents(self) -> int:
        return self.target_mean.shape[1]

    @property
    def fingerprint(self) -> str:
        return str(self.sae.get("fingerprint", ""))

    def describe(self) -> str:
        return (f"concept '{self.name}': {self.n_target} target / {self.n_other} other prompts, {self.n_steps} steps, "
                f"SAE {self.fingerprint} ({self.n_latents} latents) at {short_code(self.block)}")

    def scaled(self, factor: float) -> "ConceptProfile":
        """Both means times ``factor``: same scores (they are normalised), thresholds and scales times factor."""
        return replace(self, target_mean=self.target_mean * factor, other_mean=self.other_mean * factor)

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, sae: SparseAutoencoder, block: str | None = None) -> None:
        """Refuse a profile made with another SAE, or (when ``block`` is given) for another block."""
        if self.n_latents != sae.n_latents or self.fingerprint != sae.fingerprint():
            made = self.sae.get("name") or self.sae.get("hookpoint") or "another SAE"
            raise SAEInputError(
                f"concept '{self.name}' was made with another SAE ({made}, fingerprint {self.fingerprint}, "
                f"{self.n_latents} latents), not this one ({sae.name or sae.hookpoint or 'unnamed'}, fingerprint "
                f"{sae.fingerprint()}, {sae.n_latents} latents); build the profile again with this SAE "
                f"(SAE Concept Profile) or load the SAE it was made with")
        if block is not None and block.strip():
            wanted = diffusers_name(block)
            if wanted is None:
                raise SAEInputError(f"block {block!r} is not a diffusers block name or short code (e.g. up.1.2 or "
                                    f"up_blocks.1.attentions.2)")
            if wanted != self.block:
                raise SAEInputError(f"concept '{self.name}' was recorded at block {short_code(self.block)} "
                                    f"({self.block}), not {short_code(wanted)} ({wanted}); SAE features of one "
                                    f"block mean nothing at another, so record a profile at {short_code(wanted)}")

    # ------------------------------------------------------------------ files
    def same_as(self, other: "ConceptProfile") -> bool:
        """Equal statistics and metadata (what a file written from either would hold)."""
        return (torch.equal(self.target_mean.float().cpu(), other.target_mean.float().cpu())
                and torch.equal(self.other_mean.float().cpu(), other.other_mean.float().cpu())
                and (self.n_target, self.n_other, tuple(self.sigmas), self.sae, self.block, self.name,
                     list(self.target_prompts), list(self.other_prompts), self.sampling)
                == (other.n_target, other.n_other, tuple(other.sigmas), other.sae, other.block, other.name,
                    list(other.target_prompts), list(other.other_prompts), other.sampling))

    def to_bytes(self) -> bytes:
        """The .safetensors file content: tensors + metadata (JSON for prompts, sampling and SAE identity)."""
        meta = {"target_prompts": self.target_prompts, "other_prompts": self.other_prompts,
                "sampling": self.sampling, "sae": self.sae}
        metadata = {
            "sae_concept_format": FORMAT_TAG, "format_version": str(FORMAT_VERSION), "name": self.name,
            "block": self.block, "n_target": str(self.n_target), "n_other": str(self.n_other),
            "sae_fingerprint": self.fingerprint, "json": json.dumps(meta),
        }
        tensors = {"target_mean": self.target_mean.detach().float().cpu().contiguous(),
                   "other_mean": self.other_mean.detach().float().cpu().contiguous(),
                   "sigmas": torch.tensor(self.sigmas, dtype=torch.float64)}
        return safetensors_bytes(tensors, metadata=metadata)

    def save(self, path: str | Path) -> Path:
        """Write the profile to ``path``, atomically."""
        path = Path(path)
        data = self.to_bytes()
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ConceptProfile":
        path = Path(path)
        tensors, meta = read_safetensors(path)
        if meta.get("sae_concept_format") != FORMAT_TAG:
            raise SAEFormatError(path, "is not a concept profile", found=f"metadata keys {sorted(meta)}",
                                 expected=f"a file written by Save SAE Concept (sae_concept_format={FORMAT_TAG!r})")
        try:
            version = int(meta.get("format_version", "0"))
            extra = json.loads(meta.get("json") or "{}")
            n_target, n_other = int(meta["n_target"]), int(meta["n_other"])
            target, other, sigmas = tensors["target_mean"], tensors["other_mean"], tensors["sigmas"]
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise SAEFormatError(path, "concept profile is incomplete", found=f"{type(exc).__name__}: {exc}",
                                 expected="target_mean, other_mean, sigmas and their metadata") from None
        if version > FORMAT_VERSION:
            raise SAEFormatError(path, "was written by a newer version of this package", found=f"format {version}",
                                 expected=f"format <= {FORMAT_VERSION} (update the node pack)")
        try:
            return cls(target.float(), other.float(), n_target, n_other, tuple(float(s) for s in sigmas.tolist()),
                       dict(extra.get("sae") or {}), meta.get("block", ""), meta.get("name") or path.stem,
                       list(extra.get("target_prompts") or []), list(extra.get("other_prompts") or []),
                       dict(extra.get("sampling") or {}))
        except SAEInputError as exc:
            raise SAEFormatError(path, "concept profile is inconsistent", found=str(exc)) from None


class LatentRecorder:
    """A block patch that records position-averaged SAE latents of the positive pass, per step and group.

    Set ``group`` (``"target"`` or ``"other"``) before sampling each batch. Returns the block output
    unchanged. Position averages are accumulated from the sparse top-k code (scatter-add of values),
    which equals the mean of the dense latents without materialising them. Calls are binned by the
    nearest step of the schedule, so samplers that evaluate the model twice per step contribute both
    evaluations to the step whose sigma is nearest.
    """

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae
        self.group = GROUPS[0]
        self.sigmas: tuple[float, ...] | None = None
        self._sums: dict[str, Tensor] = {}
        self._rows: dict[str, Tensor] = {}

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

    def __call__(self, x_in: Tensor, y_out: Tensor, ctx: CallContext) -> Tensor:
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
        signs = row_signs(ctx.chunk_kinds, y_out.shape[0], "positive")
        rows = torch.nonzero(signs > 0).flatten().tolist()
        if not rows:
            return y_out
        u = sae_input(x_in[rows], y_out[rows], self.sae.input_kind)
        with torch.no_grad():
            means = self.position_mean(u)
        n_steps = len(self.sigmas)
        if self.group not in self._sums:
            self._sums[self.group] = torch.zeros(n_steps, self.sae.n_latents, dtype=torch.float64)
            self._rows[self.group] = torch.zeros(n_steps, dtype=torch.float64)
        # out of place: the sums may have been created under inference mode and updated outside it, or back
        step_sum = torch.zeros_like(self._sums[self.group])
        step_sum[ctx.step] = means.sum(dim=0).double().cpu()
        self._sums[self.group] = self._sums[self.group] + step_sum
        step_rows = torch.zeros_like(self._rows[self.group])
        step_rows[ctx.step] = len(rows)
        self._rows[self.group] = self._rows[self.group] + step_rows
        return y_out

    def mean(self, group: str) -> Tensor:
        """(steps, n_latents) float32 mean over the recorded rows (zeros for a step never seen)."""
        if group not in self._sums:
            raise SAEInputError(f"nothing was recorded for the {group} prompts")
        rows = self._rows[group].clamp_min(1.0)[:, None]
        return (self._sums[group] / rows).float()

    def profile(self, n_target: int, n_other: int, block: str, **info) -> ConceptProfile:
        """The recorded statistics as a profile (``info``: name, prompts, sampling)."""
        name = diffusers_name(block)
        if name is None:
            raise SAEInputError(f"block {block!r} is not a diffusers block name")
        return ConceptProfile(self.mean("target"), self.mean("other"), n_target, n_other, tuple(self.sigmas or ()),
                              sae_identity(self.sae), name, **info)
