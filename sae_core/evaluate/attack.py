"""UnlearnDiffAtk (Zhang et al. 2024, as SAeUron section 7.2 runs it): adversarial prompt tokens against an unlearned
diffusion model, with the model as its own classifier.

The attacker prepends ``k`` tokens to the prompt and looks for the ones under which the *unlearned* model denoises an
image that shows the concept best: the loss is the denoising error ``|| eps_hat(x_t, t, prompt + adv) - eps ||^2``
on the noised target latent ``x_t = x_0 + sigma_t * eps`` at timesteps drawn uniformly from the model's schedule
(one draw per attack, see :func:`run_attack`). The tokens live in the text encoder's input-embedding space and are
optimised with Adam there, projected to the nearest vocabulary token (cosine similarity) at every iteration with a
straight-through gradient (the loss is taken at the projected tokens, its gradient applied to the continuous ones),
as the hard-prompt attack of Diffusion-MU-Attack does. The result is real tokens: a prompt anyone can type.

Defaults are the paper's: 5 tokens, 40 iterations, learning rate 0.01, prepended, one timestep.

Everything here is pure torch: the model call is injected (``denoise(x_t, sigma, adversarial) -> x0``), so the
same code runs ComfyUI's model with the pack's patches in place (``nodes/attack.py``) or a tiny stand-in in tests.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import SAEInputError

PAPER_TOKENS, PAPER_ITERATIONS, PAPER_LR, PAPER_TIMESTEPS = 5, 40, 0.01, 1
MAX_TOKENS, MAX_ITERATIONS, MAX_TIMESTEPS = 32, 10_000, 64
MAX_LR = 10.0
POSITIONS = ("prepend", "append")
_VOCAB_CHUNK = 8192  # vocabulary rows compared at once (bounded memory for 49k x 768 CLIP vocabularies)

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackSettings:
    """What the attacker may do; :meth:`checked` refuses values outside the ranges, each error naming the value."""

    tokens: int = PAPER_TOKENS
    iterations: int = PAPER_ITERATIONS
    lr: float = PAPER_LR
    timesteps: int = PAPER_TIMESTEPS
    position: str = "prepend"

    @classmethod
    def checked(cls, *, tokens: int, iterations: int, lr: float, timesteps: int,
                position: str = "prepend") -> AttackSettings:
        from ..validate import check_choice, check_number

        check_number("tokens", tokens, 1, MAX_TOKENS, integer=True)
        check_number("iterations", iterations, 1, MAX_ITERATIONS, integer=True)
        check_number("learning_rate", lr, 1e-8, MAX_LR)
        check_number("timesteps", timesteps, 1, MAX_TIMESTEPS, integer=True)
        check_choice("position", position, POSITIONS)
        return cls(int(tokens), int(iterations), float(lr), int(timesteps), position)

    def model_calls(self, batch: int) -> int:
        """Model calls of the attack (each a forward and a backward pass): iterations x timesteps x images."""
        return self.iterations * self.timesteps * batch


def nearest_tokens(embeddings: Tensor, vocabulary: Tensor) -> Tensor:
    """The id of the vocabulary row of highest cosine similarity to each embedding (k,), compared in chunks."""
    if embeddings.ndim != 2 or vocabulary.ndim != 2 or embeddings.shape[1] != vocabulary.shape[1]:
        raise SAEInputError(f"embeddings {tuple(embeddings.shape)} and vocabulary {tuple(vocabulary.shape)} must be "
                            f"(k, D) and (V, D)")
    with torch.no_grad():
        query = torch.nn.functional.normalize(embeddings.float(), dim=1)
        best_score = torch.full((query.shape[0],), -math.inf, device=query.device)
        best_id = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        for start in range(0, vocabulary.shape[0], _VOCAB_CHUNK):
            rows = torch.nn.functional.normalize(vocabulary[start:start + _VOCAB_CHUNK].to(query), dim=1)
            score, index = (query @ rows.T).max(dim=1)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_id = torch.where(better, index + start, best_id)
    return best_id


def draw(target: Tensor, sigmas: Tensor, timesteps: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``timesteps`` (sigma, noise) pairs: timesteps uniform over the model's schedule ``sigmas`` (an index into
    it), noise like the target latents; drawn on the CPU, so a seed gives the same draw on every device."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(timesteps):
        index = int(torch.randint(len(sigmas), (1,), generator=generator))
        out.append((sigmas[index].reshape(1).to(target), torch.randn(target.shape, generator=generator).to(target)))
    return out


def denoising_loss(denoise: Denoiser, target: Tensor, adversarial: Tensor,
                   draws: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Mean over the draws of the noise-prediction MSE on the noised target latents (B, C, H, W):
    ``x_t = x_0 + sigma * eps``, ``eps_hat = (x_t - denoise(x_t)) / sigma``."""
    total = None
    for sigma, noise in draws:
        noised = target + noise * sigma
        eps = (noised - denoise(noised, sigma, adversarial)) / sigma
        loss = torch.nn.functional.mse_loss(eps.float(), noise.float())
        total = loss if total is None else total + loss
    return total / len(draws)


