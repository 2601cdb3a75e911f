"""Text-encoder layers as a block kind: names, checkpoints in every format, the concept direction and the patch
contract on plain tensors (ComfyUI's CLIP objects are tested in tests/comfyui/test_text_nodes.py)."""
from __future__ import annotations

import pytest
import torch
from checkpoint_writers import random_unbox_weights, unbox_reference, write_saelens, write_sparsify, write_text_unbox
from torch import nn

from sae_core import SAEInputError, SparseAutoencoder, find_saes, load_sae, save_sae
from sae_core.blocks.context import ALWAYS, CallContext
from sae_core.blocks.families import infer_model_family, text_encoder_of, text_encoders
from sae_core.blocks.families.text import CLIP_L, T5
from sae_core.blocks.names import diffusers_name, hookpoint_of, short_code
from sae_core.blocks.text_encoder import TEXT_LAYER, patched_layer_output, resolve_text_layer, text_layout
from sae_core.edits.steering import FeatureSteering, SteerPatch
from sae_core.edits.text_steering import ConceptSteerPatch, OnSelectedTokens, TokenSelection, concept_direction
from sae_core.sae.feature_ids import FeatureEdit

STEERERS_RUN = "text_encoder.text_model.encoder.layers.9_k32_hidden3072_auxk32_bs4096_lr0.0004_2025-01-09T21:29:10"
ITD_RUN = "text_model.encoder.layers.8_k64_hidden4096_auxk256_bs50_lr0.0001_datasetcelebrity_style_coco"


@pytest.mark.parametrize("name, canonical, short", [
    ("text_encoder.text_model.encoder.layers.9", "text_encoder.text_model.encoder.layers.9", "clip_l.9"),
    ("clip_l.9", "text_encoder.text_model.encoder.layers.9", "clip_l.9"),
    ("text_model.encoder.layers.8", "text_encoder.text_model.encoder.layers.8", "clip_l.8"),  # ItD
    ("clip_l.transformer.text_model.encoder.layers.3", "text_encoder.text_model.encoder.layers.3", "clip_l.3"),
    ("text_encoder_2.text_model.encoder.layers.30", "text_encoder_2.text_model.encoder.layers.30", "clip_g.30"),
    ("clip_g.31", "text_encoder_2.text_model.encoder.layers.31", "clip_g.31"),
    ("text_encoder_2.encoder.block.22", "text_encoder_2.encoder.block.22", "t5.22"),  # Flux
    ("text_encoder_3.encoder.block.22", "text_encoder_2.encoder.block.22", "t5.22"),  # SD3
    ("t5.4", "text_encoder_2.encoder.block.4", "t5.4"),
    ("t5xxl.transformer.encoder.block.4", "text_encoder_2.encoder.block.4", "t5.4"),
])
def test_text_layer_names_in_every_notation(name, canonical, short):
    assert diffusers_name(name) == canonical
    assert short_code(name) == short
    assert hookpoint_of(name) == canonical  # checkpoints name text layers by their full diffusers name


def test_image_block_names_are_unchanged_and_not_text():
    assert diffusers_name("down.2.1") == "down_blocks.2.attentions.1"
    assert diffusers_name("block.3") == "transformer_blocks.3"
    assert text_encoder_of("unet.down_blocks.2.attentions.1") is None
    assert text_encoder_of("clip_l.2") is CLIP_L and text_encoder_of("t5.1") is T5
    assert infer_model_family("text_encoder_2.encoder.block.22", 4096) == "t5"
    assert diffusers_name("clip_l.x") is None and diffusers_name("t5") is None


# ---------------------------------------------------------------- checkpoints
def test_concept_steerers_checkpoint_with_auxk_coef(tmp_path):
    folder = write_text_unbox(tmp_path, STEERERS_RUN, d=32, n=128, k=8, extra_cfg={"auxk_coef": 1 / 32})
    sae = load_sae(folder)
    assert sae.hookpoint == "text_encoder.text_model.encoder.layers.9"
    assert (sae.model_family, sae.input_kind, sae.k, sae.d_in) == ("clip_l", "output", 8, 32)
    weights = random_unbox_weights(32, 128)
    x = torch.randn(5, 32)
    assert torch.allclose(sae.reconstruct(x), unbox_reference(weights, 8, x)[1], atol=1e-5)
    assert [f.hookpoint for f in find_saes(tmp_path)] == ["text_encoder.text_model.encoder.layers.9"]


def test_interpret_then_deactivate_checkpoint(tmp_path):
    folder = write_text_unbox(tmp_path, ITD_RUN, d=32, n=4096, k=64)
    sae = load_sae(folder)
    assert sae.hookpoint == "text_encoder.text_model.encoder.layers.8"  # ItD's bare module name, made canonical
    assert (sae.model_family, sae.input_kind, sae.n_latents, sae.k) == ("clip_l", "output", 4096, 64)


