"""The SAE trainer: exact sparse gradients, dictionary recovery, AuxK, resume, statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_dictionary import distinct_picks, planted_dictionary, recovery

from sae_core import load_sae
from sae_core.errors import SAEInputError
from sae_core.train import ActivationSource, RunFiles, SAETrainer, TrainConfig, new_sae, train_sae
from sae_core.train.checkpoint import CheckpointMismatch, load_checkpoint

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: thread hand-offs would cost more than the maths on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_reference_grads(sae, x, cfg: TrainConfig, dead: torch.Tensor) -> dict:
    """The same losses written densely and differentiated by autograd."""
    p = {n: getattr(sae, n).detach().clone().requires_grad_(True) for n in PARAMS}
    pre = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    if cfg.activation == "topk":
        v, i = pre.topk(cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(1, i, v.relu())
    else:
        cut = pre.flatten().topk(cfg.k * x.shape[0]).values.min()
        z = torch.where((pre >= cut) & (pre > 0), pre, torch.zeros_like(pre))
    e = x - (z @ p["W_dec"] + p["b_dec"])
    loss = (e ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    dead_idx = dead.nonzero().squeeze(1)
    if len(dead_idx):
        v, i = pre[:, dead_idx].topk(min(cfg.auxk, len(dead_idx)), dim=-1)
        e_hat = torch.zeros_like(pre).scatter(1, dead_idx[i], v.relu()) @ p["W_dec"]
        r = e.detach()  # the residual x - x_hat: the correct AuxK target
        loss = loss + cfg.auxk_coef * ((e_hat - r) ** 2).sum() / ((r - r.mean(0)) ** 2).sum()
    loss.backward()
    grads = {n: t.grad for n, t in p.items()}
    w = p["W_dec"].detach()
    grads["W_dec"] = grads["W_dec"] - (grads["W_dec"] * w).sum(1, keepdim=True) * w
    return grads



@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_gradients_equal_dense_autograd(activation):
    g = torch.Generator().manual_seed(0)
    cfg = TrainConfig(n_latents=64, k=4, activation=activation, batch_size=96, auxk=8, dead_tokens=10, grad_clip=0)
    sae = new_sae(16, cfg)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(16, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(64, generator=g))
    x = 2 * torch.randn(96, 16, generator=g) + 1
    trainer = SAETrainer(sae, cfg, total_steps=10)
    trainer.tokens_since_fired[:24] = 100  # 24 dead latents: AuxK is on
    expected = dense_reference_grads(sae, x, cfg, trainer.tokens_since_fired > cfg.dead_tokens)
    seen = {}
    trainer.optimizer.step = lambda *a, **k: seen.update({n: p.grad.clone() for n, p in zip(PARAMS, trainer.params)})
    metrics = trainer.train_step(x)
    for name in PARAMS:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-6)
    assert metrics["auxk_loss"] > 0
    assert metrics["l0"] == pytest.approx(4.0)


def test_batch_topk_cut_is_exact_even_when_one_row_dominates():
    cfg = TrainConfig(n_latents=256, k=4, activation="batchtopk")
    trainer = SAETrainer(new_sae(8, cfg), cfg, 1)
    pre = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    for rows_boosted in (0, 1, 3):  # rows holding far more than 2k of the batch's largest values
        boosted = pre.clone()
        boosted[:rows_boosted] += 10.0
        expected = boosted.flatten().topk(4 * 64).values.min()
        assert trainer.batch_threshold(boosted, 4 * 64) == expected


def array_source(tmp_path, x: torch.Tensor, name: str = "x.npy") -> ActivationSource:
    np.save(tmp_path / name, x.numpy())
    return ActivationSource.open(tmp_path)


def test_planted_rows_are_sparse_positive_sums_of_the_directions():
    """Without noise or offset every row is a sum of exactly ``active`` planted directions with magnitudes in
    [0.5, 1.5), across the generator's row chunks (independent directions: least squares recovers the code)."""
    rows = 70_000  # more than one chunk
    planted = planted_dictionary(rows, 24, 16, 3, noise=0.0, offset=0.0, seed=5)
    codes = torch.linalg.lstsq(planted.directions.double().T, planted.x.double().T).solution.T
    active = codes.abs() > 1e-6
    assert (active.sum(1) == 3).all()
    assert codes[active].min() >= 0.5 - 1e-6 and codes[active].max() < 1.5 + 1e-6
    assert torch.allclose(planted.directions.norm(dim=1), torch.ones(16))


