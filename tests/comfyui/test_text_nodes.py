"""SAE Text Steer on ComfyUI's own CLIP objects: tiny SD1.5-style (CLIP-L) and Flux-style (CLIP-L + T5) text
encoders with the tokenizers of the ComfyUI tree, encoded by CLIP Text Encode and CLIP Set Last Layer, and
cross-checked against transformers' CLIPTextModel / T5EncoderModel with a hand-written hook of the paper's edit."""
from __future__ import annotations

import math

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from checkpoint_writers import write_saelens, write_sparsify, write_text_unbox
from tiny_text import CLIP_LAYERS, CLIP_WIDTH, T5_WIDTH, build_flux_clip, build_sd1_clip, transformers_clip, \
    transformers_t5

import nodes as comfy_nodes

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402  (the pack's own copy)
from sae_lab_pack.nodes.sae import SAELoader  # noqa: E402
from sae_lab_pack.nodes.text import SAETextSteer  # noqa: E402

PROMPT = "a photo of a cat sitting on a red sofa"
CONCEPT = "snowy winter landscape"
# Concept Steerers' run names end with a time (..._2025-01-09T21:29:10.453881): Load SAE's names refuse ":"
STEERERS_RUN = "text_encoder.text_model.encoder.layers.{}_k8_hidden128_auxk32_bs4096_lr0.0004_2025-01-09"


@pytest.fixture(scope="module")
def sd1():
    return build_sd1_clip()


@pytest.fixture(scope="module")
def flux():
    return build_flux_clip()


def make_sae(d_in: int, hookpoint: str, n_latents: int = 128, k: int = 8, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(d_in, n_latents, k, hookpoint=hookpoint, input_kind="output", name="tiny")
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.add_(0.05)  # most latents fire on a prompt without top-k: a direction with many features
    return sae


def encode(clip, text: str = PROMPT):
    """CLIP Text Encode's conditioning: (cond (1, T, C), pooled)."""
    out = comfy_nodes.CLIPTextEncode().encode(clip, text)
    conditioning = out.result[0] if hasattr(out, "result") else out[0]
    cond, extra = conditioning[0]
    return cond, extra["pooled_output"]


def steer(clip, sae, **kw):
    return SAETextSteer.execute(clip, sae, **{"mode": "concept", "concept": CONCEPT, **kw}).result[0]


def last_layer(clip, index: int):
    out = comfy_nodes.CLIPSetLastLayer().set_last_layer(clip, index)
    return out.result[0] if hasattr(out, "result") else out[0]


def weights_of(clip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("kw", [{"strength": 0.0}, {"mode": "add", "features": "3, 7", "strength": 0.0},
                                {"mode": "scale", "features": "3", "strength": 0.0}])
def test_idle_edit_is_bit_identical(sd1, kw):
    base = encode(sd1)
    steered = encode(steer(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), **kw))
    assert torch.equal(steered[0], base[0]) and torch.equal(steered[1], base[1])


def test_steering_changes_the_clone_only_and_the_base_clip_stays_bit_identical(sd1):
    before_weights = weights_of(sd1)
    base = encode(sd1)
    steered_clip = steer(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), strength=2.0)
    steered = encode(steered_clip)
    assert (steered[0] - base[0]).abs().max() > 1e-2
    after = encode(sd1)
    assert torch.equal(after[0], base[0]) and torch.equal(after[1], base[1])
    assert all(torch.equal(v, before_weights[k]) for k, v in sd1.cond_stage_model.state_dict().items())
    assert torch.equal(encode(steered_clip)[0], steered[0])  # and the steered clone stays steered


def test_cfg_steered_positive_with_an_untouched_negative(sd1):
    negative_before = encode(sd1, "blurry, low quality")
    steered = steer(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), strength=-2.0)
    positive = encode(steered)
    negative = encode(sd1, "blurry, low quality")  # encoded with the input CLIP, as the node's help says
    assert torch.equal(negative[0], negative_before[0]) and torch.equal(negative[1], negative_before[1])
    assert not torch.equal(positive[0], encode(sd1)[0])


