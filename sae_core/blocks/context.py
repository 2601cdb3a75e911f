"""What a patch knows about one call of a block besides its tensors: the pass of each chunk, the current sigma
and the schedule (so edits run inside a window of the schedule and recordings know their step)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from .passes import POSITIVE


def nearest(values, target: float) -> int:
    """Index of the entry of ``values`` nearest to ``target`` (the first on ties); a plain loop, which
    torch.compile traces without a graph break (``min(key=...)`` it cannot)."""
    best, best_distance = 0, float("inf")
    for i, value in enumerate(values):
        distance = abs(value - target)
        if distance < best_distance:
            best, best_distance = i, distance
    return best


def _read_sigmas(sigma: torch.Tensor | None, schedule) -> tuple[float | None, tuple[float, ...] | None]:
    """The current sigma and the schedule as host numbers, in one read from the device when both live there (each
    read of a device tensor is a host sync, and this runs once per model call)."""
    if not isinstance(schedule, torch.Tensor):
        return (float(sigma) if sigma is not None else None), None
    if sigma is None:
        return None, tuple(schedule.tolist())
    if sigma.device != schedule.device:
        return float(sigma), tuple(schedule.tolist())
    values = torch.cat([sigma.reshape(1).double(), schedule.reshape(-1).double()]).tolist()
    return values[0], tuple(values[1:])


@dataclass(frozen=True)
class CallContext:
    """Facts of one model call that every patched block of it shares: the pass of each chunk
    (``cond_or_uncond``), the current sigma, the schedule, and the latent's shape and reference latents (which
    locate the generated image's tokens in a diffusion transformer)."""

    chunk_kinds: tuple[int, ...] = (POSITIVE,)
    sigma: float | None = None
    sample_sigmas: tuple[float, ...] | None = None  # the whole schedule, ending with the final sigma (often 0)
    latent_shape: tuple[int, ...] | None = None
    ref_shapes: tuple[tuple[int, ...], ...] = ()
    sigma_tensor: torch.Tensor | None = field(default=None, compare=False)  # the sigma on the device, unread

    @classmethod
    def from_transformer_options(cls, options: dict, latent: torch.Tensor | None = None,
                                 ref_latents=None) -> CallContext:
        """From ComfyUI's ``transformer_options`` (plain dict keys: no ComfyUI import needed) and, when the caller
        has them, the latent and reference latents of the model call."""
        kinds = tuple(int(k) for k in (options.get("cond_or_uncond") or (POSITIVE,)))
        sigmas = options.get("sigmas")
        sigma_tensor = sigmas.max() if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        sigma, schedule = _read_sigmas(sigma_tensor, options.get("sample_sigmas"))
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else None
        refs = tuple(tuple(r.shape) for r in (ref_latents or ()) if isinstance(r, torch.Tensor))
        return cls(kinds, sigma, schedule, shape, refs, sigma_tensor)

    def ref_tokens(self, patch: int) -> int:
        """Tokens the reference latents add after the generated image (patches of ``patch`` x ``patch``)."""
        return sum(((s[-2] + patch // 2) // patch) * ((s[-1] + patch // 2) // patch) for s in self.ref_shapes)

    @property
    def n_steps(self) -> int | None:
        return len(self.sample_sigmas) - 1 if self.sample_sigmas else None

    @cached_property
    def step(self) -> int | None:
        """Index of the schedule entry nearest to the current sigma (the step being denoised); computed once per
        model call, for all its patched blocks."""
        if self.sigma is None or not self.sample_sigmas:
            return None
        steps = self.sample_sigmas[:-1] or self.sample_sigmas
        return nearest(steps, self.sigma)


@dataclass(frozen=True)
class StepWindow:
    """Active while ``sigma_end <= sigma <= sigma_start`` (ControlNet-style start/end percent)."""

    sigma_start: float = float("inf")
    sigma_end: float = 0.0

    def contains(self, sigma: float | None) -> bool:
        if sigma is None:
            return True
        return self.sigma_end <= sigma <= self.sigma_start


ALWAYS = StepWindow()  # active at every sigma