def test_sparsify_saelens_and_native_text_saes(tmp_path):
    sparsify = load_sae(write_sparsify(tmp_path / "a", hook="text_encoder.text_model.encoder.layers.9", d=32,
                                       expansion=4, k=8))
    assert (sparsify.hookpoint, sparsify.model_family) == ("text_encoder.text_model.encoder.layers.9", "clip_l")
    saelens = load_sae(write_saelens(tmp_path / "b", name="text_encoder_2.encoder.block.22", d=48, n=96, k=8))
    assert (saelens.hookpoint, saelens.model_family, saelens.d_in) == ("text_encoder_2.encoder.block.22", "t5", 48)
    path = tmp_path / "native.safetensors"
    save_sae(saelens, path)
    native = load_sae(path)
    assert (native.hookpoint, native.model_family) == (saelens.hookpoint, "t5")
    assert torch.equal(native.W_dec, saelens.W_dec)


# ---------------------------------------------------------------- the concept direction (Concept Steerers)
def _sae(d: int = 16, n: int = 64, k: int = 4, seed: int = 0, **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, n, k, hookpoint="clip_l.2", input_kind="output", **kw)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def test_concept_direction_is_the_code_without_topk_decoded_without_bias():
    sae = _sae()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16))
        sae.b_enc.copy_(torch.randn(64) * 0.1)
    x = torch.randn(7, 16)
    z = torch.relu((x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc)  # every latent, not only the top 4
    assert int((z > 0).sum(dim=-1).min()) > sae.k
    expected = (z * -1.5) @ sae.W_dec
    got = concept_direction(sae, x, -1.5)
    assert got.shape == (7, 16) and torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(concept_direction(sae, x, 0.0), torch.zeros(7, 16))


def test_concept_patch_adds_at_matching_positions_and_pads_with_the_last():
    direction = torch.randn(4, 16)
    patch = ConceptSteerPatch(direction, idle=False)
    x = torch.randn(2, 6, 16)
    y = patched_layer_output(patch, x, CallContext(), returns_tuple=False)
    assert torch.equal(y[:, :4], x[:, :4] + direction)
    assert torch.equal(y[:, 4:], x[:, 4:] + direction[-1])  # past the concept's end: its last position
    short = patched_layer_output(patch, x[:, :3], CallContext(), returns_tuple=False)
    assert torch.equal(short, x[:, :3] + direction[:3])


def test_idle_patches_return_the_layer_output_itself():
    x = torch.randn(2, 5, 16)
    bias = torch.randn(1, 2, 5, 5)
    idle = ConceptSteerPatch(torch.randn(5, 16), idle=True)
    assert patched_layer_output(idle, x, CallContext(), returns_tuple=False) is x
    output = (x, bias)
    assert patched_layer_output(idle, output, CallContext(), returns_tuple=True) is output
    zero = SteerPatch(FeatureSteering(_sae(), [FeatureEdit(3, 0.0)], "add"), ALWAYS, "positive", None)
    assert patched_layer_output(zero, x, CallContext(), returns_tuple=False) is x


def test_feature_edits_on_a_t5_style_tuple_keep_the_rest_of_the_output():
    sae = _sae()
    x = torch.randn(2, 5, 16)
    bias = torch.randn(1, 2, 5, 5)
    patch = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 2.0)], "add"), ALWAYS, "positive", None)
    y, kept = patched_layer_output(patch, (x, bias), CallContext(), returns_tuple=True)
    assert kept is bias
    assert not sae.has_stats  # raw units: the direction itself, times the strength
    assert torch.allclose(y, x + 2.0 * sae.W_dec[3], atol=1e-6)
    ablate = SteerPatch(FeatureSteering(sae, [FeatureEdit(3, 0.0)], "ablate"), ALWAYS, "positive", None)
    z3 = sae.encode(x)[..., 3]
    out = patched_layer_output(ablate, x, CallContext(), returns_tuple=False)
    assert torch.allclose(out, x - z3[..., None] * sae.W_dec[3], atol=1e-6)


# ---------------------------------------------------------------- layouts of a CLIP's cond_stage_model
class _Encoder(nn.Module):
    def __init__(self, width: int, n: int, path: str):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        holder = self
        *parents, last = path.split(".")
        for part in parents:
            child = nn.Module()
            holder.add_module(part, child)
            holder = child
        holder.add_module(last, nn.ModuleList(nn.Identity() for _ in range(n)))

    def get_input_embeddings(self):
        return self.embed


def _flux_like(clip_width: int = 32, t5_width: int = 48) -> nn.Module:
    model = nn.Module()
    for attribute, width, n, path in (("clip_l", clip_width, 4, "text_model.encoder.layers"),
                                      ("t5xxl", t5_width, 24, "encoder.block")):
        holder = nn.Module()
        holder.transformer = _Encoder(width, n, path)
        model.add_module(attribute, holder)
    return model


def test_layout_lists_the_layers_of_the_encoders_present():
    layout = text_layout(_flux_like(), text_encoders(), "FluxClipModel")
    assert len(layout) == 4 + 24
    block = layout.resolve("t5.22")
    assert (block.comfy, block.channels, block.kind, block.index) == ("t5xxl.transformer.encoder.block.22", 48,
                                                                      TEXT_LAYER, 22)
    assert layout.resolve("clip_l.transformer.text_model.encoder.layers.1").short == "clip_l.1"
    with pytest.raises(SAEInputError, match="clip_g.1.*does not exist.*valid blocks"):
        layout.resolve("clip_g.1")


