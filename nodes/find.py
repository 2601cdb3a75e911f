"""SAE Find Features: the features that tell target prompts from contrast prompts, ready to steer with."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core.atlas.feature_atlas import atlas_name_for
from ..sae_core.blocks.names import short_code
from ..sae_core.errors import SAEInputError
from ..sae_core.observe.contrast import DIRECTIONS, contrast_chart, contrast_features, contrast_table, ids_text
from ..sae_core.validate import check_choice, check_number
from . import folders
from .base import SAENode, image_tensor
from .sockets import CONCEPT, SAE


class SAEFindFeatures(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFindFeatures",
            display_name="SAE Find Features",
            category="SAE Lab/explore",
            description=(
                "Ranks the SAE features that fire more for a concept's target prompts than for its contrast "
                "prompts (from SAE Concept Profile or SAE Load Concept), by the mean difference in activation. "
                "Connect feature_ids to an SAE Feature Steer (mode add) and its strength becomes a concept slider "
                "driven by words."),
            is_output_node=True,
            inputs=[
                CONCEPT.Input("concept", tooltip="A concept profile: target prompts vs other prompts at one block."),
                SAE.Input("sae", tooltip="The SAE the profile was recorded with (checked)."),
                io.Int.Input("top_n", default=5, min=1, max=100, tooltip="How many features to return."),
                io.Combo.Input("direction", options=list(DIRECTIONS), default="target",
                               tooltip="target: features of the target prompts (add them to push towards the "
                                       "concept); other: features of the contrast prompts."),
            ],
            outputs=[
                io.String.Output(display_name="feature_ids",
                                 tooltip="Comma-separated ids, best first: connect to SAE Feature Steer's features."),
                io.String.Output(display_name="table",
                                 tooltip="rank, feature, difference, target and other mean activation, specificity"),
                io.Image.Output(display_name="chart", tooltip="Bar chart of the activation differences."),
            ],
        )

    @classmethod
    def execute(cls, concept, sae, top_n: int = 5, direction: str = "target") -> io.NodeOutput:
        check_number("top_n", top_n, 1, 100, integer=True)
        check_choice("direction", direction, DIRECTIONS)
        concept.check_compatible(sae)
        found = contrast_features(concept, top_n, direction)
        if not found:
            raise SAEInputError(
                f"no feature fires more for the {direction} prompts of concept '{concept.name}' than for the others; "
                f"make the two prompt sets differ in the concept only, with more prompts")
        title = f"concept '{concept.name}' at {short_code(concept.block)}: features of the {direction} prompts"
        table = contrast_table(found, title)
        ids = ids_text(found)
        atlas = atlas_name_for(sae.source_path, folders.roots(folders.SAE_FOLDER)) or ""
        shown = {"text": (table,), "sae_lab_features": [f.feature for f in found], "sae_lab_atlas": (atlas,)}
        return io.NodeOutput(ids, table, image_tensor(contrast_chart(found, title)), ui=shown)


NODES = [SAEFindFeatures]
