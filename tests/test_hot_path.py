"""The patches' steady state on an accelerator: nothing read back to the host, memory bounded by the SAE and
O(positions x k), SAE math in fp32 for half-precision blocks, the same results as the CPU path.

An accelerator cannot be assumed here, so the accelerator path is forced on the CPU
(``sae_core.blocks.host.host_reads_are_free`` -> False) and every operation that would read a tensor's values
back to the host is counted (``tests/sync_counter.py``): on a GPU each one is a host sync."""
from __future__ import annotations

import factories
import pytest
import torch
from devices import DEVICE
from sync_counter import HostReads
from torch.utils._python_dispatch import TorchDispatchMode

from sae_core import SparseAutoencoder
from sae_core.blocks import host
from sae_core.blocks.context import CallContext, StepWindow
from sae_core.blocks.dit import IMAGE_AFTER_TEXT, IMAGE_FIRST, patched_block
from sae_core.blocks.unet import patched_output
from sae_core.edits.steering import MODES, FeatureSteering, SteerPatch
from sae_core.edits.unlearn import ConceptSelection, StepSelection, UnlearnPatch
from sae_core.observe.concept_recorder import ConceptRecordPatch
from sae_core.observe.recording import Recording, RecordPatch
from sae_core.sae import model as sae_model
from sae_core.sae.feature_ids import FeatureEdit
from sae_core.train.collect import CollectPatch

D, N, K = 32, 256, 8
CTX = CallContext((1, 0), 5.0, (10.0, 5.0, 0.0), (2, 4, 16, 16))


def make_sae(input_kind="diff", seed=0) -> SparseAutoencoder:
    sae = factories.tiny_sae(D, N, K, input_kind=input_kind, seed=seed, mean=2.0)
    with torch.no_grad():
        sae.b_enc.fill_(0.5)  # features fire everywhere
    return sae.to(DEVICE)


def block_call(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, D, 6, 10, generator=g), torch.randn(4, D, 6, 10, generator=g)
    return x.to(DEVICE, dtype), y.to(DEVICE, dtype)


class _Profile:
    sigmas = (5.0,)
    name = "p"


def unlearn_patch(sae, threshold: float) -> UnlearnPatch:
    step = StepSelection(torch.tensor([3, 7, 11]), torch.ones(3, dtype=torch.float64), torch.full((3,), threshold),
                         torch.full((3,), -2.0))
    return UnlearnPatch(sae, [ConceptSelection(_Profile(), 99.0, -1.0, (step,))])


def all_patches():
    sae = make_sae()
    mask = torch.zeros(48, 80)
    mask[:, 40:] = 1.0
    patches = {f"steer {mode}": SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 2.0), FeatureEdit(9, -1.0)], mode),
                                           StepWindow(), "positive, negated on negative", mask) for mode in MODES}
    patches["steer idle"] = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 0.0)], "add"), StepWindow(), "both", None)
    patches["record"] = RecordPatch(sae, Recording(sae, "mid.0"))
    patches["unlearn, editing"] = unlearn_patch(sae, -1.0)
    patches["unlearn, nothing fires"] = unlearn_patch(sae, 1e30)
    patches["collect"] = CollectPatch("diff", "both", "fp16", positions=20)
    patches["concept profile"] = ConceptRecordPatch(sae)
    return patches


@pytest.fixture
def accelerator_path(monkeypatch):
    monkeypatch.setattr(host, "host_reads_are_free", lambda t: False)


@pytest.mark.parametrize("name", list(all_patches()))
def test_the_steady_state_of_every_patch_reads_nothing_back_to_the_host(accelerator_path, name):
    patch = all_patches()[name]
    x, y = block_call()
    patched_output(patch, x, y, CTX)  # the first call fills the caches (host facts: passes, masks, casts)
    with HostReads() as reads:
        for _ in range(3):
            patched_output(patch, x, y, CTX)
    assert reads.ops == [], f"{name}: {reads.ops}"


@pytest.mark.parametrize("tokens", [IMAGE_FIRST, IMAGE_AFTER_TEXT])
def test_the_dit_view_reads_nothing_back_either(accelerator_path, tokens):
    sae = make_sae()
    patch = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 2.0)], "scale"), StepWindow(), "both", None)
    ctx = CallContext((0,), 5.0, (10.0, 5.0, 0.0), (2, 16, 12, 20), ((1, 16, 8, 8),))
    seq = torch.randn(2, 5 + 60 + 16, D, device=DEVICE)
    args = {"img": seq, "transformer_options": {}}
    def one_call():
        return patched_block(patch, tokens, args, lambda a: {"img": a["img"] + 1.0}, ctx, patch_size=2)

    one_call()  # fills the caches
    with HostReads() as reads:
        for _ in range(2):
            one_call()
    assert reads.ops == []


