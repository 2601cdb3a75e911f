"""Import ComfyUI as a library and this repository as ComfyUI imports a custom node pack (one package, so the
nodes' relative imports resolve). The tests' harness and the benches use these functions too."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "sae_lab_pack"


def is_comfyui_checkout(path: str | Path) -> bool:
    return (Path(path) / "comfy" / "model_patcher.py").is_file()


def comfyui_root(path: str | None = None) -> Path:
    """``path``, else ``COMFYUI_PATH``, else the current directory when it is a ComfyUI checkout."""
    chosen = path or os.environ.get("COMFYUI_PATH") or (os.getcwd() if is_comfyui_checkout(os.getcwd()) else "")
    if not chosen:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout (or run from inside one)")
    if not is_comfyui_checkout(chosen):
        raise SystemExit(f"COMFYUI_PATH={chosen} does not look like a ComfyUI checkout (no comfy/model_patcher.py)")
    return Path(chosen).resolve()


def import_comfyui(root: str | Path, cpu: bool) -> None:
    """Put ComfyUI on sys.path and choose its device: ComfyUI picks device and attention when
    comfy.model_management is first imported, so ``cpu`` is set before anything imports it."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu


def load_pack():
    """This repository imported as ComfyUI imports a custom node folder (once)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def load_node_pack(folder: str | Path) -> dict:
    """Another custom node pack's NODE_CLASS_MAPPINGS (e.g. a loader a workflow uses), imported from its folder."""
    folder = Path(folder).resolve()
    if not (folder / "__init__.py").is_file():
        raise SystemExit(f"--custom-node {folder}: not a custom node folder (no __init__.py)")
    name = f"headless_custom_{folder.name.replace('-', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return dict(getattr(module, "NODE_CLASS_MAPPINGS", {}))
