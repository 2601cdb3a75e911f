"""See what the SAE sees: record sparse codes while sampling, then rank features, draw heatmaps and timelines.

SAE Record Activations returns a MODEL clone whose block forward stores each call's sparse code in a
Recording, and an OUTER_SAMPLE wrapper that starts a fresh run every time a sampler uses that model.
ComfyUI caches the recorder node when its inputs do not change, so the *same* Recording object serves
every later queue: when the seed changes only the sampler re-runs, and its wrapper replaces the data.
The recorder is marked not idempotent so that two recorder nodes never share one cached Recording.
The reading nodes take the sampler's LATENT or the decoded IMAGE as an input, which orders them after
sampling and makes ComfyUI re-run them whenever the sampling re-ran.
"""
from __future__ import annotations

import secrets

import comfy.patcher_extension
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..sae_core.atlas.feature_atlas import atlas_name_for
from ..sae_core.errors import SAEInputError
from ..sae_core.frontend import feature_table_ui, inspect_ui
from ..sae_core.observe import analysis, pictures
from ..sae_core.observe.inspect import footprint_masks, inspect_recording
from ..sae_core.observe.recording import Recording, RecordPatch
from ..sae_core.render import COLORMAPS
from ..sae_core.sae.feature_ids import parse_feature_list
from ..sae_core.validate import check_choice, check_number
from . import folders, routes
from .base import SAENode, image_tensor
from .patching import install_block_patch, resolve_block
from .sockets import RECORDING, SAE, block_input

CATEGORY = "SAE Lab/explore"
WRAPPER_KEY = "sae_lab_record"

RECORDING_HELP = "The recording from SAE Record Activations."
LATENT_HELP = ("The sampler's LATENT output. Connect this (or the decoded IMAGE) so the node runs after the "
               "sampler and re-runs whenever the sampling changed.")
IMAGE_ORDER_HELP = ("The decoded IMAGE of the recorded sampling (alternative to the LATENT input: either one "
                    "orders this node after the sampler).")
STEP_HELP = "Denoising step to read (0 = first), or -1 for all steps (each step weighs the same)."
PASS_HELP = ("Which CFG pass to read: positive (the prompt) or negative. At cfg 1 (SDXL Turbo) there is only "
             "the positive pass.")
BATCH_HELP = "Which image of the batch to read (0 = first), or -1 for all images together."
FEATURES_HELP = ("'top 6' to show the six strongest features of the selected step/pass, or explicit feature "
                 "ids: '4998, 2301' (ids:strength lists pasted from a steer node work too).")


def _run_wrapper(recording: Recording):
    """OUTER_SAMPLE wrapper: each sampling call with the recorded model starts (and closes) a run."""

    def wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        recording.begin_run(n_steps=max(int(sigmas.shape[-1]) - 1, 0), latent_shape=tuple(latent_image.shape))
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            recording.end_run()

    return wrapper


def _samples(latent: dict | None):
    return None if latent is None else latent["samples"]


class SAERecordActivations(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAERecordActivations",
            display_name="SAE Record Activations",
            category=CATEGORY,
            # each recorder node owns its recording: ComfyUI would otherwise share one cached output between
            # two recorder nodes with identical inputs (e.g. one per sampler), mixing their runs
            not_idempotent=True,
            description=(
                "Records which SAE features fire in one transformer block during the real sampling run: the sparse "
                "code (top-k values and feature ids) of every position, at every step, for the positive and "
                "negative passes and every image of the batch. The model's output is unchanged. Each new "
                "sampling run replaces the previous recording. Put it after steer nodes on the same block to "
                "see their effect, before them to see the unedited activations."
            ),
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae"),
                block_input(),
            ],
            outputs=[
                io.Model.Output(tooltip="Sample with this model: its runs are recorded."),
                RECORDING.Output(display_name="recording",
                                 tooltip="For SAE Top Features, SAE Feature Heatmap and SAE Feature Timeline."),
            ],
        )

    @classmethod
    def execute(cls, model, sae, block: str = "") -> io.NodeOutput:
        target = resolve_block(model, sae, block)
        recording = Recording(sae, target.short)
        patched = install_block_patch(model, target, RecordPatch(sae, recording), cls.node_name())
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
                                     f"{WRAPPER_KEY}_{id(recording)}", _run_wrapper(recording))
        return io.NodeOutput(patched, recording)


