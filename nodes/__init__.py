"""ComfyUI nodes of SAE Lab: thin adapters from sockets to sae_core, one module per capability family.

Registration is explicit and happens once, when ComfyUI loads the pack: the model folders, the atlas routes
on ComfyUI's server, then the node list below.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import (
    atlas,
    attack,
    collect,
    evaluate,
    find,
    folders,
    observe,
    routes,
    sae,
    steer,
    text,
    text_collect,
    train,
    unlearn,
)

NODE_MODULES = (sae, steer, observe, unlearn, evaluate, attack, find, atlas, collect, train, text, text_collect)


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for module in NODE_MODULES for node in module.NODES]


class SAELabExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> SAELabExtension:
    folders.register_folders()
    routes.register_routes()
    return SAELabExtension()