def test_distinct_picks_are_distinct_and_uniform():
    picks = distinct_picks(100_000, 10, 6, torch.Generator().manual_seed(0))
    ordered = picks.sort(dim=1).values
    assert (ordered[:, 1:] != ordered[:, :-1]).all()
    frequency = torch.bincount(picks.flatten(), minlength=10).double() / picks.numel()
    assert torch.allclose(frequency, torch.full((10,), 0.1, dtype=torch.float64), atol=3e-3)
    with pytest.raises(ValueError, match="active=11 exceeds n_features=10"):
        distinct_picks(1, 10, 11, torch.Generator())


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_planted_dictionary_is_recovered(tmp_path, activation):
    planted = planted_dictionary(16384, d_in=32, n_features=48, active=3, noise=0.01, seed=1)
    cfg = TrainConfig(n_latents=96, k=3, activation=activation, batch_size=256, steps=400, lr=3e-3, log_every=100,
                      auxk=32, dead_tokens=16384, stats_rows=4096)
    result = train_sae(cfg, array_source(tmp_path, planted.x))
    assert recovery(result.sae.W_dec, planted.directions) >= 0.9
    assert result.history[-1]["fvu"] < 0.1
    assert result.history[-1]["fvu"] < result.history[0]["fvu"]
    # unit-norm decoder rows, the learned offset found by b_dec
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(96), rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_mixed_precision_encoder_still_learns(tmp_path, monkeypatch, activation):
    """On CUDA the encoder matmul runs under autocast (bf16 by default) and everything after it takes
    reduced-precision pre-activations. CPU autocast produces the same dtypes, so the path is exercised here by
    switching it on for CPU; the CUDA kernels themselves are not (this suite has no GPU)."""
    encoded = []
    real_encode = SAETrainer._encode

    def recording_encode(self, x_c, W_enc, b_enc):
        pre = real_encode(self, x_c, W_enc, b_enc)
        encoded.append(pre.dtype)
        return pre

    monkeypatch.setattr(SAETrainer, "_amp_dtype", lambda self: torch.bfloat16)
    monkeypatch.setattr(SAETrainer, "_encode", recording_encode)
    planted = planted_dictionary(16384, d_in=32, n_features=48, active=3, noise=0.01, seed=1)
    cfg = TrainConfig(n_latents=96, k=3, activation=activation, batch_size=256, steps=400, lr=3e-3, log_every=100,
                      auxk=32, dead_tokens=16384, stats_rows=4096)
    result = train_sae(cfg, array_source(tmp_path, planted.x))
    assert set(encoded) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in result.sae.parameters())
    assert recovery(result.sae.W_dec, planted.directions) >= 0.9
    assert result.history[-1]["fvu"] < 0.1


def test_auxk_revives_dead_latents():
    """Half the latents start too weak to ever win the top-k: without AuxK they never get a gradient."""
    planted = planted_dictionary(8192, d_in=32, n_features=32, active=3, noise=0.01, seed=2)

    def run(auxk: int) -> list[float]:
        cfg = TrainConfig(n_latents=32, k=3, batch_size=256, lr=3e-3, auxk=auxk, auxk_coef=1 / 32, dead_tokens=512,
                          warmup=0, decay=0)
        sae = new_sae(32, cfg)
        with torch.no_grad():
            sae.W_enc[16:] *= 0.01
        trainer = SAETrainer(sae, cfg, total_steps=300)
        trainer.init_b_dec(planted.x[:256])
        dead = []
        for step in range(300):
            rows = torch.arange(step * 256, (step + 1) * 256) % planted.x.shape[0]
            dead.append(trainer.train_step(planted.x[rows])["dead_fraction"])
        return dead

    with_auxk, without = run(16), run(0)
    assert min(without[20:]) >= 0.4                            # dead, and they stay dead
    assert max(with_auxk[:40]) >= 0.25 and with_auxk[-1] <= 0.15  # dead at first, revived by AuxK


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    planted = planted_dictionary(3000, d_in=16, n_features=24, active=2, seed=3)
    np.save(tmp_path / "x.npy", planted.x.numpy())
    source = ActivationSource.open(tmp_path / "x.npy", chunk_rows=500)  # 6 chunks, shuffled in buffers of 2
    cfg = TrainConfig(n_latents=48, k=2, batch_size=128, steps=60, lr=3e-3, log_every=10, checkpoint_every=20,
                      buffer_rows=700, dead_tokens=1000, auxk=8, stats_rows=1000)
    straight = train_sae(cfg, source, files=RunFiles.beside(tmp_path / "a.safetensors"))

    class Crash(Exception):
        pass

    def crash_at_47(done, total, metrics):
        if done == 47:
            raise Crash

    files = RunFiles.beside(tmp_path / "b.safetensors")
    with pytest.raises(Crash):
        train_sae(cfg, source, files=files, on_step=crash_at_47)
    assert not files.out.exists()
    assert load_checkpoint(files.checkpoint)["trainer"]["step"] == 40
    resumed = train_sae(cfg, source, files=files, resume=True)
    assert resumed.resumed_at == 40
    for name in (*PARAMS, "feature_mean", "feature_std", "feature_firing_rate"):
        assert torch.equal(getattr(resumed.sae, name), getattr(straight.sae, name)), name
    assert [r["fvu"] for r in resumed.history] == [r["fvu"] for r in straight.history]
    # the log was cut back to the checkpoint and continued: one row per interval, no duplicates
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in files.log.read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]
    saved = load_sae(files.out)
    assert torch.equal(saved.W_dec, straight.sae.W_dec)


