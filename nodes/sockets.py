"""The socket types SAE Lab adds to ComfyUI, and the inputs several nodes share (one definition each)."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core.blocks.names import short_code
from ..sae_core.errors import SAEInputError

SAE = io.Custom("SAE")                       # a SparseAutoencoder
RECORDING = io.Custom("SAE_RECORDING")       # sparse codes of a sampling run (SAE Record Activations)
CONCEPT = io.Custom("SAE_CONCEPT")           # a concept profile (SAE Concept Profile / Load Concept)
CLASSIFIER = io.Custom("SAE_CLASSIFIER")     # an image classifier (SAE Classify (CLIP) / SAE Classifier Checkpoint)
SWEEP = io.Custom("SAE_SWEEP")               # the predictions of an unlearning sweep (SAE Unlearning Sweep)

# ---------------------------------------------------------------------- inputs several nodes share
BLOCK_HELP = ("Leave empty to use the block the SAE was trained on. Accepts diffusers names "
              "(down_blocks.2.attentions.1), the paper's codes (down.2.1, mid.0, up.0.0, up.0.1) or ComfyUI "
              "paths (input_blocks.8.1).")
EXTRA_CONCEPTS = ("concept_2", "concept_3", "concept_4")


def block_input(tooltip: str = BLOCK_HELP, *, optional: bool = False) -> io.String.Input:
    """The ``block`` a node works at, in any notation (resolved by nodes.patching.resolve_block or the dataset)."""
    return io.String.Input("block", default="", optional=optional, tooltip=tooltip)


def window_inputs() -> list[io.Float.Input]:
    """``start_percent`` / ``end_percent``: the part of the sampling schedule an edit acts in (see step_window)."""
    return [io.Float.Input(f"{end}_percent", default=default, min=0.0, max=1.0, step=0.001,
                           tooltip=f"{end.capitalize()} of the edit, as a fraction of the sampling schedule.")
            for end, default in (("start", 0.0), ("end", 1.0))]


def extra_concept_inputs(tooltip: str) -> list[io.Custom.Input]:
    """The optional concept_2..concept_4 beside a node's ``concept``."""
    return [CONCEPT.Input(name, optional=True, tooltip=tooltip) for name in EXTRA_CONCEPTS]


def given_concepts(sae, concepts: tuple, advice: str) -> list:
    """The connected concepts, each checked against ``sae``; all must be at one block (one patch edits one block,
    ``advice`` says what to do instead)."""
    given = [c for c in concepts if c is not None]
    if len({c.block for c in given}) > 1:
        listing = ", ".join(f"'{c.name}' at {short_code(c.block)}" for c in given)
        raise SAEInputError(f"the concepts were recorded at different blocks ({listing}); {advice}")
    for c in given:
        c.check_compatible(sae)
    return given