def test_chained_text_steers_add_up(sd1):
    sae = make_sae(CLIP_WIDTH, "clip_l.1")
    once = encode(steer(sd1, sae, mode="add", features="3:1.5, 7:-2"))[0]
    twice = encode(steer(steer(sd1, sae, mode="add", features="3:1.5"), sae, mode="add", features="7:-2"))[0]
    assert torch.allclose(once, twice, atol=1e-5) and not torch.equal(once, encode(sd1)[0])


# ---------------------------------------------------------------- clip skip
@pytest.mark.parametrize("skip_first", [True, False])
def test_clip_skip_before_the_steered_layer_leaves_the_tokens_unchanged(sd1, skip_first):
    sae = make_sae(CLIP_WIDTH, "clip_l.2")
    early, late = -CLIP_LAYERS, -1  # layer 0's output (before layer 2) and the last layer's
    for index, changed in ((early, False), (late, True)):
        base = encode(last_layer(sd1, index))
        clip = last_layer(steer(sd1, sae, strength=3.0), index) if not skip_first else \
            steer(last_layer(sd1, index), sae, strength=3.0)
        cond = encode(clip)[0]
        assert torch.equal(cond, base[0]) != changed, (index, skip_first)


def test_clip_skip_before_or_after_the_node_gives_the_same_conditioning(sd1):
    sae = make_sae(CLIP_WIDTH, "clip_l.1")
    a = encode(last_layer(steer(sd1, sae, strength=2.0), -2))
    b = encode(steer(last_layer(sd1, -2), sae, strength=2.0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- transformers cross-check (and batches of chunks)
def _ids(tokens) -> torch.Tensor:
    return torch.tensor([[t[0] for t in chunk] for chunk in tokens])


def _hooked(layer, delta: torch.Tensor):
    """The paper's hook: the layer's output plus the concept direction at every token position."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta
    return layer.register_forward_hook(hook)


def _captured(model, layer, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return seen[0][0]


def _reference_direction(sae: SparseAutoencoder, acts: torch.Tensor, strength: float) -> torch.Tensor:
    """Concept Steerers' direction written out again: relu(W_enc (x - b_dec) + b_enc) * strength @ W_dec."""
    z = torch.relu((acts - sae.b_dec) @ sae.W_enc.t() + sae.b_enc)
    return (z * strength) @ sae.W_dec


@pytest.mark.parametrize("prompt", [PROMPT, " ".join(["a cat on a sofa"] * 20)])  # one chunk, and a batch of 2
def test_clip_concept_steer_matches_transformers_with_the_papers_hook(sd1, prompt):
    pytest.importorskip("transformers")
    sae = make_sae(CLIP_WIDTH, "text_encoder.text_model.encoder.layers.1")
    hf = transformers_clip(sd1)
    layer = getattr(hf, "text_model", hf).encoder.layers[1]  # transformers 5 drops the text_model level
    ids = _ids(sd1.tokenize(prompt)["l"])
    concept = _captured(hf, layer, _ids(sd1.tokenize(CONCEPT)["l"]))
    delta = _reference_direction(sae, concept, 1.5).detach()
    handle = _hooked(layer, delta)
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
    handle.remove()
    cond, _ = encode(steer(sd1, sae, strength=1.5), prompt)
    assert cond.shape == (1, ids.shape[0] * ids.shape[1], CLIP_WIDTH)
    assert (cond.reshape(expected.shape) - expected).abs().max() <= 1e-5
    with torch.no_grad():
        plain = hf(input_ids=ids).last_hidden_state
    assert (plain - expected).abs().max() > 1e-2  # the check has teeth: the edit moved the output


def test_t5_concept_steer_matches_transformers_with_the_papers_hook(flux):
    pytest.importorskip("transformers")
    # Concept Steerers' Flux run names call T5 block i text_encoder.text_model.encoder.layers.i
    sae = make_sae(T5_WIDTH, "text_encoder.text_model.encoder.layers.1")
    hf = transformers_t5(flux)
    layer = hf.encoder.block[1]
    ids = _ids(flux.tokenize(PROMPT)["t5xxl"])
    concept = _captured(hf, layer, _ids(flux.tokenize(CONCEPT)["t5xxl"]))
    assert concept.shape[0] == ids.shape[1]  # both padded to T5's minimum length here
    delta = _reference_direction(sae, concept, -1.0).detach()
    handle = _hooked(layer, delta)
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
    handle.remove()
    base_l = encode(flux)[1]
    cond, pooled = encode(steer(flux, sae, strength=-1.0))
    assert (cond - expected).abs().max() <= 1e-5
    assert torch.equal(pooled, base_l)  # Flux's pooled vector comes from CLIP-L, which is not steered


def test_t5_feature_steer_changes_the_t5_tokens_only(flux):
    sae = make_sae(T5_WIDTH, "t5.2")
    base = encode(flux)
    cond, pooled = encode(steer(flux, sae, mode="add", features="5:4, 9", strength=2.0))
    assert (cond - base[0]).abs().max() > 1e-3 and torch.equal(pooled, base[1])
    assert torch.equal(encode(flux)[0], base[0])


# ---------------------------------------------------------------- checkpoints through Load SAE
@pytest.mark.parametrize("write", [
    lambda root: write_text_unbox(root, STEERERS_RUN.format(1), d=CLIP_WIDTH, n=128, k=8,
                                  extra_cfg={"auxk_coef": 1 / 32}),
    lambda root: write_text_unbox(root, "text_model.encoder.layers.1_k8_hidden128_auxk256_bs50_lr0.0001_datasetcoco",
                                  d=CLIP_WIDTH, n=128, k=8),
    lambda root: write_sparsify(root, hook="text_encoder.text_model.encoder.layers.1", d=CLIP_WIDTH, expansion=4, k=8),
    lambda root: write_saelens(root, name="clip_l.1", d=CLIP_WIDTH, n=128, k=8),
], ids=["concept-steerers", "itd", "sparsify", "saelens"])
def test_load_sae_reads_text_saes_and_steers_their_layer(sd1, sae_models_dir, write):
    folder = write(sae_models_dir)
    name = folder.relative_to(sae_models_dir).as_posix()
    if folder.name == "final":
        name = folder.parent.relative_to(sae_models_dir).as_posix() + "/final"
    sae = SAELoader.execute(name).result[0]
    assert sae.hookpoint == "text_encoder.text_model.encoder.layers.1" and sae.model_family == "clip_l"
    base = encode(sd1)[0]
    assert not torch.equal(encode(steer(sd1, sae, strength=1.0))[0], base)
    assert torch.equal(encode(sd1)[0], base)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kw, message", [
    ({"strength": math.nan}, "strength"),
    ({"strength": math.inf}, "strength"),
    ({"strength": 1e9}, "strength"),
    ({"mode": "erase"}, "mode"),
    ({"concept": "   "}, "concept prompt"),
    ({"concept": "a\x00b"}, "concept"),
    ({"layer": "clip_l.99"}, "does not exist"),
    ({"layer": "down.2.1"}, "does not exist"),
    ({"layer": "t5.1"}, "does not exist"),  # an SD1 CLIP has no T5
    ({"mode": "add", "features": "999999"}, "does not exist"),
    ({"mode": "add", "features": "3:nan"}, "3:nan"),
    ({"mode": "clamp", "features": ""}, "no features"),
])
def test_bad_inputs_name_the_node_and_the_value(sd1, kw, message):
    with pytest.raises(ValueError, match=r"^SAE Text Steer: ") as info:
        steer(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), **kw)
    assert message in str(info.value)


