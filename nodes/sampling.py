"""Sampling prompts with ComfyUI's own sampler inside a node (concept profiles, activation collection).

Prompts are encoded with the CLIP given (only ``tokenize`` and ``encode_from_tokens_scheduled``, as
CLIPTextEncode does). A concept profile groups prompts by conditioning shape and concatenates them along the
batch, so one sampler call denoises a whole batch of prompts; prompt i of each set gets the noise of
``seed + i`` whatever the batching, so the target and contrast sets start from the same noises and differ
only by prompt.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..sae_core.blocks.layout import Block
from ..sae_core.budget import Work, check_work, max_work
from ..sae_core.errors import SAEInputError
from ..sae_core.observe.concept_profile import ConceptProfile
from ..sae_core.observe.concept_recorder import ConceptRecordPatch
from ..sae_core.train.sharding import WHOLE, WorkShare
from ..sae_core.validate import check_choice, check_number
from .base import show_progress_text
from .patching import install_block_patch

MAX_STEPS, MAX_CFG, MAX_SIDE, MAX_BATCH, MAX_SEED = 1000, 100.0, 8192, 64, 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class SamplingSettings:
    """How prompts are sampled, checked once (every value from a widget, as a /prompt body may send anything)."""

    steps: int
    cfg: float
    sampler: str
    scheduler: str
    seed: int
    width: int
    height: int
    batch_size: int = 1

    @classmethod
    def checked(cls, **values) -> SamplingSettings:
        for name in ("width", "height"):
            check_number(name, values[name], 64, MAX_SIDE, integer=True)
            if values[name] % 8:
                raise SAEInputError(f"{name} {values[name]} must be a multiple of 8")
        return cls(steps=check_number("steps", values["steps"], 1, MAX_STEPS, integer=True),
                   cfg=check_number("cfg", values["cfg"], 0.0, MAX_CFG),
                   sampler=check_choice("sampler_name", values["sampler"], comfy.samplers.KSampler.SAMPLERS),
                   scheduler=check_choice("scheduler", values["scheduler"], comfy.samplers.KSampler.SCHEDULERS),
                   seed=check_number("seed", values["seed"], 0, MAX_SEED, integer=True),
                   width=values["width"], height=values["height"],
                   batch_size=check_number("batch_size", values.get("batch_size", 1), 1, MAX_BATCH, integer=True))

    def as_dict(self) -> dict:
        return asdict(self)


def sampler_inputs(steps: int, cfg: float, *, steps_tip: str, cfg_tip: str, sampler_tip: str,
                   scheduler_tip: str) -> list:
    """The steps / cfg / sampler / scheduler widgets, with the ranges SamplingSettings accepts."""
    return [
        io.Int.Input("steps", default=steps, min=1, max=MAX_STEPS, tooltip=steps_tip),
        io.Float.Input("cfg", default=cfg, min=0.0, max=MAX_CFG, step=0.1, tooltip=cfg_tip),
        io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                       tooltip=sampler_tip),
        io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                       tooltip=scheduler_tip),
    ]

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


def check_cancel(*_args) -> None:
    """Raise ComfyUI's interrupt if the user pressed Cancel (also a sampler callback: checked at every step)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def start_work(work: Work) -> Work:
    """Before anything is sampled: refused above this server's cap (SAE_LAB_MAX_WORK), else shown on the node."""
    check_work(work, max_work())
    show_progress_text(f"will sample {work.describe()}")
    return work


def sample_batch(model, positives: list[Conditioning], negative: Conditioning, seeds: list[int],
                 settings: SamplingSettings) -> torch.Tensor:
    """The one sampling path of the nodes (empty latent -> the model's channels -> noise -> ComfyUI's sampler):
    one sampler call for prompts of one signature (see plan_batches), prompt i with the noise of seeds[i] (the
    noise KSampler gives that seed for a batch of one); Cancel is honoured at every step. The denoised latent."""
    s = settings
    latent = torch.zeros(len(positives), 4, s.height // 8, s.width // 8)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    seeds = [seed % 2 ** 64 for seed in seeds]
    noise = torch.cat([comfy.sample.prepare_noise(latent[:1], seed) for seed in seeds])
    return comfy.sample.sample(model, noise, s.steps, s.cfg, s.sampler, s.scheduler, stack_conditionings(positives),
                               negative, latent, denoise=1.0, callback=check_cancel, disable_pbar=True, seed=seeds[0])


def decoded_batch(model, vae, positives: list, negative, seeds: list[int], settings: SamplingSettings) -> torch.Tensor:
    """One batch sampled with ComfyUI's sampler and decoded, as float images on the CPU."""
    latent = sample_batch(model, positives, negative, seeds, settings)
    images = vae.decode(latent)
    if images.ndim == 5:  # video VAEs: (B, T, H, W, 3)
        images = images.reshape(-1, *images.shape[-3:])
    return images.float().cpu()


def profile_work(target: list[str], other: list[str], settings: SamplingSettings) -> Work:
    return Work(len(target) + len(other), settings.steps, f"{len(target)} target + {len(other)} other prompts")


def record_profile(model, clip, sae, block: Block, target: list[str], other: list[str], *, name: str,
                   settings: SamplingSettings, label: str, share: WorkShare = WHOLE) -> ConceptProfile:
    """Sample every prompt (progress bar over prompts, Cancel honoured) and return the recorded profile.
    ``share``: this process samples only its share of each set's batches and the sums of every process are
    added (headless ranks); the batches, seeds and so the profile are those of one process."""
    recorder = ConceptRecordPatch(sae)
    identity = sae.identity()  # fingerprint first: a failure here should not waste the sampling
    patched = install_block_patch(model, block, recorder, label)
    negative = encode_prompt(clip, "")
    s = settings
    conditionings = {group: [encode_prompt(clip, p) for p in prompts]
                     for group, prompts in (("target", target), ("other", other))}
    batches = {group: share.pick(plan_batches(conds, s.batch_size)) for group, conds in conditionings.items()}
    progress = comfy.utils.ProgressBar(sum(len(b) for group in batches.values() for b in group))
    for group in ("target", "other"):
        recorder.group = group
        for batch in batches[group]:
            check_cancel()
            sample_batch(patched, [conditionings[group][i] for i in batch], negative, [s.seed + i for i in batch],
                         s)
            progress.update(len(batch))
    if not share.alone:
        recorder.merge_totals(share.gather(recorder.totals()))
    family = type(getattr(model.model, "model_config", model.model)).__name__
    sampling = {**s.as_dict(), "model": family}
    profile = recorder.profile(len(target), len(other), block.diffusers, name=name, target_prompts=list(target),
                               other_prompts=list(other), sampling=sampling)
    profile.sae = identity
    return profile
