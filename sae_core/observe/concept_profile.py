"""Concept profiles for SAeUron unlearning: how strongly each SAE feature fires, step by step, on a set
of prompts showing a concept (the *target* set) and on prompts showing other things (the *contrast* set).

A profile keeps the sufficient statistics of SAeUron's rule (papers.md section 4): for every sampling
step, the mean over the target prompts and the mean over the contrast prompts of each prompt's
position-averaged latents, plus the prompt counts. Everything else (selection, thresholds, scales)
is derived at unlearning time, so one profile serves any percentile and multiplier.

It also remembers what it is valid for: the SAE (its identity, see ``SparseAutoencoder.identity``), the
block, the prompts, the sampling settings and the sigma of each step (used to match steps of a run with
another number of steps). Profiles are recorded by :mod:`.concept_recorder`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..blocks.names import diffusers_name, short_code
from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write, check_version
from ..sae.formats.common import read_safetensors
from ..sae.model import SparseAutoencoder

FORMAT_TAG = "sae-lab-concept"
FORMAT_VERSION = 1
GROUPS = ("target", "other")
SCORE_EPS = 1e-8  # as the reference code


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

    def scaled(self, factor: float) -> ConceptProfile:
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
    def same_as(self, other: ConceptProfile) -> bool:
        """Equal statistics and metadata (what a file written from either would hold)."""
        return (torch.equal(self.target_mean.float().cpu(), other.target_mean.float().cpu())
                and torch.equal(self.other_mean.float().cpu(), other.other_mean.float().cpu())
                and (self.n_target, self.n_other, tuple(self.sigmas), self.sae, self.block, self.name,
                     list(self.target_prompts), list(self.other_prompts), self.sampling)
                == (other.n_target, other.n_other, tuple(other.sigmas), other.sae, other.block, other.name,
                    list(other.target_prompts), list(other.other_prompts), other.sampling))

    def to_bytes(self) -> bytes:
        """The .safetensors file content: tensors + metadata (JSON for prompts, sampling and SAE identity). A
        profile with NaN or infinite statistics is refused: it would select arbitrary features."""
        for name, values in (("target_mean", self.target_mean), ("other_mean", self.other_mean),
                             ("sigmas", torch.tensor(self.sigmas, dtype=torch.float64))):
            if not bool(torch.isfinite(values).all()):
                raise SAEInputError(f"concept '{self.name}' was not saved: its {name} holds NaN or infinite values "
                                    f"(the sampling diverged); record the profile again")
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
    def load(cls, path: str | Path) -> ConceptProfile:
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
        check_version(path, version, FORMAT_VERSION)
        try:
            return cls(target.float(), other.float(), n_target, n_other, tuple(float(s) for s in sigmas.tolist()),
                       dict(extra.get("sae") or {}), meta.get("block", ""), meta.get("name") or path.stem,
                       list(extra.get("target_prompts") or []), list(extra.get("other_prompts") or []),
                       dict(extra.get("sampling") or {}))
        except SAEInputError as exc:
            raise SAEFormatError(path, "concept profile is inconsistent", found=str(exc)) from None


def feature_scores(target_mean: Tensor, other_mean: Tensor) -> Tensor:
    """SAeUron's importance score per step: difference of the normalised means, (steps, n_latents) float64."""
    c, o = target_mean.double(), other_mean.double()
    return c / (c.sum(-1, keepdim=True) + SCORE_EPS) - o / (o.sum(-1, keepdim=True) + SCORE_EPS)