def test_an_sae_for_another_encoders_width_is_refused(flux):
    with pytest.raises(ValueError, match=r"^SAE Text Steer: the SAE has width 32 but layer t5\.1.*width 48"):
        steer(flux, make_sae(CLIP_WIDTH, "t5.1"))
    with pytest.raises(ValueError, match=r"^SAE Text Steer: .*width 64.*no encoder of this CLIP has width 64"):
        steer(flux, make_sae(64, "clip_l.1"))


def test_an_sae_without_a_layer_asks_for_one(sd1):
    with pytest.raises(ValueError, match=r"^SAE Text Steer: this SAE does not say.*clip_l\.0"):
        steer(sd1, make_sae(CLIP_WIDTH, None))


# ---------------------------------------------------------------- token selection
def test_words_limit_the_edit_to_their_tokens(sd1):
    sae = make_sae(CLIP_WIDTH, "clip_l.1")
    ids = _ids(sd1.tokenize(PROMPT)["l"])[0].tolist()
    cat = _ids(sd1.tokenize("cat")["l"])[0, 1].item()  # after the start token
    first = ids.index(cat)
    base = encode(sd1)[0]
    for kw in ({"strength": 2.0}, {"mode": "add", "features": "3:2, 7"}):
        cond = encode(steer(sd1, sae, words="cat", **kw))[0]
        # CLIP attends causally: the tokens before the word are exactly as before, the word's own token changes
        assert torch.equal(cond[0, :first], base[0, :first])
        assert (cond[0, first] - base[0, first]).abs().max() > 1e-3
        everywhere = encode(steer(sd1, sae, **kw))[0]
        assert not torch.equal(everywhere[0, :first], base[0, :first])
    absent = encode(steer(sd1, sae, strength=2.0, words="zebra"))[0]
    assert torch.equal(absent, base)  # a word the prompt does not hold: nothing to edit


