"""The device the tests run the SAE and its patches on: ``SAE_LAB_DEVICE`` (``cpu`` by default; ``cuda`` on a GPU
machine, as ``bench/device_check.py`` runs them). The ComfyUI tests also start ComfyUI on it."""
from __future__ import annotations

import os

import torch

NAME = os.environ.get("SAE_LAB_DEVICE", "cpu").strip() or "cpu"
try:
    DEVICE = torch.device(NAME)
except RuntimeError as error:
    raise SystemExit(f"SAE_LAB_DEVICE={NAME!r} is not a torch device ({error}); use cpu or cuda") from None
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit(f"SAE_LAB_DEVICE={NAME!r} but torch sees no CUDA device; unset it to test on the CPU")
ON_CPU = DEVICE.type == "cpu"
