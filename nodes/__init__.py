"""ComfyUI nodes of SAE Lab: thin adapters from sockets to sae_core (one module per capability)."""
from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .comfy_glue import SAE_FOLDER, register_model_folder
from . import loader, steer

register_model_folder(SAE_FOLDER, {".safetensors"})


class SAELabExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*loader.NODES, *steer.NODES]


async def comfy_entrypoint() -> SAELabExtension:
    return SAELabExtension()