def test_words_select_t5_tokens_too(flux):
    sae = make_sae(T5_WIDTH, "t5.1")
    base = encode(flux)[0]
    cond = encode(steer(flux, sae, words="sofa", mode="add", features="5:3"))[0]
    changed = (cond - base).abs().amax(dim=-1)[0] > 1e-4
    ids = _ids(flux.tokenize(PROMPT)["t5xxl"])[0]
    sofa = set(_ids(flux.tokenize("sofa")["t5xxl"])[0].tolist()) - {0, 1}
    at_sofa = torch.tensor([int(t) in sofa for t in ids])
    assert bool(changed[at_sofa].all())
    assert bool(changed.any()) and int(changed.sum()) >= int(at_sofa.sum())


# ---------------------------------------------------------------- SAE Text Features
def test_text_features_table_matches_the_sae_code_of_transformers_layer_output(sd1):
    pytest.importorskip("transformers")
    from sae_lab_pack.nodes.text import SAETextFeatures

    sae = make_sae(CLIP_WIDTH, "clip_l.2")
    out = SAETextFeatures.execute(sd1, sae, "a photo of a tabby cat", top_k=3)
    chart, table, ids = out.result
    hf = transformers_clip(sd1)
    tokens = _ids(sd1.tokenize("a photo of a tabby cat")["l"])
    acts = _captured(hf, getattr(hf, "text_model", hf).encoder.layers[2], tokens)
    code = sae.encode_topk(acts)
    lines = table.splitlines()[1:]
    end = tokens[0].tolist().index(49407)  # the end token closes the table
    assert len(lines) == end + 1 and "cat" in lines[end - 1] and "endoftext" in lines[end]
    for t, line in enumerate(lines):
        shown = [int(cell.split(":")[0]) for cell in line.split()[2:]]
        order = code.values[t].argsort(descending=True)[:3]
        assert shown == code.indices[t][order].tolist(), t
    # the prompt's own tokens (not start / end) rank the ids, by peak activation
    peaks = {}
    for t in range(1, end):
        for f, v in zip(code.indices[t].tolist(), code.values[t].tolist()):
            peaks[f] = max(peaks.get(f, 0.0), v)
    expected = sorted(peaks, key=lambda f: -peaks[f])[:3]
    assert ids == ", ".join(str(f) for f in expected)
    assert chart.shape[0] == 1 and chart.shape[-1] == 3
    steered = encode(steer(sd1, sae, mode="scale", features=ids, strength=-1.0))[0]  # ids go straight to the steer
    assert not torch.equal(steered, encode(sd1)[0])


@pytest.mark.parametrize("kw, message", [
    ({"prompt": "  "}, "prompt is empty"), ({"top_k": 0}, "top_k"), ({"top_k": math.nan}, "top_k"),
    ({"layer": "t5.0"}, "does not exist"), ({"prompt": "a\x00b"}, "prompt"),
])
def test_text_features_bad_inputs(sd1, kw, message):
    from sae_lab_pack.nodes.text import SAETextFeatures

    with pytest.raises(ValueError, match=r"^SAE Text Features: ") as info:
        SAETextFeatures.execute(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), **{"prompt": "a cat", **kw})
    assert message in str(info.value)


# ---------------------------------------------------------------- SAE Text Erase (Interpret-then-Deactivate)
TARGETS = ["a painting in the style of van gogh", "starry night by van gogh"]
REMAIN = ["a photo of a cat", "a red sofa in a living room", "a mountain lake at dawn"]