def loss_and_gradient(denoise: Denoiser, target: Tensor, tokens: Tensor,
                      draws: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """:func:`denoising_loss` of ``tokens`` (k, D) over every target image and draw, and its gradient with respect
    to them, one image and one draw at a time: the memory of an attack is one model call's forward and backward,
    whatever its number of target images and timesteps (the loss is a mean, so its gradient is the mean of theirs)."""
    parts = [(i, sigma, noise[i:i + 1]) for sigma, noise in draws for i in range(target.shape[0])]
    total = torch.zeros((), device=target.device)
    gradient = torch.zeros_like(tokens, dtype=torch.float32)
    for i, sigma, noise in parts:
        with torch.enable_grad():
            leaf = tokens.detach().clone().requires_grad_(True)
            loss = denoising_loss(denoise, target[i:i + 1], leaf, [(sigma, noise)]) / len(parts)
            if not torch.isfinite(loss):  # no backward pass through NaNs: the caller refuses the loss
                return loss.detach(), gradient
            if loss.requires_grad:  # a model that ignores the prompt gives no gradient
                gradient += torch.autograd.grad(loss, leaf)[0].float()
        total += loss.detach()
    return total, gradient


@dataclass
class AttackResult:
    """The adversarial tokens (those of the lowest loss), the loss of each iteration's projected tokens (the first
    is the initial tokens'), all on the attack's one draw of timesteps and noise, so they compare."""

    token_ids: list[int]
    losses: list[float] = field(default_factory=list)
    best_iteration: int = 0

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[self.best_iteration]

    def as_dict(self) -> dict:
        return {"token_ids": self.token_ids, "losses": self.losses, "initial_loss": self.initial_loss,
                "final_loss": self.final_loss, "best_iteration": self.best_iteration}


def run_attack(denoise: Denoiser, target: Tensor, vocabulary: Tensor, initial_ids: list[int], sigmas: Tensor,
               settings: AttackSettings, seed: int, *, progress: Callable[[int], None] | None = None,
               cancel: Callable[[], None] | None = None) -> AttackResult:
    """Optimise ``len(initial_ids)`` adversarial embeddings (Adam, straight-through projection to ``vocabulary``)
    and keep the projected tokens of the lowest loss.

    The timesteps and noise are drawn once per attack (``settings.timesteps`` of them, from ``seed``), so the loss of
    every iteration is measured on the same draw and the best iterate can be told (UnlearnDiffAtk draws a fresh
    timestep per iteration; here the draw is fixed to compare iterates). Only the adversarial embedding requires a
    gradient; ``vocabulary`` and the model are read, never written. ``cancel`` is called before each iteration
    (it raises to stop), ``progress(1)`` after each.
    """
    if len(initial_ids) != settings.tokens:
        raise SAEInputError(f"{len(initial_ids)} initial tokens for an attack of {settings.tokens}")
    if not torch.isfinite(target).all():
        raise SAEInputError("the target latent holds NaN or infinite values")
    vocabulary = vocabulary.detach()
    device = target.device
    with torch.inference_mode(False):
        adversarial = vocabulary[initial_ids].to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([adversarial], lr=settings.lr)
        draws = draw(target, sigmas, settings.timesteps, seed)
        result = AttackResult(list(initial_ids))
        for iteration in range(settings.iterations):
            if cancel is not None:
                cancel()
            ids = nearest_tokens(adversarial.detach(), vocabulary).tolist()
            loss, gradient = loss_and_gradient(denoise, target, vocabulary[ids].to(device=device, dtype=target.dtype),
                                               draws)
            if not torch.isfinite(loss):
                raise SAEInputError(f"the attack's loss became {float(loss)} (not finite); lower the "
                                    f"learning rate ({settings.lr:g})")
            result.losses.append(float(loss))
            if result.losses[-1] < result.losses[result.best_iteration]:
                result.best_iteration, result.token_ids = iteration, ids
            optimiser.zero_grad(set_to_none=True)
            adversarial.grad = gradient.to(adversarial.dtype)
            optimiser.step()
            if progress is not None:
                progress(1)
    return result
