"""ComfyUI nodes of SAE Lab: thin adapters from sockets to sae_core, one module per capability family.

Every module of this package that defines ``NODES`` contributes its node classes.
"""
from __future__ import annotations

import importlib
import pkgutil

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .comfy_glue import SAE_FOLDER, register_model_folder

register_model_folder(SAE_FOLDER, {".safetensors"})


def all_nodes() -> list[type[io.ComfyNode]]:
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "NODES", []))
    return found


class SAELabExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> SAELabExtension:
    return SAELabExtension()
