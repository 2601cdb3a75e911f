"""SAE Lab: sparse autoencoders as ComfyUI nodes.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Outside ComfyUI (pytest,
the ``sae_core`` CLI) this file must import cleanly, so the nodes are only imported when ComfyUI's
API is importable.
"""
import importlib.util

WEB_DIRECTORY = "./web"

# __package__ is empty when a tool imports this file on its own (pytest's package setup in a checkout
# whose folder name is not an identifier, e.g. "sae-lab"): there is no package to import nodes from.
if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY"]