def _itd_reference(sae, hf, layer, ids_of, prompt: str, top_n: int, multiplier: float) -> torch.Tensor:
    """ItD's rule written out again on transformers' CLIP: features = union of target top-n (peak over tokens
    1:) minus the remaining prompts'; threshold = 0.99 min target MSE; a row is replaced by the reconstruction
    with those features (tokens 1:) scaled, when its MSE reaches the threshold."""
    def code(acts):
        pre = (acts - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
        vals, inds = pre.topk(sae.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, inds, vals.relu())

    def top(acts):
        return set(code(acts[1:]).max(0).values.topk(top_n).indices.tolist())

    kept = set().union(*(top(_captured(hf, layer, ids_of(p))) for p in REMAIN))
    features = sorted(set().union(*(top(_captured(hf, layer, ids_of(p))) for p in TARGETS)) - kept)

    def deactivated(acts):
        z = code(acts)
        z[1:, features] *= multiplier
        return z @ sae.W_dec + sae.b_dec

    def mse(acts):
        return float((deactivated(acts) - acts).pow(2).mean().detach())

    threshold = 0.99 * min(mse(_captured(hf, layer, ids_of(p))) for p in TARGETS)
    erased = []

    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        erased.extend(mse(r) >= threshold for r in x)
        y = torch.stack([deactivated(r) if mse(r) >= threshold else r for r in x])
        return (y, *output[1:]) if isinstance(output, tuple) else y

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        out = hf(input_ids=ids_of(prompt)).last_hidden_state
    handle.remove()
    return out, features, any(erased)


def exact_sae(d: int, hookpoint: str) -> SparseAutoencoder:
    """An SAE that reconstructs exactly (latents relu(x) and relu(-x), decoded as their difference), so that the
    change ItD measures is the deactivation's alone, as with a well-trained SAE."""
    sae = SparseAutoencoder(d, 2 * d, 2 * d, hookpoint=hookpoint, input_kind="output", name="exact")
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_text_erase_matches_itd_on_transformers_and_leaves_other_prompts_exact(sd1):
    pytest.importorskip("transformers")
    from sae_lab_pack.nodes.text import SAETextErase

    sae = exact_sae(CLIP_WIDTH, "text_model.encoder.layers.2")  # ItD's own name for the layer
    erased_clip, ids = SAETextErase.execute(sd1, sae, "\n".join(TARGETS), "\n".join(REMAIN), multiplier=-8.0,
                                            top_n=6).result
    hf = transformers_clip(sd1)
    layer = getattr(hf, "text_model", hf).encoder.layers[2]

    def ids_of(prompt):
        return _ids(sd1.tokenize(prompt)["l"])

    kept = 0
    for prompt in TARGETS + REMAIN:
        expected, features, erased = _itd_reference(sae, hf, layer, ids_of, prompt, 6, -8.0)
        assert ids == ", ".join(str(f) for f in features) and features
        cond = encode(erased_clip, prompt)[0]
        assert (cond - expected).abs().max() <= 1e-5
        if prompt in TARGETS:
            assert erased and (cond - encode(sd1, prompt)[0]).abs().max() > 1e-3  # every target prompt is erased
        elif not erased:
            assert torch.equal(cond, encode(sd1, prompt)[0])  # below the threshold: exactly as before
            kept += 1
    assert kept >= 1


@pytest.mark.parametrize("kw, message", [
    ({"target_prompts": " \n "}, "target prompts are empty"), ({"multiplier": math.nan}, "multiplier"),
    ({"top_n": 0}, "top_n"), ({"remain_prompts": "x\n" * 300}, "at most"),
    ({"remain_prompts": "a painting in the style of van gogh"}, "also fires on the remaining prompts"),
])
def test_text_erase_bad_inputs(sd1, kw, message):
    from sae_lab_pack.nodes.text import SAETextErase

    args = {"target_prompts": "a painting in the style of van gogh", "remain_prompts": "a cat", **kw}
    with pytest.raises(ValueError, match=r"^SAE Text Erase: ") as info:
        SAETextErase.execute(sd1, make_sae(CLIP_WIDTH, "clip_l.1"), **{"top_n": 4, **args})
    assert message in str(info.value)
