"""SAE Feature Steer: boost, paint, scale, ablate or clamp SAE features in one transformer block or a list of
blocks (the sdxl-unbox Flux demo adds a feature at double block 18 and every single block after it)."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core.blocks.passes import STEER_PASSES
from ..sae_core.edits.steering import MAX_STRENGTH, MODES, FeatureSteering, SteerPatch
from ..sae_core.sae.feature_ids import parse_feature_list
from ..sae_core.validate import check_choice
from .base import SAENode
from .patching import install_block_patch, resolve_blocks, step_window
from .sockets import BLOCK_HELP, SAE, block_input, window_inputs

MODE_HELP = (
    "add: paint the feature's direction where the mask is (strength x the feature's mean activation). "
    "scale: multiply the feature where it fires by (1 + strength); -1 removes it. "
    "ablate: remove the feature's contribution (strength unused). "
    "clamp: set the feature to strength x its mean activation. "
    "replace: replace the block update by the feature direction alone (the paper's feature icon)."
)


class SAEFeatureSteer(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFeatureSteer",
            display_name="SAE Feature Steer",
            category="SAE Lab",
            description=(
                "Edits SAE features inside a transformer block during sampling (Unpacking SDXL Turbo), or the "
                "same edit in a list of blocks (the Flux demo: double.18, single.0-37). Only the chosen features' "
                "decoded contributions change; the SAE's reconstruction error is kept, so nothing else in the "
                "block moves. Chain several steer nodes to edit with several SAEs or feature sets at once."
            ),
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae"),
                io.String.Input("features", default="0",
                                tooltip="Feature ids, optionally with their own strength: '4998' or "
                                        "'4998:10, 2301:-5'. A plain id uses the strength below."),
                io.Combo.Input("mode", options=list(MODES), default="add", tooltip=MODE_HELP),
                io.Float.Input("strength", default=10.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.1,
                               tooltip="Paper units: for add/clamp/replace a multiple of the feature's mean "
                                       "activation (when the SAE has statistics, else raw); for scale the "
                                       "factor added to 1. 0 leaves the image unchanged in add and scale."),
                block_input(BLOCK_HELP + " Also a list or range of blocks of the SAE's width (double.18, "
                            "single.0-37, up.0.0-2): the same edit, at the same strength, in each."),
                *window_inputs(),
                io.Combo.Input("passes", options=list(STEER_PASSES), default="positive",
                               tooltip="Which CFG passes to edit. At cfg 1 (SDXL Turbo) there is only the "
                                       "positive pass. 'positive, negated on negative' is the paper's choice "
                                       "for SDXL base."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to edit (any size: it is averaged down to the block's grid). "
                                      "One mask, or one per image of the batch. Without a mask: everywhere."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the edit attached; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, sae, features: str, mode: str, strength: float, block: str = "",
                start_percent: float = 0.0, end_percent: float = 1.0, passes: str = "positive",
                mask=None) -> io.NodeOutput:
        # mode, strengths and the mask are checked by the core (FeatureSteering, parse_feature_list, EditWeights);
        # the passes only when a block runs, so here, before anything is sampled
        check_choice("passes", passes, STEER_PASSES)
        targets = resolve_blocks(model, sae, block)
        steering = FeatureSteering(sae, parse_feature_list(features, sae.n_latents, strength, MAX_STRENGTH), mode)
        patch = SteerPatch(steering, step_window(model, start_percent, end_percent), passes, mask)
        return io.NodeOutput(install_block_patch(model, targets, patch, cls.node_name()))


NODES = [SAEFeatureSteer]
