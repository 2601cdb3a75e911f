"""Counting the operations that read a tensor's values back to the host (a host sync on an accelerator)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default", "aten.is_nonzero.default",
         "aten.masked_select.default", "aten.equal.default", "aten.allclose.default"}


def _has_bool_index(args) -> bool:
    for arg in args:
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in items):
            return True
    return False


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` -> ``reads.ops``: every data-dependent read (or boolean-mask indexing,
    which reads the mask to size its result) that ran inside."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in READS or (name.startswith(("aten.index.", "aten.index_put")) and _has_bool_index(args[1:2])):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))
