"""The base of every SAE Lab node: whatever goes wrong reaches the user as ``<Node name>: what was wrong``.

One wrapper around each node's ``execute`` replaces a try/except in every node. The node's name comes from its
schema (``display_name``), the one place it is written. Cancel (ComfyUI's interrupt) and out-of-memory errors pass
through untouched, so ComfyUI handles them as its own.
"""
from __future__ import annotations

import functools
import sys

import comfy.model_management
import numpy as np
import torch
from comfy_api.latest import io
from comfy_execution.utils import get_executing_context

from ..sae_core.errors import SAEError
from . import folders

PASS_THROUGH = (comfy.model_management.InterruptProcessingException, torch.cuda.OutOfMemoryError,
                getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def node_error(node: str, exc: BaseException) -> ValueError:
    """The error ComfyUI shows: the node's name first, then what was wrong and what would be valid. Server paths
    in it become the folder names users know (models/sae/x, not /srv/ComfyUI/models/sae/x)."""
    text = str(exc) if isinstance(exc, SAEError) else f"{type(exc).__name__}: {exc}"
    return ValueError(f"{node}: {folders.scrub_paths(text)}")


def _named_errors(execute: classmethod, node_class) -> classmethod:
    """``execute`` with every failure named by the node's display name (read from its schema the first time an
    error needs it; ComfyUI runs a locked copy of the class, so the name is cached here, not on the class)."""
    function = execute.__func__
    name: list[str] = []

    def display_name() -> str:
        if not name:
            name.append(node_class.node_name())
        return name[0]

    @functools.wraps(function)
    def run(cls, *args, **kwargs):
        try:
            return function(cls, *args, **kwargs)
        except PASS_THROUGH:
            raise
        except SAEError as exc:
            raise node_error(display_name(), exc) from None
        except Exception as exc:
            if str(exc).startswith(f"{display_name()}: "):  # already named (e.g. by a patch during sampling)
                raise
            raise node_error(display_name(), exc) from exc

    run.names_errors = True
    return classmethod(run)


class SAENode(io.ComfyNode):
    """Subclasses define ``define_schema`` and ``execute`` as any V3 node; ``execute`` gets the error wrapper."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        # ComfyUI executes a locked copy of each node class: its execute is wrapped already
        if isinstance(execute, classmethod) and not getattr(execute.__func__, "names_errors", False):
            cls.execute = _named_errors(execute, cls)

    @classmethod
    def node_name(cls) -> str:
        """The name users see (the schema's display_name, written once): errors and patch labels use it."""
        return cls.define_schema().display_name or cls.__name__


def show_progress_text(text: str) -> None:
    """``text`` on the running node, as ComfyUI's progress text (nothing outside a running server)."""
    server = sys.modules.get("server")  # ComfyUI's own server module, imported only where a server runs
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    context = get_executing_context()
    if instance is not None and context is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(text, context.node_id)


def image_tensor(*pictures) -> torch.Tensor:
    """PIL images of one size as ComfyUI's IMAGE: (B, H, W, 3) floats in [0, 1]."""
    arrays = [np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pictures]
    return torch.from_numpy(np.stack(arrays))