class SAETopFeatures(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETopFeatures",
            display_name="SAE Top Features",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Ranks the features of a recording as in Unpacking SDXL Turbo: by mean activation over the "
                "block's positions, with the fraction of positions where each fires and its peak. Shows the "
                "table on the node, and outputs it, a bar chart and the ids ready to paste into a steer node."
            ),
            inputs=[
                RECORDING.Input("recording", tooltip=RECORDING_HELP),
                io.Int.Input("top_n", default=10, min=1, max=200, tooltip="How many features to list."),
                io.Int.Input("step", default=-1, min=-1, max=10000, tooltip=STEP_HELP),
                io.Combo.Input("pass_kind", options=list(analysis.PASS_KINDS), default="positive",
                               display_name="pass", tooltip=PASS_HELP),
                io.Int.Input("batch_index", default=0, min=-1, max=4096, tooltip=BATCH_HELP),
                io.Latent.Input("latent", optional=True, tooltip=LATENT_HELP),
                io.Image.Input("image", optional=True, tooltip=IMAGE_ORDER_HELP),
            ],
            outputs=[
                io.String.Output(display_name="table",
                                 tooltip="rank, feature id, mean activation, fraction of positions active, peak"),
                io.Image.Output(display_name="chart", tooltip="Bar chart of the mean activations."),
                io.String.Output(display_name="feature_ids",
                                 tooltip="The ranked ids, comma separated: paste into SAE Feature Steer."),
            ],
        )

    @classmethod
    def execute(cls, recording, top_n: int = 10, step: int = -1, pass_kind: str = "positive",
                batch_index: int = 0, latent=None, image=None) -> io.NodeOutput:
        check_number("top_n", top_n, 1, 200, integer=True)
        check_number("step", step, -1, 10000, integer=True)
        check_number("batch_index", batch_index, -1, 4096, integer=True)
        analysis.check_ready(recording, _samples(latent), image, cls.node_name())
        selection = analysis.select(recording, pass_kind, batch_index, step)
        stats = analysis.rank_features(selection, top_n)
        table = analysis.format_table(stats, selection.description)
        chart = pictures.top_features_chart(stats, selection.description)
        ids = ", ".join(str(f) for f in stats.ids())
        # the table shows on the node; the ids link to the SAE Atlas sidebar when this SAE has an atlas
        atlas = atlas_name_for(getattr(recording, "sae_path", None), folders.roots(folders.SAE_FOLDER)) or ""
        return io.NodeOutput(table, image_tensor(chart), ids, ui=feature_table_ui(table, stats.ids(), atlas))


