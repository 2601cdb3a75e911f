"""A patched model compiled as ComfyUI's TorchCompileModel node compiles it (torch.compile of the diffusion
model through ``set_torch_compile_wrapper``, with that version's guard options), on the CPU with the ``eager`` and
``aot_eager`` backends: it runs, gives the eager result, and no graph break happens in this pack's code (the breaks
that remain are ComfyUI's own). One model carries a windowed steer, an unlearning patch and a recorder on three
blocks, at cfg > 1.
"""
from __future__ import annotations

import logging
import re

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import build_unet, random_conditioning, sample

import comfy_extras.nodes_torch_compile as torch_compile_node
from comfy_api.torch_helpers import set_torch_compile_wrapper

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.observe import SAERecordActivations  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.nodes.unlearn import SAEUnlearnConcept  # noqa: E402
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.sae_core.observe.concept_profile import ConceptProfile  # noqa: E402

LATENT = torch.zeros(1, 4, 32, 32)
BREAK = re.compile(r"Graph break.* in user code at (\S+):(\d+)")


def sae_at(hookpoint: str, seed: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(128, 256, 8, hookpoint=hookpoint, input_kind="diff", name=f"s{seed}")
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    sae.set_feature_stats(mean=torch.full((256,), 2.0))
    return sae


def patched(model):
    steer_sae = sae_at("unet.down_blocks.2.attentions.1", 0)
    unlearn_sae = sae_at("unet.up_blocks.0.attentions.1", 1)
    record_sae = sae_at("unet.mid_block.attentions.0", 2)
    g = torch.Generator().manual_seed(3)
    profile = ConceptProfile(torch.rand(3, 256, generator=g), torch.rand(3, 256, generator=g), 2, 2, (14.6, 5.0, 1.0),
                             unlearn_sae.identity(), "up_blocks.0.attentions.1", "c")
    m = SAEFeatureSteer.execute(model, steer_sae, "5, 9", "scale", 3.0, end_percent=0.5, passes="both").result[0]
    m = SAEUnlearnConcept.execute(m, unlearn_sae, profile, percentile=95.0, multiplier=-3.0).result[0]
    m, recording = SAERecordActivations.execute(m, record_sae, "").result
    return m, recording


class GraphBreaks(logging.Handler):
    def __init__(self):
        super().__init__()
        self.places: list[tuple[str, int]] = []

    def emit(self, record):
        match = BREAK.search(record.getMessage())
        if match:
            self.places.append((match.group(1), int(match.group(2))))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_compiled_patched_model_runs_gives_the_eager_result_and_breaks_no_graph_in_this_pack(backend):
    model = build_unet("sdxl")
    pos, neg = random_conditioning()
    eager_model, eager_recording = patched(model)
    eager = sample(eager_model, pos, neg, LATENT, steps=3, cfg=2.0)

    compiled_model, recording = patched(model)  # fresh patches: their caches are filled while compiling
    options = {"guard_filter_fn": torch_compile_node.skip_torch_compile_dict} \
        if hasattr(torch_compile_node, "skip_torch_compile_dict") else None
    set_torch_compile_wrapper(model=compiled_model, backend=backend, options=options)
    torch._dynamo.reset()
    breaks = GraphBreaks()
    torch._logging.set_logs(graph_breaks=True)  # (re)initialises torch's log handlers: ours are added after
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.endswith("__graph_breaks")]  # one artifact logger per dynamo module; none propagates to us
    for logger in loggers:
        logger.addHandler(breaks)
    try:
        compiled = sample(compiled_model, pos, neg, LATENT, steps=3, cfg=2.0)
        again = sample(compiled_model, pos, neg, LATENT, steps=3, cfg=2.0)  # compiled code, reused
    finally:
        torch._logging.set_logs()
        for logger in loggers:
            logger.removeHandler(breaks)
        torch._dynamo.reset()
    assert torch.equal(compiled, eager) and torch.equal(again, eager)
    assert [c.step for c in recording.calls] == [c.step for c in eager_recording.calls] == [0, 1, 2]
    for ours, theirs in zip(recording.calls, eager_recording.calls):
        assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.values, theirs.values)
    root = str(comfy_harness.REPO)
    assert breaks.places, "the log of graph breaks was not captured (ComfyUI's own code always breaks on the CPU)"
    assert [p for p in breaks.places if p[0].startswith(root)] == []