def test_resume_refuses_other_settings(tmp_path):
    planted = planted_dictionary(1000, d_in=8, n_features=8, active=2, seed=4)
    source = array_source(tmp_path, planted.x)
    files = RunFiles.beside(tmp_path / "run.safetensors")
    cfg = TrainConfig(n_latents=16, k=2, batch_size=100, steps=5, checkpoint_every=5, stats_rows=100)
    train_sae(cfg, source, files=files)
    other = TrainConfig(n_latents=16, k=3, batch_size=100, steps=5, checkpoint_every=5, stats_rows=100)
    with pytest.raises(CheckpointMismatch, match=r"other settings \(k: 2 -> 3\)"):
        train_sae(other, source, files=files, resume=True)


def test_feature_stats_are_over_active_positions_and_stored(tmp_path):
    planted = planted_dictionary(4096, d_in=16, n_features=16, active=2, seed=5)
    source = array_source(tmp_path, planted.x)
    cfg = TrainConfig(n_latents=32, k=2, batch_size=256, steps=50, lr=3e-3, stats_rows=4096)
    files = RunFiles.beside(tmp_path / "sae.safetensors")
    result = train_sae(cfg, source, files=files, sae_meta={"hookpoint": "unet.up_blocks.0.attentions.1",
                                                           "input_kind": "diff"})
    sae = load_sae(files.out)
    with torch.no_grad():
        code = sae.encode_topk(planted.x)
    f = int(torch.bincount(code.indices[code.values > 0].flatten(), minlength=32).argmax())
    active = code.values[(code.indices == f) & (code.values > 0)]
    assert float(sae.feature_mean[f]) == pytest.approx(float(active.mean()), rel=1e-4)
    assert float(sae.feature_std[f]) == pytest.approx(float(active.std(unbiased=False)), rel=1e-3)
    assert float(sae.feature_firing_rate[f]) == pytest.approx(active.numel() / 4096, rel=1e-6)
    assert sae.hookpoint == "unet.up_blocks.0.attentions.1" and sae.input_kind == "diff"
    assert sae.extra["training"]["k"] == 2 and sae.extra["training"]["total_steps"] == 50
    assert sae.extra["training"]["final"]["fvu"] == pytest.approx(result.history[-1]["fvu"])


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(lr=1.0, warmup=0.1, decay=0.2)
    lrs = [cfg.lr_at(s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == 1.0 and lrs[80] == pytest.approx(1.0) and lrs[99] == pytest.approx(0.05)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


@pytest.mark.parametrize("bad, message", [
    ({"k": 0}, "k must be between 1 and latents"),
    ({"activation": "relu"}, "activation 'relu' is not valid; valid: topk, batchtopk"),
    ({"warmup": 0.6, "decay": 0.6}, "sum <= 1"),
    ({"b_dec_init": "median2"}, "valid: median, mean, zero"),
])
def test_bad_settings_are_named(bad, message):
    with pytest.raises(SAEInputError, match=message):
        TrainConfig(**bad).validate()


def test_geometric_median_init_resists_outliers():
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(2)) * 0.1 + 3.0
    x[:20] += 1000.0  # a few huge outliers drag the mean, not the median
    trainer = SAETrainer(new_sae(8, TrainConfig(n_latents=16, k=2)), TrainConfig(n_latents=16, k=2), 1)
    trainer.init_b_dec(x)
    assert (trainer.sae.b_dec - 3.0).abs().max() < 0.1
    mean_cfg = TrainConfig(n_latents=16, k=2, b_dec_init="mean")
    trainer = SAETrainer(new_sae(8, mean_cfg), mean_cfg, 1)
    trainer.init_b_dec(x)
    torch.testing.assert_close(trainer.sae.b_dec, x.mean(0))