class SAEFeatureHeatmap(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFeatureHeatmap",
            display_name="SAE Feature Heatmap",
            category=CATEGORY,
            description=(
                "Overlays where features fire on the generated image, as in Unpacking SDXL Turbo: each "
                "feature's map on the block's grid is upsampled to the image (nearest), min-max normalised "
                "and coloured (the lowest bin stays transparent). One labelled grid per image of the batch, "
                "plus a MASK of one feature's map to drive other nodes."
            ),
            inputs=[
                RECORDING.Input("recording", tooltip=RECORDING_HELP),
                io.Image.Input("image", tooltip="The decoded images of the recorded sampling run."),
                io.String.Input("features", default="top 6", tooltip=FEATURES_HELP),
                io.Int.Input("step", default=-1, min=-1, max=10000,
                             tooltip="Step to show (0 = first), or -1 for the maps averaged over all steps "
                                     "(position by position)."),
                io.Boolean.Input("every_step", default=False,
                                 tooltip="Show every step as its own column (one row per feature) instead of a "
                                         "single map per feature. 'top N' then ranks over all steps."),
                io.Combo.Input("pass_kind", options=list(analysis.PASS_KINDS), default="positive",
                               display_name="pass", tooltip=PASS_HELP),
                io.Combo.Input("colormap", options=list(COLORMAPS), default="jet",
                               tooltip="jet is the paper's choice."),
                io.Float.Input("opacity", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="Opacity of the colours over the image (the paper uses 0.6)."),
                io.Int.Input("columns", default=3, min=1, max=16, tooltip="Tiles per row of the grid."),
                io.Int.Input("mask_feature", default=-1, min=-1, max=1_000_000,
                             tooltip="Feature for the MASK output: -1 = the first feature shown."),
                io.Combo.Input("mask_upscale", options=list(pictures.UPSCALE_MODES), default="nearest",
                               tooltip="How the MASK is upsampled from the block grid: nearest (blocky, as the "
                                       "overlays) or bilinear (smooth)."),
            ],
            outputs=[
                io.Image.Output(display_name="heatmaps", tooltip="One labelled grid of overlays per image."),
                io.Mask.Output(display_name="mask",
                               tooltip="mask_feature's map at image size, activation / its peak, in [0, 1]."),
            ],
        )

    @classmethod
    def execute(cls, recording, image, features: str = "top 6", step: int = -1, every_step: bool = False,
                pass_kind: str = "positive", colormap: str = "jet", opacity: float = 0.6, columns: int = 3,
                mask_feature: int = -1, mask_upscale: str = "nearest") -> io.NodeOutput:
        analysis.check_ready(recording, None, image, cls.node_name())
        spec = analysis.parse_features(features, recording.n_latents)
        check_choice("colormap", colormap, COLORMAPS)
        check_choice("pass", pass_kind, analysis.PASS_KINDS)
        check_choice("mask_upscale", mask_upscale, pictures.UPSCALE_MODES)
        check_number("step", step, -1, 10000, integer=True)
        check_number("opacity", opacity, 0.0, 1.0)
        check_number("columns", columns, 1, 16, integer=True)
        check_number("mask_feature", mask_feature, -1, 1_000_000, integer=True)
        if mask_feature >= recording.n_latents:
            raise SAEInputError(f"mask_feature {mask_feature} does not exist: this SAE has "
                                f"{recording.n_latents} features (ids 0..{recording.n_latents - 1}, or -1)")
        grids, masks = [], []
        for item in range(image.shape[0]):
            picture = image[item].detach().float().cpu().numpy()
            selection = analysis.select(recording, pass_kind, item, analysis.ALL if every_step else step)
            stats = analysis.choose_features(selection, spec)
            if not len(stats):
                raise SAEInputError(f"no feature fired in {selection.description}; nothing to show")
            shown = stats.ids()
            if every_step:
                steps, maps = analysis.step_maps(selection, shown)
                grids.append(pictures.overlay_step_grid(picture, maps.numpy(), shown, steps,
                                                             colormap=colormap, alpha=opacity))
            else:
                maps = analysis.feature_maps(selection, shown).numpy()
                labels = [pictures.tile_label(f, float(m), float(p))
                          for f, m, p in zip(shown, stats.mean, stats.peak)]
                grids.append(pictures.overlay_grid(picture, maps, labels, colormap=colormap,
                                                        alpha=opacity, columns=columns))
            target = shown[0] if mask_feature < 0 else mask_feature
            mask_map = analysis.feature_maps(selection, [target])[0].numpy()
            masks.append(pictures.feature_mask(mask_map, image.shape[1], image.shape[2], mask_upscale))
        return io.NodeOutput(image_tensor(*grids), torch.from_numpy(np.stack(masks)).float())