def test_the_accelerator_path_of_unlearning_gives_the_cpu_path_result(monkeypatch):
    sae = make_sae(input_kind="output")
    x, y = block_call()
    on_cpu = unlearn_patch(sae, 0.3)
    expected = patched_output(on_cpu, x, y, CTX)
    monkeypatch.setattr(host, "host_reads_are_free", lambda t: False)
    on_device = unlearn_patch(sae, 0.3)
    got = patched_output(on_device, x, y, CTX)
    assert torch.allclose(got, expected, atol=1e-5) and not torch.equal(expected, y)
    assert on_device.edited_positions == on_cpu.edited_positions > 0
    # where nothing fires the output is the block's own, value for value
    assert torch.equal(patched_output(unlearn_patch(sae, 1e30), x, y, CTX), y)


class LargestResult(TorchDispatchMode):
    """The largest tensor any operation allocated (elements; views allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["steer scale", "steer clamp", "record", "unlearn, editing"])
def test_no_dense_positions_x_latents_tensor_on_the_steady_path(monkeypatch, accelerator_path, name):
    monkeypatch.setattr(sae_model, "ENCODE_CHUNK", 2048)  # 8 positions of 256 latents at a time
    patch = all_patches()[name]
    x, y = block_call()
    positions = x.shape[0] * x.shape[2] * x.shape[3]  # 240
    patched_output(patch, x, y, CTX)
    with LargestResult() as sizes:
        patched_output(patch, x, y, CTX)
    # the SAE's own weights (N x D, cast once) and O(positions x (D + k)); never positions x N
    assert sizes.largest <= max(2048, N * D, positions * D, positions * K * 4) < positions * N


def test_the_chunked_encode_is_the_encode(monkeypatch):
    sae = make_sae()
    u = torch.randn(3, 7, 11, D, device=DEVICE)
    whole = sae.encode_topk(u)
    monkeypatch.setattr(sae_model, "ENCODE_CHUNK", N * 5)
    parts = sae.encode_topk(u)
    order, chunked_order = whole.indices.argsort(-1), parts.indices.argsort(-1)  # top-k in any order
    assert torch.equal(parts.indices.gather(-1, chunked_order), whole.indices.gather(-1, order))
    # the same dot products, but BLAS may block them differently for another number of rows: last-bit rounding
    assert torch.allclose(parts.values.gather(-1, chunked_order), whole.values.gather(-1, order), atol=1e-6)
    assert parts.values.shape == (3, 7, 11, K)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_blocks_run_the_sae_in_fp32_and_stay_exact_when_idle(dtype):
    sae = make_sae()
    x, y = block_call(dtype=dtype)
    idle = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 0.0)], "scale"), StepWindow(), "both", None)
    assert patched_output(idle, x, y, CTX) is y
    active = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 2.0)], "scale"), StepWindow(), "both", None)
    out = patched_output(active, x, y, CTX)
    assert out.dtype == dtype and not torch.equal(out, y)
    # the recorded code is the fp32 code of the half-precision update
    recording = Recording(sae, "mid.0")
    patched_output(RecordPatch(sae, recording), x, y, CTX)
    reference = sae.encode_topk((y.float() - x.float()).permute(0, 2, 3, 1))
    got = recording.calls[0]
    assert torch.equal(got.indices.long().sort(-1).values,
                       reference.indices.reshape(4, 60, K).sort(-1).values.cpu())


class _ThreeSteps:
    sigmas = (10.0, 3.0, 0.5)
    name = "three"


def test_the_device_side_step_choice_matches_the_host_one_for_several_overlapping_concepts(monkeypatch):
    """Two concepts, three profile steps with different features (one shared by both concepts at a step): the
    accelerator path picks each concept's step on the device and edits as the CPU path does, step by step."""
    sae = make_sae(input_kind="output")
    x, y = block_call(seed=4)

    def concept(features_per_step, threshold):
        steps = tuple(StepSelection(torch.tensor(fs, dtype=torch.long), torch.ones(len(fs), dtype=torch.float64),
                                    torch.full((len(fs),), threshold), torch.full((len(fs),), -3.0))
                      for fs in features_per_step)
        return ConceptSelection(_ThreeSteps(), 99.0, -1.0, steps)

    selections = [concept([[3, 7], [11], [5, 9, 13]], 0.2), concept([[7], [], [2]], 0.1)]
    for sigma in (12.0, 4.0, 2.0, 0.6, 0.01):
        ctx = CallContext((0, 1), sigma, (10.0, 3.0, 0.5, 0.0), (4, 4, 6, 10),
                          sigma_tensor=torch.tensor(sigma, device=DEVICE))
        expected = patched_output(UnlearnPatch(sae, selections), x, y, ctx)
        with monkeypatch.context() as patch:
            patch.setattr(host, "host_reads_are_free", lambda t: False)
            got = patched_output(UnlearnPatch(sae, selections), x, y, ctx)
        assert torch.allclose(got, expected, atol=1e-5), sigma
