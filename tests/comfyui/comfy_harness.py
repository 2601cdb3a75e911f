"""Import ComfyUI from COMFYUI_PATH (or skip the importing test module, saying why) and load this pack
the way ComfyUI does: the repository root as a package, so the nodes' relative imports resolve."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")

if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH is not set: the ComfyUI integration tests need a ComfyUI checkout "
                "(COMFYUI_PATH=/path/to/ComfyUI python -m pytest)", allow_module_level=True)
if not (Path(COMFYUI_PATH) / "comfy" / "model_patcher.py").is_file():
    raise RuntimeError(f"COMFYUI_PATH={COMFYUI_PATH} does not look like a ComfyUI checkout (no comfy/model_patcher.py)")

if COMFYUI_PATH not in sys.path:
    sys.path.insert(0, COMFYUI_PATH)

import comfy.cli_args  # noqa: E402
from devices import ON_CPU  # noqa: E402  (SAE_LAB_DEVICE: cpu unless bench/device_check.py runs on a GPU)

comfy.cli_args.args.cpu = ON_CPU  # before anything imports comfy.model_management

import folder_paths  # noqa: E402
from headless.comfy_import import PACK_NAME, load_pack  # noqa: E402,F401  (the one way the pack is imported)

# ComfyUI's output, temp and input folders default to the checkout (read-only where CI runs): tests write elsewhere
SCRATCH = Path(tempfile.mkdtemp(prefix="sae_lab_comfyui_"))
folder_paths.set_output_directory(str(SCRATCH / "output"))
folder_paths.set_temp_directory(str(SCRATCH / "temp"))
folder_paths.set_input_directory(str(SCRATCH / "input"))

def _read_version(root: Path) -> tuple[int, ...]:
    """ComfyUI's own version (comfyui_version.py), e.g. (0, 33, 0); (0,) when the checkout has none."""
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (root / "comfyui_version.py").read_text()) \
        if (root / "comfyui_version.py").is_file() else None
    return tuple(int(p) for p in re.findall(r"\d+", match.group(1))[:3]) if match else (0,)


COMFYUI_VERSION = _read_version(Path(COMFYUI_PATH))
# Since ComfyUI 0.8, /prompt checks V3 Combo values itself (400 value_not_in_list before the node runs);
# older versions leave that to the node.
SERVER_VALIDATES_COMBOS = COMFYUI_VERSION >= (0, 8)
# 0.3.64 offers forward_timestep_embed_patch only to layers no other branch handles; by 0.33 it is checked first,
# so another pack can replace the SpatialTransformer call itself.
TRANSFORMER_CALL_REPLACEABLE = COMFYUI_VERSION >= (0, 33)


def cancel_after_each_shard(monkeypatch):
    """Cancel pressed as soon as a collection has written a shard (the shard is kept); the real ``write_shard``
    is returned, to put back."""
    import comfy.model_management

    writer = sys.modules[f"{PACK_NAME}.sae_core.train.dataset"].ActivationDatasetWriter
    real_write = writer.write_shard

    def write_then_cancel(self, plan, per_block):
        entry = real_write(self, plan, per_block)
        comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel
        return entry

    monkeypatch.setattr(writer, "write_shard", write_then_cancel)
    return real_write


def tiny_sae(d_in: int = 128, n_latents: int = 256, k: int | None = 8, **kwargs):
    """factories.tiny_sae, built as the pack's own SparseAutoencoder (the class its nodes check), at the tiny
    models' block width."""
    import factories

    load_pack()
    from sae_lab_pack.sae_core import SparseAutoencoder

    return factories.tiny_sae(d_in, n_latents, k, sae_class=SparseAutoencoder, **kwargs)
