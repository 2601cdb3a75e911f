"""Fixtures shared by the ComfyUI integration tests. ComfyUI is imported inside them, not here, so that
collecting this folder without COMFYUI_PATH still skips each module with its reason (see comfy_harness)."""
from __future__ import annotations

import pytest


@pytest.fixture
def sae_models_dir(tmp_path, monkeypatch):
    """An empty models/sae for this test, registered with ComfyUI's folder_paths."""
    import folder_paths

    root = tmp_path / "sae"
    root.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(root)], {".safetensors"}))
    return root
