"""Loading every supported checkpoint format at the published shapes, checked against the papers' formulas."""
from __future__ import annotations

import json

import pytest
import torch
from checkpoint_writers import (
    random_unbox_weights,
    sparsify_reference,
    unbox_reference,
    write_saelens,
    write_sparsify,
    write_unbox,
)
from safetensors.torch import load_file, save_file

from sae_core import SAEFormatError, SAEInputError, find_saes, load_sae, save_sae


@pytest.fixture(scope="module")
def unbox_dir(tmp_path_factory):
    return write_unbox(tmp_path_factory.mktemp("unbox"))


@pytest.fixture(scope="module")
def sparsify_dir(tmp_path_factory):
    return write_sparsify(tmp_path_factory.mktemp("sparsify"))


def _tokens(d: int, n: int = 300, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2


# ---------------------------------------------------------------- sdxl-unbox
def test_unbox_loads_with_metadata_and_stats(unbox_dir):
    sae = load_sae(unbox_dir)
    assert (sae.d_in, sae.n_latents, sae.k) == (1280, 5120, 10)
    assert sae.hookpoint == "unet.down_blocks.2.attentions.1"
    assert sae.input_kind == "diff"
    assert sae.model_family == "sdxl"
    assert sae.source_format == "sdxl-unbox"
    assert sae.has_stats
    assert torch.equal(sae.feature_mean, torch.load(unbox_dir / "mean.pt"))
    assert torch.equal(sae.feature_std, torch.load(unbox_dir / "std.pt"))


def test_unbox_matches_reference_formula(unbox_dir):
    sae = load_sae(unbox_dir)
    sd = torch.load(unbox_dir / "state_dict.pth")["state_dict"]
    x = _tokens(1280)
    ref_latents, ref_recon = unbox_reference(sd, 10, x)
    assert (sae.encode(x) - ref_latents).abs().max() <= 1e-5
    assert (sae.reconstruct(x) - ref_recon).abs().max() <= 1e-5
    code = sae.encode_topk(x)
    assert code.values.shape == code.indices.shape == (300, 10)
    assert (sae.decode_sparse(code) - ref_recon).abs().max() <= 1e-5


def test_unbox_run_folder_and_root_folder_resolve(unbox_dir):
    run_folder = unbox_dir.parent
    assert load_sae(run_folder).hookpoint == "unet.down_blocks.2.attentions.1"
    # a checkpoints/ root with two SAEs needs a hookpoint, in any notation
    root = unbox_dir.parent.parent
    write_unbox(root, hook="unet.up_blocks.0.attentions.1", seed=3, stats=False)
    with pytest.raises(SAEInputError, match="holds 2 SAEs"):
        load_sae(root)
    assert load_sae(root, hookpoint="up.0.1").hookpoint == "unet.up_blocks.0.attentions.1"
    assert load_sae(root, hookpoint="unet.down_blocks.2.attentions.1").has_stats
    with pytest.raises(SAEInputError, match="available hookpoints"):
        load_sae(root, hookpoint="mid.0")


def test_unbox_stats_saved_on_gpu_load_on_cpu(tmp_path, monkeypatch):
    """The published mean.pt/std.pt were saved from cuda:0; they must load on a CPU-only machine."""
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    mean = torch.rand(64) + 1
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(mean, folder / "mean.pt")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(folder / "mean.pt", weights_only=True)  # proves the file really says cuda:0
    assert torch.equal(load_sae(folder).feature_mean, mean)


# ---------------------------------------------------------------- sparsify / SAeUron
def test_sparsify_loads_saeuron_layout(sparsify_dir):
    sae = load_sae(sparsify_dir)
    assert (sae.d_in, sae.n_latents, sae.k) == (1280, 20480, 32)
    assert sae.hookpoint == "unet.up_blocks.1.attentions.1"
    assert sae.input_kind == "output"
    assert sae.model_family == "sd15"
    assert not sae.has_stats


def test_sparsify_matches_reference_formula(sparsify_dir):
    sae = load_sae(sparsify_dir)
    sd = load_file(str(sparsify_dir / "sae.safetensors"))
    x = _tokens(1280, n=200)
    ref_latents, ref_recon = sparsify_reference(sd, 32, x)
    assert (sae.encode(x) - ref_latents).abs().max() <= 1e-5
    assert (sae.reconstruct(x) - ref_recon).abs().max() <= 1e-5


def test_sparsify_input_unit_norm_and_unknown_fields(tmp_path):
    folder = write_sparsify(tmp_path, d=64, expansion=4, k=8, input_unit_norm=True,
                            extra_cfg={"activation": "topk", "skip_connection": False, "transcode": False,
                                       "a_future_field": [1, 2]})
    sae = load_sae(folder)
    assert sae.input_norm
    sd = load_file(str(folder / "sae.safetensors"))
    x = _tokens(64, n=50) * 3 + 1
    ref_latents, ref_recon = sparsify_reference(sd, 8, x, input_unit_norm=True)
    assert (sae.encode(x) - ref_latents).abs().max() <= 1e-5
    assert (sae.reconstruct(x) - ref_recon).abs().max() <= 1e-5


def test_sparsify_explicit_num_latents(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4, extra_cfg={"num_latents": 64, "expansion_factor": 99})
    assert load_sae(folder).n_latents == 64


def test_multi_hookpoint_repo_layout(tmp_path):
    for i, hook in enumerate(["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]):
        write_sparsify(tmp_path, hook=hook, d=32, expansion=2, k=4, seed=i)
    assert [f.hookpoint for f in find_saes(tmp_path)] == ["unet.up_blocks.1.attentions.1",
                                                            "unet.up_blocks.1.attentions.2"]
    assert load_sae(tmp_path, hookpoint="up.1.2").hookpoint == "unet.up_blocks.1.attentions.2"
    # a weights file inside a format folder loads its folder
    assert load_sae(tmp_path / "unet.up_blocks.1.attentions.1" / "sae.safetensors").k == 4


# ---------------------------------------------------------------- SAELens
@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens(tmp_path, architecture, apply_b_dec):
    folder = write_saelens(tmp_path, d=64, n=256, architecture=architecture, k=8, apply_b_dec_to_input=apply_b_dec)
    sae = load_sae(folder)
    sd = load_file(str(folder / "sae_weights.safetensors"))
    x = _tokens(64, n=40)
    sae_in = x - sd["b_dec"] if apply_b_dec else x
    pre = sae_in @ sd["W_enc"] + sd["b_enc"]
    if architecture == "topk":
        vals, inds = pre.topk(8, dim=-1)
        ref = torch.zeros_like(pre).scatter(-1, inds, vals.relu())
    elif architecture == "standard":
        ref = pre.relu()
    else:
        ref = pre * (pre > sd["threshold"])
    assert sae.hookpoint == "unet.mid_block.attentions.0"
    assert (sae.encode(x) - ref).abs().max() <= 1e-5
    assert (sae.reconstruct(x) - (ref @ sd["W_dec"] + sd["b_dec"])).abs().max() <= 1e-5


# ---------------------------------------------------------------- native round trips
def test_native_round_trip_preserves_outputs_exactly(unbox_dir, sparsify_dir, tmp_path):
    x = _tokens(1280, n=64)
    for source in (unbox_dir, sparsify_dir):
        original = load_sae(source)
        out = tmp_path / f"{original.source_format}.safetensors"
        save_sae(original, out)
        again = load_sae(out)
        assert again.info() == original.info()
        assert torch.equal(again.encode(x), original.encode(x))
        assert torch.equal(again.reconstruct(x), original.reconstruct(x))
        for name in ("feature_mean", "feature_std"):
            a, b = getattr(original, name), getattr(again, name)
            assert (a is None and b is None) or torch.equal(a, b)


def test_native_round_trip_relu_and_jumprelu(tmp_path):
    for arch in ("standard", "jumprelu"):
        sae = load_sae(write_saelens(tmp_path / arch, d=32, n=64, architecture=arch))
        save_sae(sae, tmp_path / f"{arch}.safetensors")
        again = load_sae(tmp_path / f"{arch}.safetensors")
        x = _tokens(32, n=20)
        assert again.activation == sae.activation and again.k is None
        assert torch.equal(again.encode(x), sae.encode(x))


def test_native_file_found_next_to_other_files(tmp_path):
    sae = load_sae(write_sparsify(tmp_path / "src", d=32, expansion=2, k=4))
    save_sae(sae, tmp_path / "lib" / "mine.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "lib" / "not_an_sae.safetensors"))
    found = find_saes(tmp_path / "lib")
    assert [(f.format, f.path.name, f.hookpoint) for f in found] == [
        ("native", "mine.safetensors", "unet.up_blocks.1.attentions.1")]


# ---------------------------------------------------------------- bad input
def _expect_format_error(path, *fragments):
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_path(tmp_path):
    _expect_format_error(tmp_path / "nope", "does not exist", "expected")


def test_unknown_format(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_format_error(tmp_path / "empty", "contains no SAE")
    (tmp_path / "notes.txt").write_text("hello")
    _expect_format_error(tmp_path / "notes.txt", "not an SAE checkpoint")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    _expect_format_error(tmp_path / "plain.safetensors", "without SAE metadata")


def test_truncated_safetensors(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    weights = folder / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _expect_format_error(folder, "sae.safetensors", "truncated or corrupt")


def test_truncated_native_file(tmp_path):
    sae = load_sae(write_sparsify(tmp_path / "src", d=32, expansion=2, k=4))
    out = save_sae(sae, tmp_path / "x.safetensors")
    out.write_bytes(out.read_bytes()[:50])
    _expect_format_error(out, "x.safetensors", "truncated or corrupt")


def test_corrupt_json(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    (folder / "cfg.json").write_text("{not json")
    _expect_format_error(folder, "cfg.json", "not valid JSON")


def test_corrupt_pickle(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    (folder / "state_dict.pth").write_bytes(b"\x00garbage" * 10)
    _expect_format_error(folder, "state_dict.pth", "cannot be read as a torch file")


def test_missing_weights_file(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    (folder / "state_dict.pth").unlink()
    _expect_format_error(folder, "state_dict.pth", "file is missing")


def test_config_and_weights_disagree(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = 48
    (folder / "cfg.json").write_text(json.dumps(cfg))
    _expect_format_error(folder, "encoder.weight", "wrong shape", "(64, 32)", "(96, 48)")


def test_missing_tensor(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    sd = load_file(str(folder / "sae.safetensors"))
    del sd["b_dec"]
    save_file(sd, str(folder / "sae.safetensors"))
    _expect_format_error(folder, "'b_dec' is missing")


def test_nan_weights(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    sd = random_unbox_weights(16, 64)
    sd["decoder.weight"][3, 5] = float("nan")
    torch.save({"state_dict": sd}, folder / "state_dict.pth")
    _expect_format_error(folder, "NaN or Inf", "W_dec")


def test_k_larger_than_latents(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["k"] = 65
    (folder / "config.json").write_text(json.dumps(cfg))
    _expect_format_error(folder, "k is out of range", "k=65", "n_latents=64")


def test_missing_config_field(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["k"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    _expect_format_error(folder, "'k' is missing")


def test_stats_with_wrong_shape(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    torch.save(torch.ones(63), folder / "mean.pt")
    _expect_format_error(folder, "mean.pt", "(63,)", "(64,)")


class _Payload:
    """Unpickling this runs ``_touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def _touch(path: str) -> None:
    open(path, "w").close()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    folder = write_unbox(tmp_path, d=16, n=64, k=4, stats=False)
    marker = tmp_path / "payload_ran"
    sd = random_unbox_weights(16, 64)
    torch.save({"state_dict": sd, "extra": _Payload(marker)}, folder / "state_dict.pth")
    _expect_format_error(folder, "refused", "not executed", "state_dict.pth")
    assert not marker.exists()
    # control: the payload is real, an unrestricted load would have run it
    torch.load(folder / "state_dict.pth", weights_only=False)
    assert marker.exists()
