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

import numpy as np
import torch

import comfy.patcher_extension
from comfy_api.latest import io, ui

from ..sae_core import analysis, feature_views
from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.recording import Recording, RecordPatch
from ..sae_core.render import COLORMAPS
from ..sae_core.atlas import atlas_name_for
from .comfy_glue import (SAE, SAE_FOLDER, image_tensor, install_block_patch, model_folder_paths, node_error,
                         resolve_block)

RECORDING = io.Custom("SAE_RECORDING")
CATEGORY = "SAE Lab/explore"
WRAPPER_KEY = "sae_lab_record"

BLOCK_HELP = ("Leave empty to use the block the SAE was trained on. Accepts diffusers names "
              "(down_blocks.2.attentions.1), the paper's codes (down.2.1, mid.0, up.0.0, up.0.1) or ComfyUI "
              "paths (input_blocks.8.1).")
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


def _check_latent(recording: Recording, latent: dict | None) -> None:
    run = recording.run
    if latent is None or run is None or run.latent_shape is None:
        return
    samples = latent["samples"]
    got, want = tuple(samples.shape), run.latent_shape
    if got[0] != want[0] or got[-2:] != want[-2:]:
        raise SAEInputError(
            f"the LATENT connected (batch {got[0]}, {got[-1] * 8}x{got[-2] * 8} px) is not the recorded sampling "
            f"run (batch {want[0]}, {want[-1] * 8}x{want[-2] * 8} px). Connect the LATENT of the sampler that "
            f"uses the recorded MODEL; a model sampled twice keeps only its latest run, so give each sampler "
            f"its own SAE Record Activations")


def check_image(recording: Recording, image: torch.Tensor | None) -> None:
    if image is None:
        return
    batch = analysis.recorded_batch(recording)
    if image.shape[0] != batch:
        raise SAEInputError(f"the IMAGE batch has {image.shape[0]} image(s) but the recording has {batch}: "
                            f"connect the decoded images of the recorded sampling run")
    grids = {c.grid for c in recording.calls}
    grid = max(grids, key=lambda g: g[0] * g[1])
    feature_views.check_aspect(grid, image.shape[1], image.shape[2])


def _ready(recording: Recording, latent: dict | None, image: torch.Tensor | None, node: str) -> None:
    """Checks shared by the reading nodes, in the order that gives the most useful message."""
    if latent is None and image is None:
        raise SAEInputError(f"connect the sampler's LATENT (or the decoded IMAGE) to {node}, so it runs after "
                            f"sampling and always shows the current run")
    analysis.check_recorded(recording)
    _check_latent(recording, latent)
    check_image(recording, image)


class SAERecordActivations(io.ComfyNode):
    NODE = "SAE Record Activations"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAERecordActivations",
            display_name=cls.NODE,
            category=CATEGORY,
            # each recorder node owns its recording: ComfyUI would otherwise share one cached output between
            # two recorder nodes with identical inputs (e.g. one per sampler), mixing their runs
            not_idempotent=True,
            description=(
                "Records which SAE features fire in one U-Net block during the real sampling run: the sparse "
                "code (top-k values and feature ids) of every position, at every step, for the positive and "
                "negative passes and every image of the batch. The model's output is unchanged. Each new "
                "sampling run replaces the previous recording. Put it after steer nodes on the same block to "
                "see their effect, before them to see the unedited activations."
            ),
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae"),
                io.String.Input("block", default="", tooltip=BLOCK_HELP),
            ],
            outputs=[
                io.Model.Output(tooltip="Sample with this model: its runs are recorded."),
                RECORDING.Output(display_name="recording",
                                 tooltip="For SAE Top Features, SAE Feature Heatmap and SAE Feature Timeline."),
            ],
        )

    @classmethod
    def execute(cls, model, sae, block: str = "") -> io.NodeOutput:
        try:
            target = resolve_block(model, sae, block)
        except SAEError as exc:
            raise node_error(cls.NODE, exc) from None
        recording = Recording(sae, target.short)
        patched = install_block_patch(model, target, RecordPatch(sae, recording), cls.NODE)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
                                     f"{WRAPPER_KEY}_{id(recording)}", _run_wrapper(recording))
        return io.NodeOutput(patched, recording)