def test_concept_steerers_flux_run_name_means_the_t5_block():
    layout = text_layout(_flux_like(), text_encoders(), "FluxClipModel")
    block = resolve_text_layer(layout, "text_encoder.text_model.encoder.layers.22", 48, text_encoders())
    assert block.short == "t5.22"
    assert resolve_text_layer(layout, "clip_l.2", 32, text_encoders()).short == "clip_l.2"


def test_an_sae_of_another_encoders_width_is_refused_with_the_widths():
    layout = text_layout(_flux_like(), text_encoders(), "FluxClipModel")
    with pytest.raises(SAEInputError, match=r"width 32 but layer t5\.3.*width 48.*clip_l\.0 \.\. clip_l\.3"):
        resolve_text_layer(layout, "t5.3", 32, text_encoders())
    with pytest.raises(SAEInputError, match=r"width 768.*no encoder.*CLIP-L 32.*T5-XXL 48"):
        resolve_text_layer(layout, "clip_l.2", 768, text_encoders())
    with pytest.raises(SAEInputError, match="does not exist"):
        resolve_text_layer(layout, "t5.99", 48, text_encoders())


def test_selected_tokens_keep_the_edit_only_at_the_words_tokens():
    direction = torch.randn(6, 16)
    selection = TokenSelection({42, 7})
    patch = OnSelectedTokens(ConceptSteerPatch(direction, idle=False), selection)
    x = torch.randn(3, 6, 16)  # the third row: a chunk the encoder added (no token ids seen for it)
    selection.see([[1, 42, 5, 7, 2, 2], [1, 5, 5, 5, 42, 2]])
    y = patched_layer_output(patch, x, CallContext(), returns_tuple=False)
    chosen = torch.zeros(3, 6, dtype=torch.bool)
    chosen[0, 1] = chosen[0, 3] = chosen[1, 4] = True
    assert torch.equal(y[chosen], (x + direction)[chosen])
    assert torch.equal(y[~chosen], x[~chosen])
    selection.see([[1, 5, 5, 5, 5, 2]] * 3)
    assert patched_layer_output(patch, x, CallContext(), returns_tuple=False) is x  # no word here: untouched
    with pytest.raises(SAEInputError, match="no tokens"):
        TokenSelection(set())


def test_token_features_rank_the_words_features_by_peak_activation():
    from sae_core.observe.text_features import token_features

    sae = _sae(d=16, n=64, k=2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 0.01)
        sae.W_enc[:16] += torch.eye(16) * 5  # latent i reads input i
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    acts = torch.zeros(5, 16)
    acts[0, 0] = 9.0  # the start token: strongest, but not a word of the prompt
    acts[1, 3], acts[1, 4] = 1.0, 0.5
    acts[2, 5] = 2.0
    acts[3, 3] = 3.0
    found = token_features(sae, acts, ["<s>", "a", "red", "cat", "</s>"], [False, True, True, True, False], top_k=2)
    assert found.features[1].tolist() == [3, 4] and found.features[3, 0] == 3
    assert [f for f, _ in found.top] == [3, 5]  # 3 peaks at 15 (token "cat"), 5 at 10; 0 is the start token's
    assert found.ids() == "3, 5"
    lines = found.table().splitlines()
    assert lines[0].split()[:2] == ["#", "token"] and lines[3].split()[:2] == ["2", "red"]
    assert lines[3].split()[2].startswith("5:")
    assert found.chart("clip_l.2").size[0] > 0


def test_itd_selection_and_threshold():
    from sae_core.edits.text_erase import Deactivation, ErasePatch, concept_features, erase_threshold

    d = 8
    sae = SparseAutoencoder(d, 2 * d, 2 * d, hookpoint="clip_l.8", input_kind="output")
    with torch.no_grad():  # exact reconstruction: latent i = relu(x_i), latent d + i = relu(-x_i)
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    start = torch.full((1, d), 50.0)  # the start token fires everything, and is never counted
    target = torch.cat([start, torch.tensor([[0, 0, 0, 0, 0, 0, 5.0, 0], [1.0, 0, 0, 0, 0, 0, 4, 0]])])
    remain = torch.cat([start, torch.tensor([[2.0, 0, 0, 0, 0, 0, 0.5, 0], [0.0] * d])])
    assert concept_features(sae, [target], [remain], top_n=1) == [6]  # 0 fires on the remaining prompt's top too
    deactivation = Deactivation(sae, [6], 0.0)
    threshold = erase_threshold(deactivation, [target])
    assert threshold == pytest.approx(0.99 * (25 + 16) / (3 * d))
    patch = ErasePatch(deactivation, threshold)
    x = torch.stack([target, remain])
    y = patched_layer_output(patch, x, CallContext(), returns_tuple=False)
    assert torch.allclose(y[0, :, 6], torch.tensor([50.0, 0, 0])) and torch.equal(y[1], remain)  # kept: exact
    with pytest.raises(SAEInputError, match="also fires"):
        concept_features(sae, [remain], [remain], top_n=1)
