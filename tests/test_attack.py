"""The UnlearnDiffAtk core (sae_core.evaluate.attack) on a tiny denoiser whose text side is a mean of token
embeddings: the projection finds real vocabulary rows, the loss of the attacked tokens falls below the initial
one's, the model and vocabulary are untouched, and bad settings are refused naming the value."""
from __future__ import annotations

import pytest
import torch

from sae_core.errors import SAEInputError
from sae_core.evaluate.attack import (
    AttackSettings,
    denoising_loss,
    draw,
    loss_and_gradient,
    nearest_tokens,
    run_attack,
)

V, D, C, SIDE = 64, 8, 4, 4


class TinyDenoiser(torch.nn.Module):
    """x0 prediction = x_t / (1 + sigma^2) + the latent the conditioning asks for: a linear map of the mean
    adversarial embedding. Tokens near ``concept`` ask for the target latent; others for something else."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.vocabulary = torch.randn(V, D, generator=g)
        self.read = torch.nn.Linear(D, C * SIDE * SIDE, bias=False)
        with torch.no_grad():  # token 7's direction decodes to the target, the rest to roughly nothing
            direction = torch.nn.functional.normalize(self.vocabulary[7], dim=0)
            self.read.weight.copy_(torch.outer(target.flatten(), direction) * 2)
        self.calls = 0

    def forward(self, noised, sigma, adversarial):
        self.calls += 1
        wanted = self.read(adversarial.mean(0)).reshape(1, C, SIDE, SIDE)
        s = sigma.reshape(-1, 1, 1, 1)
        return noised / (1 + s ** 2) + wanted * (s ** 2 / (1 + s ** 2))


@pytest.fixture()
def tiny():
    target = torch.randn(1, C, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    return target, TinyDenoiser(target), torch.linspace(0.05, 3.0, 50)


def test_projection_picks_the_row_of_highest_cosine_similarity(tiny):
    _, model, _ = tiny
    vocab = model.vocabulary
    # scaled copies of rows (cosine 1) and a vocabulary larger than one comparison chunk
    assert nearest_tokens(vocab[[3, 60, 7]] * 5.0, vocab).tolist() == [3, 60, 7]
    big = torch.randn(20_000, D, generator=torch.Generator().manual_seed(2))
    query = big[[19_999, 8193]] + 0.01
    expected = torch.nn.functional.cosine_similarity(query[:, None], big[None], dim=2).argmax(1)
    assert nearest_tokens(query, big).tolist() == expected.tolist() == [19_999, 8193]


def test_the_attack_lowers_the_denoising_loss_with_real_tokens_and_touches_nothing(tiny):
    target, model, sigmas = tiny
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    vocab_before = model.vocabulary.clone()
    settings = AttackSettings.checked(tokens=1, iterations=40, lr=0.3, timesteps=2)
    steps = []
    result = run_attack(model, target, model.vocabulary, [0], sigmas, settings, seed=0, progress=steps.append)
    assert len(result.losses) == 40 and steps == [1] * 40 and model.calls == 80  # iterations x timesteps
    assert result.final_loss < 0.9 * result.initial_loss            # the attack found better tokens
    assert result.final_loss == min(result.losses) and result.initial_loss == result.losses[0]
    assert result.token_ids != [0] and all(0 <= i < V for i in result.token_ids)
    # every single token's loss on the attack's draw: the reported loss is the found token's, in the better half
    draws = draw(target, sigmas, 2, 0)
    with torch.no_grad():
        every = torch.tensor([float(denoising_loss(model, target, model.vocabulary[[i]], draws)) for i in range(V)])
    assert float(every[result.token_ids[0]]) == pytest.approx(result.final_loss, rel=1e-6)
    assert result.final_loss < float(every.median())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.vocabulary, vocab_before) and not model.vocabulary.requires_grad
    assert all(p.grad is None for p in model.parameters())
    # seeded: the same run gives the same tokens
    again = run_attack(model, target, model.vocabulary, [0], sigmas, settings, seed=0)
    assert again.token_ids == result.token_ids and again.losses == result.losses


def test_the_gradient_is_taken_one_image_and_one_draw_at_a_time_and_equals_the_whole_batchs(tiny):
    target, model, sigmas = tiny
    targets = torch.cat([target, -target])
    draws = draw(targets, sigmas, 3, seed=4)
    tokens = model.vocabulary[[5, 9]]
    batches = []

    def denoise(noised, sigma, adversarial):
        batches.append(noised.shape[0])
        return model(noised, sigma, adversarial)

    loss, gradient = loss_and_gradient(denoise, targets, tokens, draws)
    leaf = tokens.clone().requires_grad_(True)
    whole = denoising_loss(model, targets, leaf, draws)
    (expected,) = torch.autograd.grad(whole, leaf)
    assert batches == [1] * 6  # memory: one image's model call at a time
    assert float(loss) == pytest.approx(float(whole.detach()), rel=1e-6)
    assert torch.allclose(gradient, expected, rtol=1e-5, atol=1e-8) and float(gradient.abs().sum()) > 0


def test_cancel_stops_between_iterations_and_a_diverging_loss_is_refused(tiny):
    target, model, sigmas = tiny
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        run_attack(model, target, model.vocabulary, [0], sigmas, AttackSettings(tokens=1), 0, cancel=cancel)
    assert len(calls) == 3
    with pytest.raises(SAEInputError, match="not finite"):
        run_attack(lambda x, s, a: x * float("nan"), target, model.vocabulary, [0], sigmas,
                   AttackSettings(tokens=1, iterations=1), 0)


@pytest.mark.parametrize("values, message", [
    (dict(iterations=0), "iterations 0 is out of range"), (dict(iterations=-3), "iterations -3 is out of range"),
    (dict(iterations=10**9), "iterations 1e\\+09 is out of range"), (dict(lr=float("nan")), "learning_rate must be"),
    (dict(tokens=0), "tokens 0 is out of range"), (dict(timesteps=2.5), "timesteps must be an integer"),
    (dict(position="middle"), "position"),
])
def test_bad_settings_are_refused_naming_the_value(values, message):
    base = dict(tokens=5, iterations=40, lr=0.01, timesteps=1)
    with pytest.raises(SAEInputError, match=message):
        AttackSettings.checked(**{**base, **values})
    assert AttackSettings.checked(**base) == AttackSettings()
    assert AttackSettings().model_calls(3) == 120
