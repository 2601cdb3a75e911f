"""Record a concept profile by sampling prompts with ComfyUI's own sampler, several prompts per call.

Prompts are encoded with the CLIP given (only ``tokenize`` and ``encode_from_tokens_scheduled``, as
CLIPTextEncode does), grouped by conditioning shape and concatenated along the batch, so one sampler
call denoises a whole batch of prompts. Prompt i of each set gets the noise of ``seed + i`` whatever
the batching, so the target and contrast sets start from the same noises and differ only by prompt.
"""
from __future__ import annotations

from typing import Any

import torch

import comfy.model_management
import comfy.sample
import comfy.utils

from ..sae_core.blocks import Block
from ..sae_core.concept_profile import ConceptProfile, LatentRecorder, sae_identity
from ..sae_core.errors import SAEInputError
from .comfy_glue import install_block_patch

Conditioning = list  # ComfyUI's [[cond, {extras}], ...]


def encode_prompt(clip, text: str) -> Conditioning:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _signature(conditioning: Conditioning) -> tuple | None:
    """What must be equal for two conditionings to be stacked along the batch; None if one cannot be."""
    if len(conditioning) != 1:
        return None  # scheduled / hooked conditioning: sample it on its own
    cond, extras = conditioning[0]
    if not isinstance(cond, torch.Tensor) or cond.shape[0] != 1:
        return None
    parts = []
    for key in sorted(extras):
        value = extras[key]
        if isinstance(value, torch.Tensor):
            if value.ndim == 0 or value.shape[0] != 1:
                return None
            parts.append((key, "tensor", tuple(value.shape), value.dtype))
        elif isinstance(value, (int, float, str, bool, type(None))):
            parts.append((key, "value", value))
        else:
            return None
    return (tuple(cond.shape), cond.dtype, tuple(parts))


def stack_conditionings(items: list[Conditioning]) -> Conditioning:
    """One conditioning whose batch rows are the given single-prompt conditionings (same signature)."""
    if len(items) == 1:
        return items[0]
    conds = torch.cat([c[0][0] for c in items])
    extras: dict[str, Any] = {}
    for key, value in items[0][0][1].items():
        extras[key] = torch.cat([c[0][1][key] for c in items]) if isinstance(value, torch.Tensor) else value
    return [[conds, extras]]


def plan_batches(conditionings: list[Conditioning], batch_size: int) -> list[list[int]]:
    """Prompt indices per sampler call: prompts of equal signature together, at most batch_size each."""
    groups: dict[Any, list[int]] = {}
    singles: list[list[int]] = []
    for i, conditioning in enumerate(conditionings):
        key = _signature(conditioning)
        if key is None:
            singles.append([i])
        else:
            groups.setdefault(key, []).append(i)
    batches = [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
    return sorted(batches + singles)


def record_profile(model, clip, sae, block: Block, target: list[str], other: list[str], *, name: str, steps: int,
                   cfg: float, sampler: str, scheduler: str, seed: int, width: int, height: int, batch_size: int,
                   label: str) -> ConceptProfile:
    """Sample every prompt (progress bar over prompts, Cancel honoured) and return the recorded profile."""
    if width % 8 or height % 8:
        raise SAEInputError(f"width {width} and height {height} must be multiples of 8")
    recorder = LatentRecorder(sae)
    identity = sae_identity(sae)  # fingerprint first: a failure here should not waste the sampling
    patched = install_block_patch(model, block, recorder, label)
    negative = encode_prompt(clip, "")
    progress = comfy.utils.ProgressBar(len(target) + len(other))

    def check_cancel(*_args):
        comfy.model_management.throw_exception_if_processing_interrupted()

    for group, prompts in (("target", target), ("other", other)):
        recorder.group = group
        conditionings = [encode_prompt(clip, p) for p in prompts]
        for batch in plan_batches(conditionings, max(1, batch_size)):
            check_cancel()
            latent = torch.zeros(len(batch), 4, height // 8, width // 8)
            latent = comfy.sample.fix_empty_latent_channels(patched, latent)
            seeds = [(seed + i) % 2 ** 64 for i in batch]
            noise = torch.cat([comfy.sample.prepare_noise(latent[:1], s) for s in seeds])
            positive = stack_conditionings([conditionings[i] for i in batch])
            comfy.sample.sample(patched, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                denoise=1.0, callback=check_cancel, disable_pbar=True, seed=seeds[0])
            progress.update(len(batch))
    family = type(getattr(model.model, "model_config", model.model)).__name__
    sampling = {"steps": steps, "cfg": cfg, "sampler": sampler, "scheduler": scheduler, "seed": seed,
                "width": width, "height": height, "batch_size": batch_size, "model": family}
    profile = recorder.profile(len(target), len(other), block.diffusers, name=name, target_prompts=list(target),
                               other_prompts=list(other), sampling=sampling)
    profile.sae = identity
    return profile
