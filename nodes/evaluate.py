"""Tuning and measuring unlearning as SAeUron does: the settings sweep, classifiers, UA / IRA / CRA, FID."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..sae_core.blocks.context import ALWAYS
from ..sae_core.blocks.passes import UNLEARN_PASSES
from ..sae_core.budget import Work
from ..sae_core.edits.unlearn import UnlearnPatch, select_concept
from ..sae_core.errors import SAEInputError
from ..sae_core.evaluate.classifiers import (
    CHECKPOINT_EXTENSIONS,
    ZeroShotClassifier,
    check_class_names,
    class_prompts,
    classify,
    load_classifier,
    read_text_projection,
)
from ..sae_core.evaluate.fid import INCEPTION_FILE, inception_extractor, missing_weights_message
from ..sae_core.evaluate.metrics import predicted_classes
from ..sae_core.evaluate.report import format_rows, score_row, scores_chart
from ..sae_core.evaluate.sequential import chart_groups, check_order, step_rows, steps_of_sweep
from ..sae_core.evaluate.sweep import (
    BASE,
    PAPER_MULTIPLIERS,
    PAPER_PERCENTILES,
    GridLayout,
    Run,
    Setting,
    SweepGrid,
    SweepPlan,
    feature_row,
    feature_table,
    parse_labelled_prompts,
    parse_multipliers,
    parse_percentiles,
    parse_seeds,
    run_sweep,
)
from ..sae_core.train.sharding import WHOLE, WorkShare
from ..sae_core.validate import check_choice, check_number, check_text
from . import folders
from .base import SAENode, image_tensor
from .patching import install_block_patch, resolve_block
from .sampling import (
    MAX_BATCH,
    MAX_SIDE,
    SamplingSettings,
    decoded_batch,
    encode_prompt,
    plan_batches,
    sampler_inputs,
    start_work,
)
from .sockets import CLASSIFIER, CONCEPT, SAE, SWEEP, extra_concept_inputs, given_concepts

NONE = "none"
OWN_PROJECTION = "the CLIP's own"
CATEGORY = "SAE Lab/unlearning"
PROMPTS_HELP = ("One prompt per line, labelled with the class it shows: 'label | prompt' (the class of the unlearned "
                "concepts' kind, for UA and IRA), or 'label | other-kind label | prompt' (adds CRA). The concept's "
                "own prompts carry its name (the profile's name); prompts of other classes measure what survives. "
                "A line without '|' is sampled and shown but not scored.")


def _prediction_text(classifier, images) -> str:
    probs = classify(classifier, images)
    names = classifier.class_names
    lines = []
    for i, (label, row) in enumerate(zip(predicted_classes(probs.numpy(), names), probs)):
        order = torch.argsort(row, descending=True)[:3].tolist()
        lines.append(f"image {i}: {label} " + ", ".join(f"{names[j]} {100 * float(row[j]):.1f}%" for j in order))
    return "\n".join(lines)


# ---------------------------------------------------------------------- classifiers
def list_projection_files() -> list[str]:
    return [f"clip_vision/{n}" for n in folders.list_files("clip_vision", (".safetensors",))] + \
        [f"text_encoders/{n}" for n in folders.list_files("text_encoders", (".safetensors",))]


def projection_path(choice: str) -> Path:
    kind, _, name = choice.partition("/")
    if kind not in ("clip_vision", "text_encoders"):
        raise SAEInputError(f"text_projection {choice!r} is not valid")
    return folders.find(kind, name, "text_projection")


class SAEClassifyCLIP(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEClassifyCLIP",
            display_name="SAE Classify (CLIP)",
            category=CATEGORY,
            description=(
                "A CLIP zero-shot image classifier from the CLIP vision and CLIP text models you already have: each "
                "class becomes a prompt ('a painting in {} style'), and an image's class probabilities are "
                "softmax(100 x cosine) of its CLIP image embedding with the prompts' text embeddings. Feeds SAE "
                "Unlearning Sweep; with an image connected it also classifies it. The two models must be an aligned "
                "pair (same CLIP): OpenAI ViT-L/14 vision with CLIP-L text (SD1.5's text encoder; its projection is "
                "not in SD1.5 checkpoints, so take it from the full CLIP ViT-L/14 file), or ViT-bigG/14 vision with "
                "SDXL's CLIP-G text."),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="A CLIP vision model (Load CLIP Vision), e.g. "
                                                           "clip_vision_l (OpenAI ViT-L/14) or clip_vision_g "
                                                           "(ViT-bigG/14)."),
                io.Clip.Input("clip", tooltip="The CLIP text model of the same CLIP: SD1.5's (CLIP-L) with ViT-L/14 "
                                              "vision, SDXL's (its pooled output is CLIP-G's) with ViT-bigG/14."),
                io.String.Input("class_names", multiline=True, default="Van Gogh\nMonet\nphoto",
                                tooltip="The classes, one per line (at least two). The concept you unlearn must be "
                                        "one of them, named as its profile."),
                io.String.Input("template", default="a painting in {} style",
                                tooltip="The prompt of each class; {} is replaced by the class name (underscores "
                                        "become spaces). 'a photo of {}' suits objects."),
                io.Combo.Input("text_projection", options=[OWN_PROJECTION] + list_projection_files(),
                               default=OWN_PROJECTION,
                               tooltip="Where the text projection comes from. 'the CLIP's own' works where ComfyUI "
                                       "projects the pooled output (SDXL's CLIP-G). For SD1.5's CLIP-L pick the full "
                                       "OpenAI CLIP ViT-L/14 model.safetensors in models/clip_vision (it holds "
                                       "text_projection.weight); any .safetensors in clip_vision or text_encoders "
                                       "holding a text projection works."),
                io.Image.Input("image", optional=True, tooltip="Optional: images to classify now (the predictions "
                                                               "output)."),
            ],
            outputs=[
                CLASSIFIER.Output(display_name="classifier", tooltip="The classifier, for SAE Unlearning Sweep."),
                io.String.Output(display_name="predictions", tooltip="The top classes of each connected image."),
            ],
        )

    @classmethod
    def execute(cls, clip_vision, clip, class_names: str, template: str = "a painting in {} style",
                text_projection: str = OWN_PROJECTION, image=None) -> io.NodeOutput:
        names = check_class_names(class_names, "class_names")
        prompts = class_prompts(names, template)
        check_choice("text_projection", text_projection, [OWN_PROJECTION] + list_projection_files())
        projection = None
        if text_projection != OWN_PROJECTION:
            projection, _ = read_text_projection(projection_path(text_projection))
        rows = []
        for prompt in prompts:
            tokens = clip.tokenize(prompt)
            _, unprojected = clip.encode_from_tokens(tokens, return_pooled="unprojected")
            if unprojected is None:
                raise SAEInputError("this text encoder gives no pooled output, so it cannot embed class prompts")
            unprojected = unprojected.float().reshape(1, -1).cpu()
            if projection is None:
                _, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
                pooled = pooled.float().reshape(1, -1).cpu()
                if torch.equal(pooled, unprojected):
                    raise SAEInputError("this text encoder's pooled output is not projected into CLIP's joint space "
                                        "(SD1.5's CLIP-L: its projection is not in SD1.5 checkpoints); choose a "
                                        "text_projection file, e.g. the full OpenAI CLIP ViT-L/14 model.safetensors "
                                        "in models/clip_vision")
            else:
                if unprojected.shape[1] != projection.shape[0]:
                    raise SAEInputError(f"the text projection in {text_projection} takes {projection.shape[0]}-d "
                                        f"text features but this text encoder gives {unprojected.shape[1]}-d: they "
                                        f"are not of the same CLIP")
                pooled = unprojected @ projection
            rows.append(pooled[0])

        def encode_images(images):
            return clip_vision.encode_image(images)["image_embeds"]

        classifier = ZeroShotClassifier(encode_images, torch.stack(rows), names,
                                        name=f"CLIP zero-shot ({len(names)} classes)")
        text = f"CLIP zero-shot over {len(names)} classes: " + ", ".join(prompts[:6]) + (", ..." if len(names) > 6
                                                                                          else "")
        if image is not None:
            text = _prediction_text(classifier, image)
        return io.NodeOutput(classifier, text, ui=ui.PreviewText(text))


def list_classifiers() -> list[str]:
    return [n for n in folders.list_files(folders.CLASSIFIER_FOLDER, CHECKPOINT_EXTENSIONS)
            if "inception" not in n.lower()]


class SAEClassifierCheckpoint(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEClassifierCheckpoint",
            display_name="SAE Classifier Checkpoint",
            category=CATEGORY,
            description=(
                "Loads an image classifier from models/sae_classifiers: a ViT in timm's layout (as the UnlearnCanvas "
                "style and object classifiers are, which you download yourself) as NAME.safetensors or a torch file "
                "(read with weights_only: a file that would run code is refused), with NAME.json beside it naming "
                "the classes in output order: {\"classes\": [...]}. Feeds SAE Unlearning Sweep."),
            inputs=[
                io.Combo.Input("classifier_name", options=list_classifiers() + [NONE],
                               tooltip="A classifier in models/sae_classifiers (with NAME.json beside it)."),
                io.Image.Input("image", optional=True, tooltip="Optional: images to classify now (the predictions "
                                                               "output)."),
            ],
            outputs=[
                CLASSIFIER.Output(display_name="classifier", tooltip="The classifier, for SAE Unlearning Sweep."),
                io.String.Output(display_name="predictions", tooltip="What it is, or the top classes of each "
                                                                     "connected image."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, classifier_name: str, image=None):
        try:
            return (classifier_name, folders.find(folders.CLASSIFIER_FOLDER, classifier_name, "x").stat().st_mtime)
        except (SAEInputError, OSError):
            return classifier_name

    @classmethod
    def execute(cls, classifier_name: str, image=None) -> io.NodeOutput:
        check_choice("classifier_name", classifier_name, list_classifiers() + [NONE])
        if classifier_name == NONE:
            raise SAEInputError("no classifier chosen: put one in models/sae_classifiers (NAME.safetensors + "
                                "NAME.json) and refresh")
        path = folders.find(folders.CLASSIFIER_FOLDER, classifier_name, "classifier_name")
        classifier = load_classifier(path, shown_name=classifier_name)
        classifier.to(comfy.model_management.get_torch_device())
        text = classifier.describe()
        if image is not None:
            text = _prediction_text(classifier, image)
        return io.NodeOutput(classifier, text, ui=ui.PreviewText(text))


# ---------------------------------------------------------------------- the sweep
def inception_file() -> Path:
    names = [n for n in folders.list_files(folders.CLASSIFIER_FOLDER, (".pth", ".pt", ".safetensors"))
             if "inception" in n.lower()]
    if not names:
        raise SAEInputError(missing_weights_message("in models/sae_classifiers"))
    name = next((n for n in names if Path(n).name == INCEPTION_FILE), names[0])
    return folders.find(folders.CLASSIFIER_FOLDER, name, "Inception weights")


def unlearned_image_inputs() -> list:
    """How the unlearning nodes that sample (sweep, sequential) make each image."""
    return [
        *sampler_inputs(20, 7.5, steps_tip="Sampling steps of every image.",
                        cfg_tip="CFG of every image (SAeUron: 9 on its UnlearnCanvas SD1.5).",
                        sampler_tip="Sampler of every image.", scheduler_tip="Scheduler of every image."),
        io.Int.Input("width", default=512, min=64, max=MAX_SIDE, step=8, tooltip="Image width."),
        io.Int.Input("height", default=512, min=64, max=MAX_SIDE, step=8, tooltip="Image height."),
        io.Int.Input("batch_size", default=4, min=1, max=MAX_BATCH,
                     tooltip="Images sampled, decoded and classified together: the most held in memory."),
        io.Combo.Input("passes", options=list(UNLEARN_PASSES), default="both",
                       tooltip="Which CFG passes the unlearning edits (the paper: both)."),
    ]


class SAEUnlearningSweep(SAENode):
    share: ClassVar[WorkShare] = WHOLE  # python -m headless sweep: a torchrun rank's share of the runs

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEUnlearningSweep",
            display_name="SAE Unlearning Sweep",
            category=CATEGORY,
            description=(
                "SAeUron's settings sweep: samples your prompts and seeds with the un-edited model and with each "
                "concept unlearned under every percentile x multiplier, with ComfyUI's sampler. Gives one labelled "
                "grid (per concept and prompt: rows = percentiles, columns = multipliers, the un-edited image "
                "first), a table of how many features each setting suppresses per step, and, with a classifier "
                "connected, the predictions SAE Unlearning Scores turns into UA / IRA / CRA and the best setting. "
                "Images are drawn into the grid batch by batch and dropped, so a long sweep holds one batch."),
            inputs=[
                io.Model.Input("model", tooltip="The model to unlearn from (it is not modified)."),
                io.Clip.Input("clip", tooltip="The text encoder of the model (as for CLIP Text Encode)."),
                io.Vae.Input("vae", tooltip="The model's VAE: each batch is decoded, drawn and dropped."),
                SAE.Input("sae", tooltip="The SAE the concept profiles were recorded with."),
                CONCEPT.Input("concept", tooltip="A concept profile (SAE Concept Profile / SAE Load Concept); its name "
                                                 "is its class for the scores."),
                io.String.Input("prompts", multiline=True,
                                default="Van Gogh | A painting of a dog in Van Gogh style.\n"
                                        "Monet | A painting of a dog in Monet style.",
                                tooltip=PROMPTS_HELP),
                io.String.Input("negative", default="", tooltip="The negative prompt (SAeUron: empty)."),
                io.String.Input("seeds", default="0", tooltip="Seeds, separated by commas; every prompt is sampled "
                                                              "with each (the same noise in every setting)."),
                io.String.Input("percentiles", default=", ".join(f"{p:g}" for p in PAPER_PERCENTILES),
                                tooltip="Percentiles to try, separated by commas (each 0.001-99.999). The paper's "
                                        "object sweep: 99.99, 99.995, 99.999; styles use 99.999."),
                io.String.Input("multipliers", default=", ".join(f"{m:g}" for m in PAPER_MULTIPLIERS),
                                tooltip="Multipliers to try, separated by commas (each -100..100). The paper's "
                                        "object sweep: -1, -5, -10, -15, -20, -25, -30; styles use -1."),
                *unlearned_image_inputs(),
                io.Int.Input("cell_size", default=160, min=32, max=512,
                             tooltip="Size of each image in the grid, in pixels (its longer side)."),
                io.Boolean.Input("fid", default=False,
                                 tooltip=f"Also compute FID of each setting's images against the un-edited images "
                                         f"(needs torch-fidelity and {INCEPTION_FILE} in models/sae_classifiers; "
                                         f"meaningful with many images)."),
                CLASSIFIER.Input("classifier", optional=True,
                                 tooltip="Classifier of the concepts' kind (UA, IRA), e.g. styles."),
                CLASSIFIER.Input("cross_classifier", optional=True,
                                 tooltip="Classifier of the other kind (CRA), read from the second label."),
                *extra_concept_inputs("Another concept to sweep (unlearned on its own, same SAE and block)."),
            ],
            outputs=[
                io.Image.Output(display_name="grid", tooltip="Every image of the sweep, labelled by setting."),
                io.String.Output(display_name="feature_table",
                                 tooltip="Features suppressed per step by each setting, and positions edited."),
                SWEEP.Output(display_name="sweep", tooltip="The predictions, for SAE Unlearning Scores."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, sae, concept, prompts: str, negative: str = "", seeds: str = "0",
                percentiles: str = "99.99, 99.995, 99.999", multipliers: str = "-1, -5, -10, -15, -20, -25, -30",
                steps: int = 20, cfg: float = 7.5, sampler_name: str = "euler", scheduler: str = "normal",
                width: int = 512, height: int = 512, batch_size: int = 4, passes: str = "both", cell_size: int = 160,
                fid: bool = False, classifier=None, cross_classifier=None, concept_2=None, concept_3=None,
                concept_4=None) -> io.NodeOutput:
        check_choice("passes", passes, UNLEARN_PASSES)
        check_number("cell_size", cell_size, 32, 512, integer=True)
        if not isinstance(fid, bool):
            raise SAEInputError(f"fid must be true or false, got {type(fid).__name__}")
        negative = check_text("negative", negative if negative is not None else "", 10_000)
        settings = SamplingSettings.checked(steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler, seed=0,
                                            width=width, height=height, batch_size=batch_size)
        concepts = given_concepts(sae, (concept, concept_2, concept_3, concept_4), "sweep one block at a time")
        if len({c.name.casefold() for c in concepts}) < len(concepts):
            raise SAEInputError("two concepts have the same name; each concept's name is its class for the scores")
        plan = SweepPlan.build([c.name for c in concepts], parse_percentiles(percentiles),
                               parse_multipliers(multipliers), parse_labelled_prompts(prompts), parse_seeds(seeds))
        work = start_work(Work(plan.n_images, settings.steps, f"{plan.n_runs:,} runs x {len(plan.samples):,} "
                                                              f"prompt-seed samples"))
        where = resolve_block(model, sae, concepts[0].block)
        extractor = inception_extractor(inception_file(), comfy.model_management.get_torch_device()) if fid else None
        layout = GridLayout(plan, (height, width), cell_size)
        grid = SweepGrid(layout)

        conditioning = {p: encode_prompt(clip, p) for p in dict.fromkeys(s.prompt for s in plan.samples)}
        sample_conds = [conditioning[s.prompt] for s in plan.samples]
        batches = plan_batches(sample_conds, settings.batch_size)
        negative_cond = encode_prompt(clip, negative)
        selections = {(c, s): select_concept(concepts[c], s.percentile, s.multiplier)
                      for c in range(len(concepts)) for s in plan.settings}
        patches: dict[Run, UnlearnPatch] = {}
        models: dict[Run, object] = {}
        runs = cls.share.pick(list(plan.runs()))  # every run, but on a headless rank
        progress = comfy.utils.ProgressBar(len(runs) * len(plan.samples))

        def generate(run: Run, indices: list[int]):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if run not in models:
                models.clear()  # one patched clone at a time
                if run.is_base:
                    models[run] = model
                else:
                    patches[run] = UnlearnPatch(sae, [selections[(run.concept, run.setting)]], ALWAYS, passes)
                    models[run] = install_block_patch(model, where, patches[run], cls.node_name())
            return decoded_batch(models[run], vae, [sample_conds[i] for i in indices], negative_cond,
                                 [plan.samples[i].seed for i in indices], settings)

        with torch.no_grad():  # as ComfyUI runs nodes; also when called directly
            result = run_sweep(plan, generate, batches, classifier=classifier, cross_classifier=cross_classifier,
                               fid_extractor=extractor, grid=grid, progress=progress.update, runs=runs)
        result.feature_rows = [feature_row(concepts[c].name, s, selections[(c, s)],
                                           patches[Run(c, s)].edited_positions if Run(c, s) in patches else None)
                               for c in range(len(concepts)) for s in plan.settings]
        result.fid_source = "torch-fidelity InceptionV3" if fid else ""
        table = f"{plan.describe()}\n" + feature_table(result.feature_rows)
        return io.NodeOutput(image_tensor(grid.image), table, result,
                             ui=ui.PreviewText(f"sampled {work.describe()}\n{table}"))


# ---------------------------------------------------------------------- the scores
def score_rows(result) -> list[dict]:
    best = {concept: setting for concept, setting, _ in result.best()}
    rows = []
    for concept, setting, scores in result.table():
        label = "un-edited" if setting is None else setting.label
        rows.append(score_row(concept, label, scores, percentile=None if setting is None else setting.percentile,
                              multiplier=None if setting is None else setting.multiplier,
                              best=setting is not None and best.get(concept) == setting))
    return rows


class SAEUnlearningScores(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEUnlearningScores",
            display_name="SAE Unlearning Scores",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "UnlearnCanvas's scores of a sweep, as SAeUron computes them: UA = 1 - accuracy on the unlearned "
                "concept, IRA = mean accuracy on the other classes of the same kind, CRA = mean accuracy of the "
                "other-kind classifier, per concept and setting (and FID when the sweep computed it). The best "
                "setting per concept maximises (UA + IRA) / 2, as the paper picks its object settings."),
            inputs=[SWEEP.Input("sweep", tooltip="From SAE Unlearning Sweep, run with a classifier.")],
            outputs=[
                io.String.Output(display_name="scores", tooltip="UA / IRA / CRA (%) and FID per concept and "
                                                                "setting; 'best' marks each concept's choice."),
                io.String.Output(display_name="best", tooltip="The best setting of each concept."),
                io.Image.Output(display_name="chart", tooltip="UA, IRA and CRA of each concept at its best setting, "
                                                              "and their average."),
                io.Float.Output(display_name="percentile", tooltip="The first concept's best percentile (for SAE "
                                                                   "Unlearn Concept)."),
                io.Float.Output(display_name="multiplier", tooltip="The first concept's best multiplier."),
            ],
        )

    @classmethod
    def execute(cls, sweep) -> io.NodeOutput:
        from ..sae_core.evaluate.metrics import average_scores
        from ..sae_core.evaluate.sweep import SweepResult

        if not isinstance(sweep, SweepResult):
            raise SAEInputError("sweep must come from SAE Unlearning Sweep")
        best = sweep.best()
        rows = score_rows(sweep)
        average = average_scores([scores for _, _, scores in best])
        rows.append(score_row("average", "best per concept", average))
        table = format_rows(rows)
        best_text = "\n".join(f"{concept}: percentile {setting.percentile:g}, multiplier {setting.multiplier:g} "
                              f"((UA+IRA)/2 = {100 * scores.selection_score:.1f}%)"
                              for concept, setting, scores in best)
        groups = [(concept, scores) for concept, _, scores in best] + [("average", average)]
        chart = scores_chart(groups, title="UA / IRA / CRA at the best setting of each concept")
        first = best[0][1]
        baseline = sweep.scores(BASE, sweep.plan.concepts[0])
        note = "" if baseline.ua is None else f"\n(un-edited model: UA {100 * baseline.ua:.1f}% for " \
                                              f"'{sweep.plan.concepts[0]}')"
        return io.NodeOutput(table, best_text, image_tensor(chart), first.percentile, first.multiplier,
                             ui=ui.PreviewText(best_text + note + "\n\n" + table))


# ---------------------------------------------------------------------- sequential unlearning
class SAESequentialUnlearning(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAESequentialUnlearning",
            display_name="SAE Sequential Unlearning",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "SAeUron's sequential unlearning (section 7.1): the concepts are removed one after another (step i "
                "suppresses concepts 1..i together, at one setting), your prompts are sampled after each step with "
                "ComfyUI's sampler, and the classifier scores each step: UA = mean over the removed concepts of 1 - "
                "their accuracy, IRA = mean accuracy of the classes not removed yet, CRA = the other kind's. Gives "
                "the table and a chart, one bar group per step (the un-edited model first)."),
            inputs=[
                io.Model.Input("model", tooltip="The model to unlearn from (it is not modified)."),
                io.Clip.Input("clip", tooltip="The text encoder of the model (as for CLIP Text Encode)."),
                io.Vae.Input("vae", tooltip="The model's VAE: each batch is decoded, classified and dropped."),
                SAE.Input("sae", tooltip="The SAE the concept profiles were recorded with."),
                CONCEPT.Input("concept", tooltip="The first concept removed; its name is its class for the scores."),
                CLASSIFIER.Input("classifier", tooltip="Classifier of the concepts' kind (UA, IRA)."),
                io.String.Input("prompts", multiline=True,
                                default="Van Gogh | A painting of a dog in Van Gogh style.\n"
                                        "Monet | A painting of a dog in Monet style.\n"
                                        "Picasso | A painting of a dog in Picasso style.",
                                tooltip=PROMPTS_HELP),
                io.String.Input("negative", default="", tooltip="The negative prompt (SAeUron: empty)."),
                io.String.Input("seeds", default="0", tooltip="Seeds, separated by commas; every prompt is sampled "
                                                              "with each at every step."),
                io.Float.Input("percentile", default=99.999, min=0.001, max=99.999, step=0.001,
                               tooltip="The selection percentile of every concept (SAeUron's styles: 99.999)."),
                io.Float.Input("multiplier", default=-1.0, min=-100.0, max=100.0, step=0.5,
                               tooltip="The multiplier of every concept (SAeUron's styles: -1)."),
                *unlearned_image_inputs(),
                CLASSIFIER.Input("cross_classifier", optional=True,
                                 tooltip="Classifier of the other kind (CRA), read from the second label."),
                *extra_concept_inputs("The next concept removed (in order: concept, concept_2, ...; same SAE and "
                                      "block)."),
            ],
            outputs=[
                io.String.Output(display_name="scores", tooltip="UA / IRA / CRA (%) after each step."),
                io.Image.Output(display_name="chart", tooltip="UA of the removed concepts and IRA / CRA of the rest, "
                                                              "one bar group per step."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, sae, concept, classifier, prompts: str, negative: str = "", seeds: str = "0",
                percentile: float = 99.999, multiplier: float = -1.0, steps: int = 20, cfg: float = 7.5,
                sampler_name: str = "euler", scheduler: str = "normal", width: int = 512, height: int = 512,
                batch_size: int = 4, passes: str = "both", cross_classifier=None, concept_2=None, concept_3=None,
                concept_4=None) -> io.NodeOutput:
        check_choice("passes", passes, UNLEARN_PASSES)
        if classifier is None:
            raise SAEInputError("classifier is required: the steps are scored by it")
        negative = check_text("negative", negative if negative is not None else "", 10_000)
        settings = SamplingSettings.checked(steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler, seed=0,
                                            width=width, height=height, batch_size=batch_size)
        concepts = given_concepts(sae, (concept, concept_2, concept_3, concept_4), "remove concepts of one block")
        check_order([c.name for c in concepts], "the concepts")
        plan = SweepPlan.build([c.name for c in concepts], parse_percentiles(str(percentile)),
                               parse_multipliers(str(multiplier)), parse_labelled_prompts(prompts), parse_seeds(seeds))
        setting = Setting(plan.percentiles[0], plan.multipliers[0])
        runs = [BASE] + [Run(i, setting) for i in range(len(concepts))]
        work = start_work(Work(len(runs) * len(plan.samples), settings.steps,
                               f"{len(runs)} runs (the un-edited model + {len(concepts)} steps) x "
                               f"{len(plan.samples):,} prompt-seed samples"))
        where = resolve_block(model, sae, concepts[0].block)
        conditioning = {p: encode_prompt(clip, p) for p in dict.fromkeys(s.prompt for s in plan.samples)}
        sample_conds = [conditioning[s.prompt] for s in plan.samples]
        negative_cond = encode_prompt(clip, negative)
        selections = [select_concept(c, setting.percentile, setting.multiplier) for c in concepts]
        current: dict[Run, object] = {}
        progress = comfy.utils.ProgressBar(work.images)

        def generate(run: Run, indices: list[int]):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if run not in current:
                current.clear()  # one patched clone at a time
                current[run] = model if run.is_base else install_block_patch(
                    model, where, UnlearnPatch(sae, selections[:run.concept + 1], ALWAYS, passes), cls.node_name())
            return decoded_batch(current[run], vae, [sample_conds[i] for i in indices], negative_cond,
                                 [plan.samples[i].seed for i in indices], settings)

        with torch.no_grad():
            result = run_sweep(plan, generate, plan_batches(sample_conds, settings.batch_size), classifier=classifier,
                               cross_classifier=cross_classifier, progress=progress.update, runs=runs)
        steps_done = steps_of_sweep(result, setting)
        base = result.scores(BASE, plan.concepts[0])
        rows = [score_row("un-edited", "step 0: none removed", base)] + step_rows(steps_done)
        table = format_rows(rows)
        chart = scores_chart([("un-edited", base)] + chart_groups(steps_done),
                             title=f"sequential unlearning at {setting.label}: UA of the removed, IRA / CRA of the "
                                   f"rest")
        return io.NodeOutput(table, image_tensor(chart), ui=ui.PreviewText(f"sampled {work.describe()}\n{table}"))


NODES = [SAEUnlearningSweep, SAEClassifyCLIP, SAEClassifierCheckpoint, SAEUnlearningScores, SAESequentialUnlearning]
