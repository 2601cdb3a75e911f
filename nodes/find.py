"""SAE Find Features: the features that tell target prompts from contrast prompts (concept mode), or whose labels
match a query (labels mode, nothing generated), ready to steer with."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core.atlas import label_search
from ..sae_core.atlas.feature_atlas import atlas_name_for, resolve_atlas_name
from ..sae_core.atlas.label_import import atlas_labels
from ..sae_core.blocks.names import short_code
from ..sae_core.errors import SAEInputError
from ..sae_core.frontend import feature_table_ui
from ..sae_core.observe.contrast import DIRECTIONS, contrast_chart, contrast_features, contrast_table, ids_text
from ..sae_core.validate import check_choice, check_number, check_text, shown
from . import folders
from .base import SAENode, image_tensor
from .sockets import CONCEPT, SAE

MODES = ("concept", "labels")


class SAEFindFeatures(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFindFeatures",
            display_name="SAE Find Features",
            category="SAE Lab/explore",
            description=(
                "Ranks SAE features. Mode concept: those that fire more for a concept's target prompts than for its "
                "contrast prompts (from SAE Concept Profile or SAE Load Concept), by the mean difference in "
                "activation. Mode labels: those whose labels in the SAE's atlas best match the query words (import "
                "labels with SAE Import Labels); nothing is generated. Connect feature_ids to an SAE Feature Steer "
                "(mode add) and its strength becomes a slider driven by words."),
            is_output_node=True,
            inputs=[
                CONCEPT.Input("concept", optional=True,
                              tooltip="A concept profile: target prompts vs other prompts at one block (mode "
                                      "concept; not needed in mode labels)."),
                SAE.Input("sae", tooltip="The SAE the profile was recorded with, or whose atlas holds the labels "
                                         "(checked)."),
                io.Int.Input("top_n", default=5, min=1, max=100, tooltip="How many features to return."),
                io.Combo.Input("direction", options=list(DIRECTIONS), default="target",
                               tooltip="Mode concept. target: features of the target prompts (add them to push "
                                       "towards the concept); other: features of the contrast prompts."),
                io.Combo.Input("mode", options=list(MODES), default="concept", optional=True,
                               tooltip="concept: rank by a concept profile. labels: rank by the labels of the SAE's "
                                       "atlas for the query (word matching: whole words count most, then words "
                                       "that begin with a query word, the category and the whole phrase)."),
                io.String.Input("query", default="", optional=True,
                                tooltip="Mode labels: what to look for, e.g. cartoon or tiger stripes."),
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
    def execute(cls, concept=None, sae=None, top_n: int = 5, direction: str = "target", mode: str = "concept",
                query: str = "") -> io.NodeOutput:
        check_number("top_n", top_n, 1, 100, integer=True)
        check_choice("direction", direction, DIRECTIONS)
        check_choice("mode", mode, MODES)
        query = check_text("query", query or "", 200, single_line=True).strip()
        roots = folders.roots(folders.SAE_FOLDER)
        atlas = atlas_name_for(sae.source_path, roots) or ""
        if mode == "labels":
            return cls._by_labels(sae, atlas, query, top_n, roots)
        if concept is None:
            raise SAEInputError("mode concept needs a concept profile: connect SAE Concept Profile or SAE Load "
                                "Concept, or set mode to labels and type a query")
        concept.check_compatible(sae)
        found = contrast_features(concept, top_n, direction)
        if not found:
            raise SAEInputError(
                f"no feature fires more for the {direction} prompts of concept '{concept.name}' than for the others; "
                f"make the two prompt sets differ in the concept only, with more prompts")
        title = f"concept '{concept.name}' at {short_code(concept.block)}: features of the {direction} prompts"
        table = contrast_table(found, title)
        ids = ids_text(found)
        ui = feature_table_ui(table, [f.feature for f in found], atlas)
        return io.NodeOutput(ids, table, image_tensor(contrast_chart(found, title)), ui=ui)

    @classmethod
    def _by_labels(cls, sae, atlas: str, query: str, top_n: int, roots: list[str]) -> io.NodeOutput:
        if not atlas:
            raise SAEInputError("this SAE has no atlas with labels beside it in models/sae; import a label set with "
                                "SAE Import Labels (or python -m sae_core labels import)")
        labels = atlas_labels(resolve_atlas_name(atlas, roots), sae)
        found = label_search.rank(labels, query, top_n)
        if not found:
            raise SAEInputError(f"no label of this SAE's {len(labels)} labelled features matches {shown(query)}; "
                                f"try other words (labels are matched word by word)")
        title = f"features labelled like {shown(query)}"
        table = label_search.matches_table(found, title)
        ui = feature_table_ui(table, [m.feature for m in found], atlas)
        return io.NodeOutput(label_search.ids_text(found), table,
                             image_tensor(label_search.matches_chart(found, title)), ui=ui)


NODES = [SAEFindFeatures]
