"""Patches that change what a block computes: feature steering (Unpacking SDXL Turbo) and concept unlearning
(SAeUron)."""
