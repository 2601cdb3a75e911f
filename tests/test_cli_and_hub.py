"""The CLI (inspect, convert), hub downloads from an offline cache, and importing the pack without ComfyUI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from checkpoint_writers import write_sparsify, write_unbox

from sae_core import SAEHubError, download_sae, load_sae, load_sae_from_hub

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sae_core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_inspect_json(tmp_path):
    folder = write_unbox(tmp_path, d=32, n=128, k=4)
    result = _cli("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {k: info[k] for k in ("format", "d_in", "n_latents", "k", "hookpoint", "input_kind", "has_stats")} == {
        "format": "sdxl-unbox", "d_in": 32, "n_latents": 128, "k": 4,
        "hookpoint": "unet.down_blocks.2.attentions.1", "input_kind": "diff", "has_stats": True}


def test_inspect_human_readable(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    result = _cli("inspect", str(folder))
    assert result.returncode == 0, result.stderr
    assert "sparsify SAE 32->64 (k=4) at unet.up_blocks.1.attentions.1 on the block output" in result.stdout


def test_convert_round_trip(tmp_path):
    folder = write_sparsify(tmp_path, d=32, expansion=2, k=4)
    out = tmp_path / "out" / "converted.safetensors"
    result = _cli("convert", str(folder), str(out), "--set-model-family", "sd15")
    assert result.returncode == 0, result.stderr
    converted, original = load_sae(out), load_sae(folder)
    assert converted.model_family == "sd15" and converted.source_format == "sparsify"
    x = torch.randn(9, 32)
    assert torch.equal(converted.reconstruct(x), original.reconstruct(x))


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"abc")
    result = _cli("inspect", str(tmp_path / "junk.bin"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "junk.bin" in result.stderr


# ---------------------------------------------------------------- hub, from a cache the test fills
def _fill_cache(cache: Path, repo_id: str, build) -> Path:
    """Lay out a Hugging Face cache entry by hand: refs/main -> snapshots/<commit>/..."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    build(snapshot)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_subfolder_from_offline_cache(offline_cache):
    def build(snapshot):
        for i, hook in enumerate(["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]):
            write_sparsify(snapshot, hook=hook, d=32, expansion=2, k=4, seed=i)

    snapshot = _fill_cache(offline_cache, "bcywinski/SAeUron", build)
    folder = download_sae("bcywinski/SAeUron", "unet.up_blocks.1.attentions.2")
    assert folder == snapshot / "unet.up_blocks.1.attentions.2"
    sae = load_sae_from_hub("bcywinski/SAeUron", "unet.up_blocks.1.attentions.2")
    assert sae.hookpoint == "unet.up_blocks.1.attentions.2"
    # whole repo + hookpoint, and the hf:// form of load_sae
    assert load_sae_from_hub("bcywinski/SAeUron", hookpoint="up.1.1").hookpoint == "unet.up_blocks.1.attentions.1"
    assert load_sae("hf://bcywinski/SAeUron/unet.up_blocks.1.attentions.1").k == 4


def test_hub_offline_and_not_cached_is_a_clear_error(offline_cache):
    with pytest.raises(SAEHubError) as info:
        download_sae("surokpro2/sdxl-saes", "unet.mid_block.attentions.0_k10_hidden5120_auxk256_bs4096_lr0.0001")
    message = str(info.value)
    assert "surokpro2/sdxl-saes/unet.mid_block" in message
    assert "not in the Hugging Face cache" in message and "models/sae" in message


def test_hub_local_dir_reused_offline(tmp_path, monkeypatch):
    """Downloads into models/sae are found again without network."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local = tmp_path / "models" / "sae" / "surokpro2__sdxl-saes"
    write_unbox(local, hook="unet.up_blocks.0.attentions.1", d=32, n=64, k=4)
    sae = load_sae_from_hub("surokpro2/sdxl-saes", local_dir=local, hookpoint="up.0.1")
    assert sae.hookpoint == "unet.up_blocks.0.attentions.1"


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "../x", ""])
def test_hub_rejects_bad_repo_ids(repo_id):
    with pytest.raises(ValueError, match="owner/name"):
        download_sae(repo_id)


# ---------------------------------------------------------------- the pack without ComfyUI
def test_pack_imports_without_comfyui():
    """ComfyUI imports the repo root as a package; without ComfyUI that import must still succeed."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sae_pack', {str(REPO / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['sae_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert 'comfy' not in sys.modules and 'comfy_api' not in sys.modules\n"
        "print(mod.WEB_DIRECTORY, hasattr(mod, 'comfy_entrypoint'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["./web", "False"]
