"""The SAE class: sparse fast paths agree with the dense formulas, dtypes and devices follow the caller."""
from __future__ import annotations

import pytest
import torch

from sae_core import SAEInputError, SparseAutoencoder, SparseCode


def _sae(d=64, n=256, k=8, seed=0, **kwargs) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, n, k, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(n, d, generator=g) / d**0.5)
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
    return sae


def test_sparse_paths_match_dense():
    sae = _sae()
    x = torch.randn(3, 5, 7, 64)  # any leading shape (batch, h, w)
    dense = sae.encode(x)
    code = sae.encode_topk(x)
    assert dense.shape == (3, 5, 7, 256) and code.values.shape == (3, 5, 7, 8)
    scattered = torch.zeros_like(dense).scatter(-1, code.indices, code.values)
    assert torch.equal(scattered, dense)
    assert (sae.decode_sparse(code) - sae.decode(dense)).abs().max() <= 1e-5
    assert (dense > 0).sum(-1).max() <= 8


def test_decode_directions_is_sum_of_rows():
    sae = _sae()
    code = SparseCode(torch.tensor([[2.0, -1.0]]), torch.tensor([[3, 7]]))
    expected = 2 * sae.W_dec[3] - sae.W_dec[7]
    assert torch.allclose(sae.decode_directions(code)[0], expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_the_caller(dtype):
    sae = _sae()
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    ref = sae.reconstruct(x)
    out = sae.reconstruct(x.to(dtype))
    assert out.dtype == dtype
    assert sae.W_enc.dtype == torch.float32  # the module itself is untouched
    # low precision may swap a latent at the top-k boundary; overall the result must stay close
    assert (out.float() - ref).norm() < 0.1 * ref.norm()
    half_code, full_code = sae.encode_topk(x.to(dtype)), sae.encode_topk(x)
    assert half_code.values.dtype == dtype
    same = [len(set(a) & set(b)) for a, b in zip(half_code.indices.tolist(), full_code.indices.tolist())]
    assert sum(same) >= 0.9 * full_code.indices.numel()


def test_cast_cache_sees_weight_updates():
    sae = _sae()
    x = torch.randn(4, 64, dtype=torch.float64)
    before = sae.reconstruct(x)
    with torch.no_grad():
        sae.W_dec.mul_(2)
    after = sae.reconstruct(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, sae.reconstruct(x.float()).double(), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_inputs_are_served_on_cuda():
    sae = _sae()
    x = torch.randn(32, 64)
    out = sae.reconstruct(x.cuda().half())
    assert out.is_cuda and out.dtype == torch.float16
    assert (out.float().cpu() - sae.reconstruct(x)).abs().max() < 0.05


def test_relu_sae_needs_k_for_topk_code():
    sae = SparseAutoencoder(16, 32, None, activation="relu")
    with pytest.raises(SAEInputError, match="pass k"):
        sae.encode_topk(torch.randn(2, 16))
    assert sae.encode_topk(torch.randn(2, 16), k=4).values.shape == (2, 4)


def test_input_standardisation_is_undone():
    sae = _sae(input_norm=True)
    x = torch.randn(10, 64) * 7 + 3
    xs, norm = sae.standardize(x)
    assert torch.allclose(xs.mean(-1), torch.zeros(10), atol=1e-5)
    assert torch.allclose(norm.undo(xs), x, atol=1e-4)
    # the code ignores each vector's offset and scale, and the reconstruction puts them back
    assert torch.equal(sae.encode_topk(x * 3 + 5).indices, sae.encode_topk(x).indices)
    assert torch.allclose(sae.reconstruct(x * 3 + 5), sae.reconstruct(x) * 3 + 5, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be between 1 and n_latents"),
    ({"k": 257}, "k must be between 1 and n_latents"),
    ({"k": 4, "activation": "gelu"}, "activation 'gelu' is not supported"),
    ({"k": 4, "input_kind": "input"}, "input_kind 'input' is not valid"),
])
def test_constructor_rejects_bad_settings(kwargs, message):
    with pytest.raises(SAEInputError, match=message):
        SparseAutoencoder(64, 256, **kwargs)


def test_wrong_width_is_a_clear_error():
    with pytest.raises(SAEInputError, match="width 64, got shape \\(2, 32\\)"):
        _sae().encode(torch.randn(2, 32))


def test_strength_unit_uses_positive_means_only():
    sae = _sae(n=4, k=2)
    assert torch.equal(sae.strength_unit(torch.tensor([0, 3])), torch.ones(2))
    sae.set_feature_stats(mean=torch.tensor([2.0, 0.0, float("nan"), 0.5]))
    assert torch.equal(sae.strength_unit(torch.tensor([0, 1, 2, 3])), torch.tensor([2.0, 1.0, 1.0, 0.5]))
    with pytest.raises(SAEInputError, match="shape \\(4,\\)"):
        sae.set_feature_stats(mean=torch.ones(5))


def test_fingerprint_follows_the_weights():
    torch.manual_seed(0)
    a = _sae(seed=0)
    torch.manual_seed(0)
    b = _sae(seed=0)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    with torch.no_grad():
        b.W_dec[0, 0] += 1
    assert a.fingerprint() != b.fingerprint()