class SAETopFeatures(io.ComfyNode):
    NODE = "SAE Top Features"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETopFeatures",
            display_name=cls.NODE,
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
        try:
            _ready(recording, latent, image, cls.NODE)
            selection = analysis.select(recording, pass_kind, batch_index, step)
            stats = analysis.rank_features(selection, top_n)
            table = analysis.format_table(stats, selection.description)
            chart = feature_views.top_features_chart(stats, selection.description)
        except SAEError as exc:
            raise node_error(cls.NODE, exc) from None
        ids = ", ".join(str(f) for f in stats.ids())
        # the table shows on the node; the ids link to the SAE Atlas sidebar when this SAE has an atlas
        atlas = atlas_name_for(getattr(recording, "sae_path", None), model_folder_paths(SAE_FOLDER)) or ""
        shown = {"text": (table,), "sae_lab_features": stats.ids(), "sae_lab_atlas": (atlas,)}
        return io.NodeOutput(table, image_tensor(chart), ids, ui=shown)


class SAEFeatureHeatmap(io.ComfyNode):
    NODE = "SAE Feature Heatmap"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFeatureHeatmap",
            display_name=cls.NODE,
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
                io.Combo.Input("mask_upscale", options=list(feature_views.UPSCALE_MODES), default="nearest",
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
        try:
            _ready(recording, None, image, cls.NODE)
            spec = analysis.parse_features(features, recording.n_latents)
            if colormap not in COLORMAPS:
                raise SAEInputError(f"colormap {colormap!r} is not valid; valid: {', '.join(COLORMAPS)}")
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
                    grids.append(feature_views.overlay_step_grid(picture, maps.numpy(), shown, steps,
                                                                 colormap=colormap, alpha=opacity))
                else:
                    maps = analysis.feature_maps(selection, shown).numpy()
                    labels = [feature_views.tile_label(f, float(m), float(p))
                              for f, m, p in zip(shown, stats.mean, stats.peak)]
                    grids.append(feature_views.overlay_grid(picture, maps, labels, colormap=colormap,
                                                            alpha=opacity, columns=columns))
                target = shown[0] if mask_feature < 0 else mask_feature
                mask_map = analysis.feature_maps(selection, [target])[0].numpy()
                masks.append(feature_views.feature_mask(mask_map, image.shape[1], image.shape[2], mask_upscale))
        except SAEError as exc:
            raise node_error(cls.NODE, exc) from None
        return io.NodeOutput(image_tensor(*grids), torch.from_numpy(np.stack(masks)).float())


class SAEFeatureTimeline(io.ComfyNode):
    NODE = "SAE Feature Timeline"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEFeatureTimeline",
            display_name=cls.NODE,
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
        try:
            _ready(recording, latent, image, cls.NODE)
            selection = analysis.select(recording, pass_kind, batch_index, analysis.ALL)
            stats = analysis.choose_features(selection, analysis.parse_features(features, recording.n_latents))
            if not len(stats):
                raise SAEInputError(f"no feature fired in {selection.description}; nothing to chart")
            shown = stats.ids()
            steps, values = analysis.timeline(selection, shown)
            title = selection.description.rsplit(",", 1)[0]
            chart = feature_views.timeline_chart(steps, shown, values.numpy(), title)
            table = feature_views.timeline_table(steps, shown, values.numpy())
        except SAEError as exc:
            raise node_error(cls.NODE, exc) from None
        return io.NodeOutput(image_tensor(chart), table, ui=ui.PreviewText(table))


NODES = [SAERecordActivations, SAETopFeatures, SAEFeatureHeatmap, SAEFeatureTimeline]
