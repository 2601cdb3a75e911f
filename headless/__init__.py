"""SAE Lab's sampling jobs without a server: ComfyUI imported as a library, the pack's own node code doing the
work, one job split over the ranks of ``torchrun`` (or one process):
``python -m headless collect|profile|sweep --help``.

Outside ``sae_core`` on purpose: this package imports ComfyUI (from ``COMFYUI_PATH``, or the current directory
when it is a ComfyUI checkout) and the pack as ComfyUI imports it (:mod:`headless.comfy_import`).
"""
