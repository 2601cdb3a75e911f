"""Gradients through code written for inference (a model call of ComfyUI's), without touching its weights.

Two things stop autograd there: weights created under ``torch.inference_mode`` (how ComfyUI loads models) cannot
be saved for the backward pass, and in-place updates (``x += f(x)``) overwrite values the backward pass needs.
Inside :func:`differentiable`:

- a torch-function mode hands each operation that *reads* an inference tensor a private copy of it (what an
  operation writes stays the caller's tensor); the shared weight is never written nor made to require a gradient;
- every tensor autograd saves for the backward pass is saved as a copy (``torch.autograd.graph.saved_tensors_hooks``),
  so a later in-place update of an activation no longer reaches the saved value (the private weight copies above
  are saved as they are).

The forward pass runs exactly the operations of a plain call, so its values are the same, bit for bit (tests compare
them); the cost is the copies: about what ordinary autograd keeps, plus the weights each call reads.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map


class _Differentiable(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.private: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()

    def readable(self, value):
        if isinstance(value, torch.Tensor) and value.is_inference():
            copy = value.clone()
            self.private[id(copy)] = copy
            return copy
        return value

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.private.get(id(tensor)) is tensor:
            return tensor  # a private copy: nothing else can write it
        with torch.inference_mode(False):
            return tensor.detach().clone() if tensor.is_inference() else tensor.clone()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if args and (name.endswith("_") or name.startswith("__i") or name in ("__setitem__", "__set__")):
            return func(args[0], *tree_map(self.readable, args[1:]), **tree_map(self.readable, kwargs))
        return func(*tree_map(self.readable, args), **tree_map(self.readable, kwargs))


@contextlib.contextmanager
def differentiable() -> Iterator[None]:
    """Autograd on (outside inference mode) through inference-written code; see the module's docstring."""
    mode = _Differentiable()
    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(mode.pack, lambda t: t), mode:
        yield