class SAEFeatureTimeline(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFeatureTimeline",
            display_name="SAE Feature Timeline",
            category=CATEGORY,
            description=(
                "How strongly features fire across the denoising steps (mean activation over the block's "
                "positions at each step), as a line chart and a table. Most useful with multi-step runs "
                "(SDXL base, SD1.5)."
            ),
            inputs=[
                RECORDING.Input("recording", tooltip=RECORDING_HELP),
                io.String.Input("features", default="top 5",
                                tooltip="'top 5' = the five strongest over all steps, or ids: '4998, 2301'."),
                io.Combo.Input("pass_kind", options=list(analysis.PASS_KINDS), default="positive",
                               display_name="pass", tooltip=PASS_HELP),
                io.Int.Input("batch_index", default=0, min=-1, max=4096, tooltip=BATCH_HELP),
                io.Latent.Input("latent", optional=True, tooltip=LATENT_HELP),
                io.Image.Input("image", optional=True, tooltip=IMAGE_ORDER_HELP),
            ],
            outputs=[
                io.Image.Output(display_name="chart", tooltip="One line per feature: step on x, mean activation on y."),
                io.String.Output(display_name="table", tooltip="The same numbers: one row per step."),
            ],
        )

    @classmethod
    def execute(cls, recording, features: str = "top 5", pass_kind: str = "positive", batch_index: int = 0,
                latent=None, image=None) -> io.NodeOutput:
        check_number("batch_index", batch_index, -1, 4096, integer=True)
        analysis.check_ready(recording, _samples(latent), image, cls.node_name())
        selection = analysis.select(recording, pass_kind, batch_index, analysis.ALL)
        stats = analysis.choose_features(selection, analysis.parse_features(features, recording.n_latents))
        if not len(stats):
            raise SAEInputError(f"no feature fired in {selection.description}; nothing to chart")
        shown = stats.ids()
        steps, values = analysis.timeline(selection, shown)
        title = selection.description.rsplit(",", 1)[0]
        chart = pictures.timeline_chart(steps, shown, values.numpy(), title)
        table = pictures.timeline_table(steps, shown, values.numpy())
        return io.NodeOutput(image_tensor(chart), table, ui=ui.PreviewText(table))


class SAEInspect(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEInspect",
            display_name="SAE Inspect",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "An interactive inspector on the generated image: hover a pixel to list the features that fire "
                "there (activation, label from the SAE's atlas, and the fraction of the image where each fires), "
                "click one to overlay its heatmap, pin several to compare, scrub the steps, send a feature to the "
                "selected SAE Feature Steer node, or fill mask_features to get its footprint as a MASK."
            ),
            inputs=[
                RECORDING.Input("recording", tooltip=RECORDING_HELP),
                io.Image.Input("image", tooltip="The decoded images of the recorded sampling run."),
                io.String.Input("mask_features", default="",
                                tooltip="Feature ids for the MASK output ('4998, 2301'; the inspector's Mask "
                                        "button fills this). Empty = an empty mask."),
                io.Int.Input("mask_step", default=-1, min=-1, max=10000,
                             tooltip="Step of the MASK's maps (0 = first), or -1 for the maps averaged over all "
                                     "steps."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask",
                               tooltip="Where mask_features fire (positive pass), each feature's map / its peak, "
                                       "joined by their maximum, at image size, in [0, 1]."),
            ],
        )

    @classmethod
    def execute(cls, recording, image, mask_features: str = "", mask_step: int = -1) -> io.NodeOutput:
        analysis.check_ready(recording, None, image, cls.node_name())
        check_number("mask_step", mask_step, -1, 10000, integer=True)
        features = ([e.feature for e in parse_feature_list(mask_features, recording.n_latents, 0.0)]
                    if mask_features.strip() else [])
        height, width = int(image.shape[1]), int(image.shape[2])
        inspection = inspect_recording(recording, (height, width))
        masks = footprint_masks(recording, features, mask_step, height, width, inspection.passes[0])
        atlas = atlas_name_for(getattr(recording, "sae_path", None), folders.roots(folders.SAE_FOLDER)) or ""
        key = routes.inspections.publish(inspection, atlas)
        saved = ui.ImageSaveHelper.save_images(image, filename_prefix=f"SAE_inspect_{secrets.token_hex(4)}",
                                               folder_type=io.FolderType.temp, cls=cls)
        return io.NodeOutput(torch.from_numpy(masks), ui=inspect_ui(key, [dict(r) for r in saved]))


NODES = [SAERecordActivations, SAETopFeatures, SAEFeatureHeatmap, SAEFeatureTimeline, SAEInspect]
