"""SAeUron concept unlearning: record a concept profile, suppress its SAE features, save and load profiles."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from comfy_api.latest import io, ui

from ..sae_core.blocks.passes import UNLEARN_PASSES
from ..sae_core.edits.unlearn import (
    DEFAULT_MULTIPLIER,
    DEFAULT_PERCENTILE,
    MAX_MULTIPLIER,
    PERCENTILE_RANGE,
    UnlearnPatch,
    select_concept,
)
from ..sae_core.edits.unlearn_preview import selection_chart, selection_report
from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.observe.concept_profile import ConceptProfile, check_prompt_sets
from ..sae_core.prompts import parse_prompts
from ..sae_core.train.sharding import WHOLE, WorkShare
from ..sae_core.validate import check_choice, check_number, check_text, relative_parts
from . import folders
from .base import SAENode, image_tensor
from .patching import install_block_patch, resolve_block, step_window
from .sampling import (
    MAX_BATCH,
    MAX_SEED,
    MAX_SIDE,
    SamplingSettings,
    profile_work,
    record_profile,
    sampler_inputs,
    start_work,
)
from .sockets import BLOCK_HELP, CONCEPT, SAE, block_input, extra_concept_inputs, given_concepts, window_inputs

NONE = "none"


def preview(selections) -> tuple[str, torch.Tensor]:
    image, _ = selection_chart(selections)
    return selection_report(selections), image_tensor(image)


PERCENTILE_HELP = ("Keep the features whose score is above this percentile of all scores, per step. 99.999 (the "
                   "paper's choice for styles) keeps 1-3 features of a 20480-latent SAE; objects use 99.99-99.999. "
                   "Lower keeps more features: stronger, less specific unlearning.")
MULTIPLIER_HELP = ("Where a selected feature fires above its threshold it is multiplied by (its mean activation on "
                   "the concept x multiplier). -1 for styles (paper); objects need -1 to -30. 0 removes it.")


class SAEConceptProfile(SAENode):
    share: ClassVar[WorkShare] = WHOLE  # python -m headless profile: a torchrun rank's share of the batches

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEConceptProfile",
            display_name="SAE Concept Profile",
            category="SAE Lab/unlearning",
            description=(
                "Samples every target prompt (showing the concept to unlearn) and every other prompt (the contrast "
                "set) with ComfyUI's sampler, and records at every step how strongly each SAE feature fires in the "
                "SAE's block, averaged over positions (SAeUron). The result feeds SAE Unlearn Concept; save it "
                "with SAE Save Concept to compute it only once."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", tooltip="The text encoder of the model (as for CLIP Text Encode)."),
                SAE.Input("sae"),
                io.String.Input("target_prompts", multiline=True, default="a painting in the style of van gogh",
                                tooltip="Prompts showing the concept, one per line. Vary the subjects so only the "
                                        "concept is common to them."),
                io.String.Input("other_prompts", multiline=True, default="a photo of a house",
                                tooltip="The contrast set, one per line: other styles or objects, ideally the same "
                                        "subjects as the target prompts without the concept."),
                io.String.Input("name", default="concept", tooltip="A name for the concept, shown in previews."),
                block_input(BLOCK_HELP + " SAeUron's style SAE: up.1.2."),
                *sampler_inputs(
                    20, 7.5, sampler_tip="Sampler used while recording.",
                    scheduler_tip="Scheduler used while recording.",
                    steps_tip="Sampling steps while recording. The profile applies to runs with any number of steps "
                              "(matched by noise level); SAeUron records 50.",
                    cfg_tip="CFG while recording (only the positive pass is recorded). Use the cfg you generate "
                            "with: 7.5 for SD1.5, 1.0 for SDXL Turbo."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Prompt i of each set uses the noise of seed + i, so both sets start from the "
                                     "same noises. Fixed (not randomised after each queue), so the profile is "
                                     "computed once and then served from the cache."),
                io.Int.Input("width", default=512, min=64, max=MAX_SIDE, step=8,
                             tooltip="Image width while recording."),
                io.Int.Input("height", default=512, min=64, max=MAX_SIDE, step=8,
                             tooltip="Image height while recording."),
                io.Int.Input("batch_size", default=4, min=1, max=MAX_BATCH,
                             tooltip="Prompts sampled together in one sampler call (more is faster, needs more "
                                     "memory)."),
            ],
            outputs=[
                CONCEPT.Output(display_name="concept", tooltip="The concept profile, for SAE Unlearn Concept."),
                io.String.Output(display_name="preview",
                                 tooltip=f"Features selected at the paper's defaults (percentile "
                                         f"{DEFAULT_PERCENTILE}, multiplier {DEFAULT_MULTIPLIER:g}), step by step."),
                io.Image.Output(display_name="chart", tooltip="Selected features (rows) by step (columns), "
                                                              "coloured by score."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, sae, target_prompts: str, other_prompts: str, name: str = "concept",
                block: str = "", steps: int = 20, cfg: float = 7.5, sampler_name: str = "euler",
                scheduler: str = "normal", seed: int = 0, width: int = 512, height: int = 512,
                batch_size: int = 4) -> io.NodeOutput:
        target = parse_prompts(target_prompts, "target")
        other = parse_prompts(other_prompts, "other")
        check_prompt_sets(target, other)
        name = check_text("name", name or "", 120, single_line=True).strip() or "concept"
        settings = SamplingSettings.checked(steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler,
                                            seed=seed, width=width, height=height, batch_size=batch_size)
        where = resolve_block(model, sae, block)
        work = start_work(profile_work(target, other, settings))
        profile = record_profile(model, clip, sae, where, target, other, name=name, settings=settings,
                                 label=cls.node_name(), share=cls.share)
        text, chart = preview([select_concept(profile)])
        return io.NodeOutput(profile, text, chart, ui=ui.PreviewText(f"sampled {work.describe()}\n\n{text}"))


class SAEUnlearnConcept(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEUnlearnConcept",
            display_name="SAE Unlearn Concept",
            category="SAE Lab/unlearning",
            description=(
                "SAeUron concept unlearning: at every step, the SAE features most specific to the concept (by the "
                "profile's scores) are scaled down wherever they fire above their threshold. Only those features' "
                "decoded contributions change and the SAE's error is kept, so the rest of the block is untouched. "
                "Several concepts are suppressed together in one patch."
            ),
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae"),
                CONCEPT.Input("concept", tooltip="A profile from SAE Concept Profile or SAE Load Concept."),
                io.Float.Input("percentile", default=DEFAULT_PERCENTILE, min=PERCENTILE_RANGE[0],
                               max=PERCENTILE_RANGE[1], step=0.001, tooltip=PERCENTILE_HELP),
                io.Float.Input("multiplier", default=DEFAULT_MULTIPLIER, min=-MAX_MULTIPLIER, max=MAX_MULTIPLIER,
                               step=0.1, tooltip=MULTIPLIER_HELP),
                *window_inputs(),
                io.Combo.Input("passes", options=list(UNLEARN_PASSES), default="both",
                               tooltip="Which CFG passes to edit. The paper edits both; at cfg 1 there is only the "
                                       "positive pass."),
                *extra_concept_inputs("Another concept to suppress at the same time (same SAE and block)."),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the unlearning attached; the input model is unchanged."),
                io.String.Output(display_name="preview", tooltip="Which features are suppressed at which steps."),
                io.Image.Output(display_name="chart", tooltip="Suppressed features (rows) by step (columns), "
                                                              "coloured by score."),
            ],
        )

    @classmethod
    def execute(cls, model, sae, concept, percentile: float = DEFAULT_PERCENTILE,
                multiplier: float = DEFAULT_MULTIPLIER, start_percent: float = 0.0, end_percent: float = 1.0,
                passes: str = "both", concept_2=None, concept_3=None, concept_4=None) -> io.NodeOutput:
        check_choice("passes", passes, UNLEARN_PASSES)
        check_number("percentile", percentile, *PERCENTILE_RANGE)
        check_number("multiplier", multiplier, -MAX_MULTIPLIER, MAX_MULTIPLIER)
        concepts = given_concepts(sae, (concept, concept_2, concept_3, concept_4),
                                  f"one node edits one block: chain one {cls.node_name()} node per block")
        where = resolve_block(model, sae, concepts[0].block)
        selections = [select_concept(c, percentile, multiplier) for c in concepts]
        patch = UnlearnPatch(sae, selections, step_window(model, start_percent, end_percent), passes)
        text, chart = preview(selections)
        return io.NodeOutput(install_block_patch(model, where, patch, cls.node_name()), text, chart,
                             ui=ui.PreviewText(text))


def list_concepts() -> list[str]:
    names: set[str] = set()
    for root in folders.roots(folders.CONCEPT_FOLDER):
        if Path(root).is_dir():
            for path in Path(root).rglob("*.safetensors"):
                rel = folders.relative_name(folders.CONCEPT_FOLDER, path)
                if rel is not None:
                    names.add(rel)
    return sorted(names)


def concept_path(name: str) -> Path:
    return folders.find(folders.CONCEPT_FOLDER, name, "concept_name")


def save_target(name: str) -> tuple[Path, str]:
    """models/sae_concepts/<name>.safetensors (sub-folders allowed, nothing outside the folder), and its name."""
    parts = relative_parts(str(name).strip().removesuffix(".safetensors"), "name")
    shown = "/".join(parts) + ".safetensors"
    return folders.target(folders.CONCEPT_FOLDER, shown, "name"), shown


def _holds(path: Path, concept: ConceptProfile) -> bool:
    try:
        return ConceptProfile.load(path).same_as(concept)
    except SAEError:
        return False


class SAESaveConcept(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAESaveConcept",
            display_name="SAE Save Concept",
            category="SAE Lab/unlearning",
            description=("Saves a concept profile to models/sae_concepts as .safetensors (means per step, plus the "
                         "SAE's fingerprint, block, prompts and sampling settings), so it is computed once and "
                         "shared. SAE Load Concept lists the saved profiles."),
            is_output_node=True,
            inputs=[
                CONCEPT.Input("concept", tooltip="The profile to save."),
                io.String.Input("name", default="concept", tooltip="File name in models/sae_concepts (sub-folders "
                                                                   "allowed: styles/vangogh)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name holding a different profile."),
            ],
            outputs=[CONCEPT.Output(display_name="concept", tooltip="The same profile, passed through.")],
        )

    @classmethod
    def execute(cls, concept, name: str = "concept", overwrite: bool = False) -> io.NodeOutput:
        path, shown = save_target(name)
        if path.exists() and not overwrite and not _holds(path, concept):
            raise SAEInputError(f"{shown} already holds another profile in models/sae_concepts; turn on overwrite "
                                f"or pick another name")
        concept.save(path)
        return io.NodeOutput(concept, ui=ui.PreviewText(f"saved {concept.describe()} to models/sae_concepts/{shown}"))


class SAELoadConcept(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAELoadConcept",
            display_name="SAE Load Concept",
            category="SAE Lab/unlearning",
            description=("Loads a concept profile saved by SAE Save Concept. It is checked against the SAE: a profile "
                         "made with another SAE (or, when block is set, at another block) is refused, because feature "
                         "ids mean nothing across SAEs."),
            inputs=[
                io.Combo.Input("concept_name", options=list_concepts() + [NONE],
                               tooltip="A profile in models/sae_concepts."),
                SAE.Input("sae"),
                block_input("Optional: the block you will unlearn at; a profile recorded at another block is "
                            "refused. Empty: the profile's own block.", optional=True),
            ],
            outputs=[CONCEPT.Output(display_name="concept", tooltip="The loaded profile."),
                     io.String.Output(display_name="info", tooltip="What the profile holds.")],
        )

    @classmethod
    def fingerprint_inputs(cls, concept_name: str, sae=None, block: str = ""):
        try:
            return (concept_name, block, concept_path(concept_name).stat().st_mtime)
        except (SAEError, OSError):
            return (concept_name, block)

    @classmethod
    def execute(cls, concept_name: str, sae, block: str = "") -> io.NodeOutput:
        check_choice("concept_name", concept_name, list_concepts() + [NONE])
        if concept_name == NONE:
            raise SAEInputError("no concept chosen: pick a profile saved in models/sae_concepts")
        profile = ConceptProfile.load(concept_path(concept_name))
        profile.check_compatible(sae, check_text("block", block or "", 200, single_line=True))
        info = profile.describe()
        if profile.sampling:
            info += "; recorded with " + ", ".join(f"{k} {v}" for k, v in profile.sampling.items())
        return io.NodeOutput(profile, info, ui=ui.PreviewText(info))


NODES = [SAEConceptProfile, SAEUnlearnConcept, SAESaveConcept, SAELoadConcept]
