"""The SAEs the field has published, written exactly as their authors' code saves them and as a hub download lands
them (``models/sae/<owner>__<name>/`` for Load SAE, the Hugging Face cache for ``hf://``): block, stream, kind and
family come out right without typing anything, encode/decode equal the authors' formulas (written again in
checkpoint_writers.py), edits change only decoded feature contributions, and bad checkpoints name file and problem."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_writers import (
    FLUX_UNBOX_EXCLUDE,
    FLUX_UNBOX_REPO,
    SAELensReference,
    fluxlens_reference,
    hub_folder,
    sparsify13_reference,
    unbox_reference,
    write_fluxlens,
    write_saelens6,
    write_sparsify13,
    write_unbox,
    write_unbox_flux,
)
from safetensors.torch import load_file

from sae_core import SAEFormatError, find_saes, load_sae, save_sae
from sae_core.atlas.feature_atlas import FeatureAtlas
from sae_core.atlas.previews import parse_source, source_for
from sae_core.atlas.service import AtlasService
from sae_core.blocks.context import CallContext
from sae_core.edits.steering import FeatureSteering
from sae_core.observe import analysis
from sae_core.observe.recording import Recording
from sae_core.sae import known
from sae_core.sae.feature_ids import FeatureEdit

REPO = Path(__file__).resolve().parents[1]
FLUX_18 = "transformer.transformer_blocks.18"


def _x(d: int, n: int = 64, seed: int = 3, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def _edit_delta(sae, feature: int, mode: str, strength: float, u: torch.Tensor) -> torch.Tensor:
    steering = FeatureSteering(sae, [FeatureEdit(feature, strength)], mode)
    with torch.no_grad():
        return steering.delta(u[None, None], torch.ones(1, 1, u.shape[0]))[0, 0]


# ---------------------------------------------------------------- the sdxl-unbox authors' Flux SAE
@pytest.fixture(scope="module")
def models_sae(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models") / "sae"


@pytest.fixture(scope="module")
def flux_unbox(models_sae) -> Path:
    return write_unbox_flux(hub_folder(models_sae, FLUX_UNBOX_REPO))


def test_flux_unbox_at_the_repo_root_gets_block_family_kind_and_exclude_list(flux_unbox, models_sae):
    sae = load_sae(flux_unbox)
    assert (sae.d_in, sae.n_latents, sae.k, sae.source_format) == (3072, 12288, 20, "sdxl-unbox")
    assert (sae.hookpoint, sae.model_family, sae.input_kind, sae.stream) == (FLUX_18, "flux", "diff", "image")
    assert sae.excluded == tuple(sorted(FLUX_UNBOX_EXCLUDE))
    assert torch.equal(sae.feature_mean, torch.load(flux_unbox / "mean.pt"))
    assert [(f.format, f.hookpoint) for f in find_saes(models_sae)] == [("sdxl-unbox", FLUX_18)]
    # a native copy keeps everything, the exclude list included
    copy = load_sae(save_sae(sae, flux_unbox.parent / "flux18.safetensors"))
    assert (copy.hookpoint, copy.model_family, copy.stream, copy.excluded) == (FLUX_18, "flux", "image", sae.excluded)


def test_flux_unbox_encode_decode_and_the_demo_add_equal_the_authors_code(flux_unbox):
    sae = load_sae(flux_unbox)
    sd = torch.load(flux_unbox / "state_dict.pth")["state_dict"]
    x = _x(3072, n=32, scale=0.5)
    latents, recon = unbox_reference(sd, 20, x)
    assert _close(sae.encode(x), latents) and _close(sae.reconstruct(x), recon)
    # utils/hooks.add_feature_on_area_flux: output + (mask * mean[f] * strength at f) @ decoder.weight.T
    mean = torch.load(flux_unbox / "mean.pt")
    f, strength = 5000, 7.0
    want = mean[f] * strength * sd["decoder.weight"][:, f]
    assert _close(_edit_delta(sae, f, "add", strength, x), want.expand_as(x))


def _hub_cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in a Hugging Face cache laid out by hand (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    return entry / "snapshots" / commit


def _inspect_offline(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "sae_core", "inspect", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_inspect_of_a_hub_repo_reads_the_table(tmp_path):
    cache = tmp_path / "hf"
    write_fluxlens(_hub_cache_snapshot(cache, "RE-N-Y/cc3m-single_transformer_blocks.9"), d=32, pages=128, k=4)
    result = _inspect_offline(cache, "hf://RE-N-Y/cc3m-single_transformer_blocks.9", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["format"], info["hookpoint"], info["stream"], info["model_family"], info["published_as"]) == (
        "fluxlens", "transformer.single_transformer_blocks.9", "text+image", "flux",
        "RE-N-Y/cc3m-single_transformer_blocks.9")


def test_flux_unbox_from_the_hub_cache_and_the_cli(tmp_path, monkeypatch):
    """``hf://antoniomari/SAE_flux_18`` (what ``python -m sae_core inspect`` takes) reads the table too; at a small
    size, the table's published shape is checked: another SAE in that repo's folder is refused, naming the file."""
    cache = tmp_path / "hf"
    write_unbox_flux(_hub_cache_snapshot(cache, FLUX_UNBOX_REPO), d=48, n=96, k=4)
    result = _inspect_offline(cache, "hf://antoniomari/SAE_flux_18")
    assert result.returncode == 2 and "models--antoniomari--SAE_flux_18" in result.stderr
    assert "is not the SAE published there" in result.stderr and "48->96" in result.stderr and "12288" in result.stderr
    wrong = write_unbox_flux(tmp_path / "sae" / "antoniomari__SAE_flux_18", d=32, n=64, k=4)
    with pytest.raises(SAEFormatError, match="not the SAE published there") as info:
        load_sae(wrong)
    assert str(wrong) in str(info.value)
    # an SAE in a subfolder of that download is not the published one: it loads as what it says it is
    other = write_unbox(wrong, hook="unet.mid_block.attentions.0", d=32, n=64, k=4)
    assert load_sae(other).hookpoint == "unet.mid_block.attentions.0"


def test_flux_previews_split_into_parts_as_the_demo_reads_them():
    meta = {"hookpoint": FLUX_18, "n_latents": 12288}
    source = source_for(meta, "antoniomari__SAE_flux_18.atlas")
    assert (source.repo, source.repo_type) == ("antoniomari/flux_sae_images", "dataset")
    # app.py: part = 1 if brush_index <= 7000 else 2; url .../flux_18/part{part}/{brush_index}.jpg
    assert [source.path_for(f, "") for f in (0, 7000, 7001, 12287)] == [
        "flux_18/part1/0.jpg", "flux_18/part1/7000.jpg", "flux_18/part2/7001.jpg", "flux_18/part2/12287.jpg"]
    assert parse_source(source.spec).path_for(7001, "") == "flux_18/part2/7001.jpg"  # the spec reads back
    assert source_for({**meta, "n_latents": 5120}, "antoniomari__SAE_flux_18.atlas") is None
    with pytest.raises(ValueError, match="must contain"):
        parse_source("dataset:me/pics/part{part}/{feature}.jpg")  # {part} only where the table knows the split


def test_excluded_features_are_never_top_and_hidden_in_the_atlas(flux_unbox, tmp_path):
    sae = load_sae(flux_unbox)
    always_on = FLUX_UNBOX_EXCLUDE[0]
    rec = Recording(sae, "double.18")
    rec.begin_run(1)
    values = torch.tensor([[[[9.0, 2.0, 1.0]]]])  # the always-on feature is by far the strongest
    indices = torch.tensor([[[[always_on, 40, 41]]]])
    rec.add(CallContext((0,), 1.0, (1.0, 0.0)), values, indices)
    rec.end_run()
    top = analysis.rank_features(analysis.select(rec), 2)
    assert top.ids() == [40, 41]
    # the atlas of that SAE (beside it in models/sae) lists every previewed feature but the excluded ones
    root = tmp_path / "sae"
    FeatureAtlas(12288, top_n=1, meta={"hookpoint": FLUX_18, "n_latents": 12288}).save(
        root / "antoniomari__SAE_flux_18.atlas")
    service = AtlasService(lambda: [str(root)])
    shown = service.features({"atlas": "antoniomari__SAE_flux_18.atlas", "sort": "id", "limit": "500"})
    assert shown["total"] == 12288 - 20 and shown["excluded"] == sorted(FLUX_UNBOX_EXCLUDE)
    ids = [row["id"] for row in shown["features"]]
    assert always_on not in ids and 325 not in ids and 324 in ids and 326 in ids
    everything = service.features({"atlas": "antoniomari__SAE_flux_18.atlas", "show_excluded": "1"})
    assert everything["total"] == 12288


# ---------------------------------------------------------------- fluxlens
@pytest.mark.parametrize("repo, hookpoint, stream", [
    ("RE-N-Y/cc3m-transformer_blocks.18-1", FLUX_18, "image"),
    ("RE-N-Y/cc3m-transformer_blocks.0-0", "transformer.transformer_blocks.0", "text"),
    ("RE-N-Y/cc3m-single_transformer_blocks.9", "transformer.single_transformer_blocks.9", "text+image"),
])
def test_fluxlens_names_give_block_and_stream(tmp_path, repo, hookpoint, stream):
    folder = write_fluxlens(hub_folder(tmp_path / "sae", repo), pages=3072 * 4 if stream == "image" else 512)
    sae = load_sae(folder)
    assert (sae.source_format, sae.hookpoint, sae.stream, sae.input_kind, sae.model_family) == (
        "fluxlens", hookpoint, stream, "output", "flux")
    sd = load_file(str(folder / "model.safetensors"))
    x = _x(3072, n=16, scale=0.3)
    latents, recon = fluxlens_reference(sd, 16, x)
    assert _close(sae.encode(x), latents) and _close(sae.reconstruct(x), recon)
    assert known.lookup(folder).stream == stream  # the table and the name agree


def test_fluxlens_standard_sae_and_bf16_weights(tmp_path):
    folder = write_fluxlens(tmp_path / "cc3m-transformer_blocks.18-1", d=32, pages=128, k=None, dtype=torch.bfloat16)
    sae = load_sae(folder)
    assert sae.activation == "relu" and sae.hookpoint == FLUX_18
    latents, recon = fluxlens_reference(load_file(str(folder / "model.safetensors")), None, _x(32))
    assert _close(sae.encode(_x(32)), latents) and _close(sae.reconstruct(_x(32)), recon)


def test_fluxlens_double_block_without_stream_suffix_has_no_block(tmp_path):
    assert load_sae(write_fluxlens(tmp_path / "transformer_blocks.4", d=16, pages=64, k=4)).hookpoint is None


# ---------------------------------------------------------------- SAELens 6
SAELENS_CASES = [
    ("standard", "none", True, False),
    ("topk", "none", True, False),
    ("topk", "none", False, True),  # apply_b_dec_to_input false, rescale_acts_by_decoder_norm
    ("jumprelu", "none", True, False),
    ("gated", "none", True, False),
    ("gated", "layer_norm", False, False),
    ("topk", "expected_average_only_in", True, False),
    ("jumprelu", "constant_norm_rescale", True, False),
    ("standard", "layer_norm", True, False),
]


@pytest.mark.parametrize("architecture, normalize, apply_b_dec, rescale", SAELENS_CASES)
def test_saelens6_matches_its_code_and_edits_stay_exact(tmp_path, architecture, normalize, apply_b_dec, rescale):
    c = 0.37 if normalize == "expected_average_only_in" else None
    folder = write_saelens6(tmp_path / "sae", architecture, normalize=normalize, scaling_factor=c,
                            apply_b_dec_to_input=apply_b_dec, rescale_acts_by_decoder_norm=rescale)
    sae = load_sae(folder)
    assert sae.hookpoint == "transformer.transformer_blocks.3"  # from metadata.hook_name
    cfg = json.loads((folder / "cfg.json").read_text())
    ref = SAELensReference(cfg, load_file(str(folder / "sae_weights.safetensors")), c)
    x = _x(64, scale=3.0) + 1.5
    z = ref.encode(x)
    assert (z > 0).sum() > 0
    assert _close(sae.encode(x), z) and _close(sae.reconstruct(x), ref.decode(z))
    # an edit is the change of SAELens's own decode when only that feature changes (the SAE error is kept)
    f = int(z.sum(0).argmax())
    for mode, strength, new_f in (("ablate", 0.0, torch.zeros(())), ("add", 2.5, z[:, f] + 2.5)):
        z_edit = z.clone()
        z_edit[:, f] = new_f
        want = ref.decode(z_edit) - ref.decode(z) if normalize not in ("constant_norm_rescale", "layer_norm") \
            else _decode_same_input(ref, x, z_edit) - _decode_same_input(ref, x, z)
        assert _close(_edit_delta(sae, f, mode, strength, x), want, 2e-4), (mode, architecture, normalize)


def _decode_same_input(ref: SAELensReference, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    ref.encode(x)  # the per-vector normalisation of x, as SAELens keeps it between its encode and decode
    return ref.decode(z)


def test_saelens_legacy_hook_point_and_bf16(tmp_path):
    folder = write_saelens6(tmp_path / "old", "standard", dtype=torch.bfloat16,
                            extra_cfg={"metadata": {}, "hook_point": "unet.up_blocks.0.attentions.1"})
    sae = load_sae(folder)
    assert sae.hookpoint == "unet.up_blocks.0.attentions.1"
    ref = SAELensReference(json.loads((folder / "cfg.json").read_text()),
                           load_file(str(folder / "sae_weights.safetensors")))
    z = ref.encode(_x(64))
    assert _close(sae.encode(_x(64)), z)


@pytest.mark.parametrize("cfg, problem", [
    ({"architecture": "transcoder", "d_out": 64}, "is a transcoder"),
    ({"architecture": "skip_transcoder"}, "is a transcoder"),
    ({"metadata": {"hook_name": "x", "hook_name_out": "y"}}, "is a transcoder"),
    ({"reshape_activations": "hook_z"}, "attention-head activations"),
    ({"architecture": "matching_pursuit"}, "unsupported SAELens architecture"),
    ({"normalize_activations": "expected_average_only_in"}, "scaling factor is not there"),
    ({"normalize_activations": "whiten"}, "unknown normalize_activations"),
])
def test_saelens_refusals_name_the_file_and_the_reason(tmp_path, cfg, problem):
    folder = write_saelens6(tmp_path / "sae", "standard", extra_cfg=cfg)
    with pytest.raises(SAEFormatError, match=problem) as info:
        load_sae(folder)
    assert "cfg.json" in str(info.value)


def test_saelens_gated_missing_tensor_and_bad_scaler(tmp_path):
    folder = write_saelens6(tmp_path / "g", "gated")
    from safetensors.torch import save_file
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    del tensors["r_mag"]
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError, match="'r_mag' is missing"):
        load_sae(folder)
    scaled = write_saelens6(tmp_path / "s", "topk", normalize="expected_average_only_in", scaling_factor=-2.0)
    with pytest.raises(SAEFormatError, match="activation_scaler.json.*scaling_factor is invalid"):
        load_sae(scaled)


# ---------------------------------------------------------------- sparsify 1.3
@pytest.mark.parametrize("activation, multi_topk, skip", [
    ("topk", False, False), ("groupmax", False, False), ("topk", True, False), ("groupmax", False, True),
    ("topk", False, True)])
def test_sparsify13_matches_its_code(tmp_path, activation, multi_topk, skip):
    folder = write_sparsify13(tmp_path / "transformer.transformer_blocks.5", activation=activation,
                              multi_topk=multi_topk, skip_connection=skip)
    sae = load_sae(folder)
    assert (sae.activation, sae.k, sae.W_skip is not None) == (activation, 8, skip)
    cfg = json.loads((folder / "cfg.json").read_text())
    x = _x(64)
    z, recon, decoded = sparsify13_reference(cfg, load_file(str(folder / "sae.safetensors")), x)
    assert _close(sae.encode(x), z) and _close(sae.reconstruct(x), recon)
    code = sae.encode_topk(x)
    assert code.indices.shape == (64, 8) and _close(sae.decode_sparse(code), decoded)
    # ablating a feature changes exactly its decoded contribution; the skip term depends on x alone
    f = int(z.sum(0).argmax())
    z_edit = z.clone()
    z_edit[:, f] = 0
    sd = load_file(str(folder / "sae.safetensors"))
    edited = z_edit @ sd["W_dec"] + sd["b_dec"] + (x @ sd["W_skip"].t() if skip else 0)  # SparseCoder.forward
    want = edited - recon
    assert _close(_edit_delta(sae, f, "ablate", 0.0, x), want)
    # native round trip keeps groupmax and W_skip
    copy = load_sae(save_sae(sae, tmp_path / "copy.safetensors"))
    assert torch.equal(copy.reconstruct(x), sae.reconstruct(x))


@pytest.mark.parametrize("kwargs, problem, file", [
    ({"transcode": True}, "is a transcoder", "cfg.json"),
    ({"decoder": False}, "saved without its decoder", "sae.safetensors"),
    ({"activation": "groupmax", "num_latents": 500}, "k equal groups", "cfg.json"),
    ({"activation": "batchtopk"}, "unsupported sparsify activation", "cfg.json"),
])
def test_sparsify13_refusals(tmp_path, kwargs, problem, file):
    folder = write_sparsify13(tmp_path / "sae", **kwargs)
    with pytest.raises(SAEFormatError, match=problem) as info:
        load_sae(folder)
    assert file in str(info.value)


def test_sparsify_skip_connection_without_w_skip(tmp_path):
    folder = write_sparsify13(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "skip_connection": True}))
    with pytest.raises(SAEFormatError, match="'W_skip' is missing"):
        load_sae(folder)


# ---------------------------------------------------------------- the table itself
def test_known_table_is_data_and_unsupported_repos_say_why(tmp_path):
    entries = known.known_checkpoints()
    assert {"antoniomari/SAE_flux_18", "surokpro2/sdxl-saes", "RE-N-Y/cc3m-transformer_blocks.18-1"} <= {
        e.repo for e in entries}
    for entry in entries:
        assert entry.unsupported or entry.format in ("sdxl-unbox", "sparsify", "saelens", "fluxlens")
    nev = hub_folder(tmp_path / "sae", "nev/flux1-saes") / "sae_double_l18_img" / "30000" / "default"
    nev.mkdir(parents=True)
    (nev / "_METADATA").write_text("{}")
    with pytest.raises(SAEFormatError, match="cannot load.*orbax") as info:
        load_sae(nev)
    assert "nev/flux1-saes" in str(info.value)


def test_saelens_layer_norm_undoes_with_std_not_std_plus_eps(tmp_path):
    """SAELens's layer_norm divides by ``std + eps`` but multiplies back by ``std``: visible where std is small."""
    folder = write_saelens6(tmp_path / "ln", "standard", normalize="layer_norm")
    sae = load_sae(folder)
    ref = SAELensReference(json.loads((folder / "cfg.json").read_text()),
                           load_file(str(folder / "sae_weights.safetensors")), dtype=torch.float64)
    x = _x(64, scale=2e-5).double() + 0.3  # std ~2e-5, comparable to eps = 1e-5
    z = ref.encode(x)
    f = int(z.sum(0).argmax())
    z_edit = z.clone()
    z_edit[:, f] = 0
    want = (ref.decode(z_edit) - ref.decode(z)).float()  # in float64: the difference of two outputs near 0.3
    got = _edit_delta(sae, f, "ablate", 0.0, x.float())
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3
