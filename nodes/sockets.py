"""The socket types SAE Lab adds to ComfyUI (one definition each)."""
from __future__ import annotations

from comfy_api.latest import io

SAE = io.Custom("SAE")                       # a SparseAutoencoder
RECORDING = io.Custom("SAE_RECORDING")       # sparse codes of a sampling run (SAE Record Activations)
CONCEPT = io.Custom("SAE_CONCEPT")           # a concept profile (SAE Concept Profile / Load Concept)
CLASSIFIER = io.Custom("SAE_CLASSIFIER")     # an image classifier (SAE Classify (CLIP) / SAE Classifier Checkpoint)
SWEEP = io.Custom("SAE_SWEEP")               # the predictions of an unlearning sweep (SAE Unlearning Sweep)
