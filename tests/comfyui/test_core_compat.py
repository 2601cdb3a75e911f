"""The block patch against ComfyUI core changes: any call signature, another pack replacing the transformer
call (forward_timestep_embed_patch), and object patches re-applied on partial loads (DynamicVRAM)."""
from __future__ import annotations

import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import CPU, BlockProbe, build_unet, random_conditioning, sample

import comfy.model_management
from comfy.ldm.modules.attention import SpatialTransformer

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402

LATENT = torch.zeros(1, 4, 64, 64)
BLOCK = "input_blocks.8.1"
KEY = f"diffusion_model.{BLOCK}.forward"


def make_sae() -> SparseAutoencoder:
    return comfy_harness.tiny_sae(hookpoint="unet.down_blocks.2.attentions.1", mean=2.0)


def steer(model, strength: float):
    return SAEFeatureSteer.execute(model, make_sae(), "5, 9", "add", strength).result[0]


def test_the_patched_forward_passes_every_argument_through():
    """Positional, keyword and unknown extra arguments all reach the block; transformer_options is read
    wherever it comes."""
    model = build_unet("sdxl")
    seen = []
    base = model.clone()

    def recording_forward(x, *args, **kwargs):
        seen.append((len(args), sorted(kwargs)))
        return x * 2.0

    base.add_object_patch(KEY, recording_forward)
    patched = SAEFeatureSteer.execute(base, make_sae(), "5", "add", 3.0, passes="both").result[0]
    forward = patched.get_model_object(KEY)
    x = torch.randn(2, 128, 4, 4)
    options = {"cond_or_uncond": [1, 0]}
    as_keywords = forward(x, context=None, transformer_options=options, new_core_argument=7)
    as_positional = forward(x, None, options)
    assert seen == [(0, ["context", "new_core_argument", "transformer_options"]), (2, [])]
    assert torch.equal(as_keywords, as_positional) and not torch.equal(as_keywords, x * 2.0)


def test_another_packs_transformer_call_replacement_keeps_our_patch_working():
    """0.33's forward_timestep_embed_patch lets a pack replace the SpatialTransformer call; when it still
    calls the layer (here with keywords), our edit applies and an idle edit stays bit-identical."""
    model = build_unet("sdxl")
    pos, neg = random_conditioning()
    handled = []

    def handler(layer, x, emb, context, transformer_options, *rest):
        handled.append(type(layer).__name__)
        return layer(x, context=context, transformer_options=transformer_options)

    other_pack = model.clone()
    other_pack.set_model_forward_timestep_embed_patch((SpatialTransformer, handler))
    plain = sample(model, pos, neg, LATENT)
    through_handler = sample(other_pack, pos, neg, LATENT)
    assert bool(handled) == comfy_harness.TRANSFORMER_CALL_REPLACEABLE
    assert torch.equal(through_handler, plain)
    assert torch.equal(sample(steer(other_pack, 0.0), pos, neg, LATENT), plain)
    edited_there = sample(steer(other_pack, 8.0), pos, neg, LATENT)
    assert torch.equal(edited_there, sample(steer(model, 8.0), pos, neg, LATENT))
    assert not torch.equal(edited_there, plain)


def test_partial_unload_and_reload_reapplies_the_patch_and_leaves_the_base_model_exact():
    """DynamicVRAM (0.33's default patcher on GPUs) re-applies object patches on every partial load; on the CPU
    the same unpatch/patch cycle and ModelPatcher's partial unload/load run here."""
    model = build_unet("sdxl")
    pos, neg = random_conditioning()
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    plain = sample(model, pos, neg, LATENT)
    patched = steer(model, 8.0)
    edited = sample(patched, pos, neg, LATENT)
    assert not torch.equal(edited, plain)

    comfy.model_management.load_models_gpu([patched])
    size = patched.model_size()
    patched.partially_unload(CPU, memory_to_free=size // 2)
    patched.partially_load(CPU, extra_memory=size // 4)
    patched.unpatch_model(CPU, unpatch_weights=False)  # what ModelPatcherDynamic.partially_load does
    patched.patch_model(load_weights=False)
    probe = BlockProbe(patched, BLOCK)
    assert torch.equal(sample(probe.model, pos, neg, LATENT), edited)
    assert len(probe.calls) == 2  # two steps, each through the patch
    patched.unpatch_model(CPU)
    comfy.model_management.unload_all_models()

    assert torch.equal(sample(model, pos, neg, LATENT), plain)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert model.model.diffusion_model.input_blocks[8][1].forward.__func__ is SpatialTransformer.forward


def test_every_patch_is_prepared_once_per_model_call_on_the_object_its_block_runs_even_after_clones():
    """``ModelPatcher.clone`` deep-copies model_options on some versions: the patches the model-call wrapper prepares
    must still be the ones the blocks call (not copies, which would also copy their SAE's weights), and the call's
    facts are computed once per model call for every patched block of it."""
    from sae_lab_pack.nodes.patching import CALL_KEY, PATCHES_KEY

    model = steer(steer(build_unet("sdxl"), 2.0), 1.0).clone().clone()
    patches = model.model_options["transformer_options"][PATCHES_KEY]
    assert len(patches) == 2
    events, contexts = [], []
    for i, patch in enumerate(patches):
        cls = type(patch)

        class Watched(cls):
            def prepare(self, ctx, device, i=i):
                events.append(("prepare", i))
                contexts.append(ctx)
                return super().prepare(ctx, device)

            def __call__(self, view, ctx, i=i):
                events.append(("call", i))
                contexts.append(ctx)
                return super().__call__(view, ctx)

        patch.__class__ = Watched  # the object itself: a copy would not see this
    pos, neg = random_conditioning()
    sample(model, pos, neg, LATENT, steps=2, cfg=2.0)
    # per model call (cfg > 1 batches both passes: one call per step): both prepared, then both blocks run
    assert events == [("prepare", 0), ("prepare", 1), ("call", 0), ("call", 1)] * 2
    for first in (0, 4):
        assert all(ctx is contexts[first] for ctx in contexts[first:first + 4])  # one CallContext per model call
    assert contexts[0] is not contexts[4] and contexts[0].step == 0 and contexts[4].step == 1
    assert CALL_KEY not in model.model_options["transformer_options"]  # per call, not stored on the model
