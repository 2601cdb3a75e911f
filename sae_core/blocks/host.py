"""Moving facts between the accelerator and the host without stalling it.

On an accelerator, reading a tensor's value on the host (``.item()``, ``bool(t)``, boolean-mask indexing, a blocking
``.cpu()``) waits for every kernel queued so far: a host sync, which empties the launch queue. Patches run in
every call of a patched block, so their steady state reads nothing back from the device; what must be known on
the host comes from the CallContext (read once per model call) or is decided when a cache is first filled. On the
CPU such reads cost nothing, and some patches use them there to skip work.
"""
from __future__ import annotations

import torch
from torch import Tensor


def host_reads_are_free(t: Tensor) -> bool:
    """Whether a patch may read ``t``'s values on the host (CPU tensors, outside torch.compile tracing)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


class HostCopies:
    """Copies of tensors to the host queued without blocking (pinned memory and non-blocking copies on CUDA), valid
    once :meth:`wait` returned: one synchronisation for all of them. CPU tensors are kept as they are."""

    def __init__(self):
        self._device: torch.device | None = None  # a device with copies still in flight

    def copy(self, t: Tensor) -> Tensor:
        if t.device.type == "cpu":
            return t
        self._device = t.device
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            return host
        return t.cpu()

    def wait(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self._device = None
