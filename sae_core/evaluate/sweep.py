"""The settings sweep of SAeUron (percentile x multiplier per concept), streamed.

- :class:`SweepPlan`: the concepts, the grid of settings (every percentile with every multiplier, percentiles
  outer as the paper's scripts loop), and the samples (prompt x seed, each prompt optionally labelled with its
  class for the scores). Runs: the un-edited model first, then each concept under each setting.
- :func:`run_sweep`: the loop. ``generate(run, sample_indices)`` returns one batch of images; each batch is drawn
  into the grid, classified and its FID features taken, and then dropped, so at most one batch of images is alive
  whatever the size of the sweep (the grid holds thumbnails). Predictions and features are kept (a few numbers
  per image).
- :class:`GridLayout` / :class:`SweepGrid`: one labelled picture: per concept and sample a panel whose rows are
  percentiles and columns multipliers, the un-edited image first (top left).
- :func:`feature_table`: how many features each setting suppresses at each step (the selection of
  :func:`sae_core.edits.unlearn.select_concept`, which depends on the percentile only), and how many positions the
  edit changed during the sweep.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from ..edits.unlearn import MAX_MULTIPLIER, PERCENTILE_RANGE
from ..errors import SAEInputError
from ..render import BACKGROUND, INK, as_uint8_image, font
from ..tables import text_table
from ..validate import check_number, check_text, shown
from .classifiers import ImageClassifier, classify
from .fid import FeatureExtractor, FeatureSet, frechet_distance
from .metrics import (
    UnlearningScores,
    best_setting,
    canonical,
    per_class_accuracy,
    predicted_classes,
    unlearning_scores,
)

MAX_VALUES = 16       # percentiles, multipliers, seeds: each at most this many
MAX_SAMPLES = 256     # prompts x seeds
MAX_GRID_PIXELS = 64_000_000
PAPER_PERCENTILES = (99.99, 99.995, 99.999)            # objects (scripts/sweep_cls_distr.py)
PAPER_MULTIPLIERS = (-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0)
MAX_SEED = 0xFFFFFFFFFFFFFFFF
_SPLIT = re.compile(r"[,;\s]+")


# ---------------------------------------------------------------------- what the user types
def parse_numbers(text: object, what: str, minimum: float, maximum: float, *, integer: bool = False) -> list:
    """Comma- or space-separated numbers, each finite and in range, no repeats, at most MAX_VALUES."""
    text = check_text(what, text, 2000, single_line=False)
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    if not parts:
        raise SAEInputError(f"{what} is empty; give one or more numbers separated by commas")
    if len(parts) > MAX_VALUES:
        raise SAEInputError(f"{what}: {len(parts)} values; at most {MAX_VALUES} are allowed")
    values = []
    for part in parts:
        try:
            value = int(part) if integer else float(part)
        except ValueError:
            raise SAEInputError(f"{what}: {shown(part, 30)} is not {'an integer' if integer else 'a number'}") \
                from None
        values.append(check_number(what, value, minimum, maximum, integer=integer))
    if len(set(values)) != len(values):
        raise SAEInputError(f"{what}: a value is given twice")
    return values


def parse_percentiles(text: object) -> list[float]:
    values = parse_numbers(text, "percentiles", *PERCENTILE_RANGE)
    return [float(v) for v in values]


def parse_multipliers(text: object) -> list[float]:
    return [float(v) for v in parse_numbers(text, "multipliers", -MAX_MULTIPLIER, MAX_MULTIPLIER)]


def parse_seeds(text: object) -> list[int]:
    return parse_numbers(text, "seeds", 0, MAX_SEED, integer=True)


@dataclass(frozen=True)
class LabelledPrompt:
    prompt: str
    label: str | None = None        # the class it shows, of the unlearned concepts' kind (for UA / IRA)
    cross_label: str | None = None  # its class of the other kind (for CRA)


def parse_labelled_prompts(text: object, what: str = "prompts") -> list[LabelledPrompt]:
    """One prompt per line: ``prompt``, ``label | prompt`` or ``label | cross label | prompt``."""
    from ..prompts import MAX_PROMPT_CHARS

    text = check_text(what, text, 200_000)
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) > 3:
            raise SAEInputError(f"{what}: {shown(line)} has more than two '|'; write 'label | prompt' or "
                                f"'label | other-kind label | prompt'")
        prompt = parts[-1]
        labels = [p or None for p in parts[:-1]] + [None] * (3 - len(parts))
        if not prompt:
            raise SAEInputError(f"{what}: {shown(line)} has no prompt after its labels")
        if len(prompt) > MAX_PROMPT_CHARS or any(lab is not None and len(lab) > 120 for lab in labels):
            raise SAEInputError(f"{what}: a prompt or label is too long")
        out.append(LabelledPrompt(prompt, labels[0], labels[1]))
    if not out:
        raise SAEInputError(f"the {what} are empty; write one prompt per line, e.g. 'van gogh | A painting of a dog "
                            f"in Van Gogh style.'")
    return out


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Setting:
    percentile: float
    multiplier: float

    @property
    def label(self) -> str:
        return f"p {self.percentile:g}, m {self.multiplier:g}"


@dataclass(frozen=True)
class Sample:
    prompt: str
    seed: int
    label: str | None = None
    cross_label: str | None = None

    @property
    def title(self) -> str:
        tag = " / ".join(x for x in (self.label, self.cross_label) if x)
        return f"{self.prompt} (seed {self.seed})" + (f" [{tag}]" if tag else "")


@dataclass(frozen=True)
class Run:
    """The un-edited model (concept None, setting None) or one concept under one setting."""

    concept: int | None = None
    setting: Setting | None = None

    @property
    def is_base(self) -> bool:
        return self.concept is None


BASE = Run()


@dataclass
class SweepPlan:
    concepts: list[str]
    percentiles: list[float]
    multipliers: list[float]
    samples: list[Sample]

    def __post_init__(self):
        if not self.concepts:
            raise SAEInputError("the sweep has no concept")
        if not self.samples:
            raise SAEInputError("the sweep has no prompt")
        if len(self.samples) > MAX_SAMPLES:
            raise SAEInputError(f"{len(self.samples)} prompt x seed samples; at most {MAX_SAMPLES} per sweep")

    @classmethod
    def build(cls, concepts: list[str], percentiles: list[float], multipliers: list[float],
              prompts: list[LabelledPrompt], seeds: list[int]) -> SweepPlan:
        """Samples: every prompt with every seed (prompt-major)."""
        samples = [Sample(p.prompt, s, p.label, p.cross_label) for p in prompts for s in seeds]
        return cls(list(concepts), list(percentiles), list(multipliers), samples)

    @property
    def settings(self) -> list[Setting]:
        return [Setting(p, m) for p in self.percentiles for m in self.multipliers]

    def runs(self) -> Iterator[Run]:
        yield BASE
        for c in range(len(self.concepts)):
            for setting in self.settings:
                yield Run(c, setting)

    @property
    def n_runs(self) -> int:
        return 1 + len(self.concepts) * len(self.settings)

    @property
    def n_images(self) -> int:
        return self.n_runs * len(self.samples)

    def describe(self) -> str:
        return (f"{len(self.concepts)} concept(s) x {len(self.percentiles)} percentiles x {len(self.multipliers)} "
                f"multipliers + the un-edited model, {len(self.samples)} images each: {self.n_images} images")


def check_labels(plan: SweepPlan, class_names: Sequence[str] | None, cross_names: Sequence[str] | None) -> None:
    """Every concept and label must be a class of the classifier that scores it (names compared ignoring case
    and '_'), so that a typo does not silently score nothing."""
    def known(names: Sequence[str], value: str) -> bool:
        return canonical(value) in {canonical(n) for n in names}

    if class_names is not None:
        for concept in plan.concepts:
            if not known(class_names, concept):
                raise SAEInputError(f"concept '{concept}' is not one of the classifier's classes "
                                    f"({', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''}); "
                                    f"name the concept profile after its class")
        bad = next((s.label for s in plan.samples if s.label and not known(class_names, s.label)), None)
        if bad is not None:
            raise SAEInputError(f"prompt label '{bad}' is not one of the classifier's classes "
                                f"({', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''})")
    if cross_names is not None:
        bad = next((s.cross_label for s in plan.samples if s.cross_label and not known(cross_names, s.cross_label)),
                   None)
        if bad is not None:
            raise SAEInputError(f"prompt label '{bad}' (the second, other-kind label) is not one of the cross "
                                f"classifier's classes ({', '.join(cross_names[:12])})")


# ---------------------------------------------------------------------- the grid picture
@dataclass(frozen=True)
class GridLayout:
    """Where every image of the sweep goes: per (concept, sample) a panel of percentile rows x (un-edited +
    multiplier) columns. Geometry only, for drawing and for pixel tests."""

    plan: SweepPlan
    image_size: tuple[int, int]  # (height, width) of the generated images
    cell: int = 160

    GAP = 4
    LABEL_W = 96
    HEADER_H = 22
    COLUMN_H = 18
    TITLE_H = 30

    @property
    def thumb(self) -> tuple[int, int]:
        """(width, height) of one thumbnail: the longer side is ``cell``."""
        h, w = self.image_size
        if w >= h:
            return self.cell, max(1, round(self.cell * h / w))
        return max(1, round(self.cell * w / h)), self.cell

    @property
    def panel_height(self) -> int:
        return self.HEADER_H + self.COLUMN_H + len(self.plan.percentiles) * (self.thumb[1] + self.GAP) + self.GAP

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        tw, _ = self.thumb
        width = self.LABEL_W + (1 + len(self.plan.multipliers)) * (tw + self.GAP) + self.GAP
        height = self.TITLE_H + len(self.plan.concepts) * len(self.plan.samples) * self.panel_height
        return width, height

    def panel_top(self, concept: int, sample: int) -> int:
        return self.TITLE_H + (concept * len(self.plan.samples) + sample) * self.panel_height

    def box(self, concept: int, sample: int, setting: Setting | None) -> tuple[int, int, int, int]:
        """(left, top, width, height) of one image: the setting's cell, or the un-edited image (None)."""
        tw, th = self.thumb
        top = self.panel_top(concept, sample) + self.HEADER_H + self.COLUMN_H
        if setting is None:
            return self.LABEL_W, top, tw, th
        row = self.plan.percentiles.index(setting.percentile)
        col = 1 + self.plan.multipliers.index(setting.multiplier)
        return self.LABEL_W + col * (tw + self.GAP), top + row * (th + self.GAP), tw, th


class SweepGrid:
    """The grid picture, drawn batch by batch (thumbnails only)."""

    def __init__(self, layout: GridLayout, title: str = ""):
        width, height = layout.size
        if width * height > MAX_GRID_PIXELS:
            raise SAEInputError(f"the sweep's grid would be {width} x {height} pixels; make cell_size smaller or "
                                f"sweep fewer prompts, seeds or settings (at most {MAX_GRID_PIXELS // 1_000_000} "
                                f"megapixels)")
        self.layout = layout
        self.image = Image.new("RGB", (width, height), BACKGROUND)
        self._draw_labels(title)

    def _draw_labels(self, title: str) -> None:
        lay, plan = self.layout, self.layout.plan
        draw = ImageDraw.Draw(self.image)
        fnt, small = font(15), font(12)
        draw.text((8, 6), title or f"Unlearning sweep: {plan.describe()}", fill=INK, font=fnt)
        tw, _ = lay.thumb
        for c, concept in enumerate(plan.concepts):
            for s, sample in enumerate(plan.samples):
                top = lay.panel_top(c, s)
                draw.text((8, top + 3), f"'{concept}': {sample.title}"[:200], fill=INK, font=small)
                columns = ["un-edited"] + [f"m {m:g}" for m in plan.multipliers]
                for j, text in enumerate(columns):
                    draw.text((lay.LABEL_W + j * (tw + lay.GAP) + 2, top + lay.HEADER_H + 2), text, fill=INK,
                              font=small)
                for p in plan.percentiles:
                    _, y, _, th = lay.box(c, s, Setting(p, plan.multipliers[0]))
                    draw.text((8, y + th // 2 - 7), f"p {p:g}", fill=INK, font=small)

    def thumbnail(self, image: Tensor | np.ndarray) -> Image.Image:
        tw, th = self.layout.thumb
        picture = Image.fromarray(as_uint8_image(np.asarray(image.detach().cpu() if isinstance(image, Tensor)
                                                            else image)))
        return picture.resize((tw, th), Image.BILINEAR)

    def draw(self, run: Run, sample_indices: Sequence[int], images: Tensor) -> None:
        concepts = range(len(self.layout.plan.concepts)) if run.is_base else [run.concept]
        for i, image in zip(sample_indices, images):
            tile = self.thumbnail(image)
            for c in concepts:
                left, top, _, _ = self.layout.box(c, i, run.setting)
                self.image.paste(tile, (left, top))


# ---------------------------------------------------------------------- the loop
@dataclass
class RunRecord:
    """What is kept of one run: predictions (images x classes) and FID features, no images."""

    run: Run
    probabilities: np.ndarray | None = None
    cross_probabilities: np.ndarray | None = None
    features: FeatureSet | None = None

    def fill(self, n: int, k: int | None, k_cross: int | None) -> None:
        if k is not None:
            self.probabilities = np.full((n, k), np.nan)
        if k_cross is not None:
            self.cross_probabilities = np.full((n, k_cross), np.nan)


@dataclass
class SweepResult:
    plan: SweepPlan
    class_names: tuple[str, ...] | None
    cross_class_names: tuple[str, ...] | None
    records: dict[Run, RunRecord]
    fid: dict[Run, float] = field(default_factory=dict)
    feature_rows: list[dict] = field(default_factory=list)
    fid_source: str = ""

    def scores(self, run: Run, concept: str) -> UnlearningScores:
        """UA / IRA / CRA of ``concept`` from the images of ``run`` (the un-edited run gives the baseline)."""
        rec = self.records[run]
        truth = [s.label for s in self.plan.samples]
        accuracy = {}
        if rec.probabilities is not None:
            accuracy = per_class_accuracy(predicted_classes(rec.probabilities, self.class_names), truth)
        cross = None
        if rec.cross_probabilities is not None:
            cross = per_class_accuracy(predicted_classes(rec.cross_probabilities, self.cross_class_names),
                                       [s.cross_label for s in self.plan.samples])
        return unlearning_scores(concept, accuracy, cross, fid=self.fid.get(run), n_images=len(self.plan.samples))

    def table(self) -> list[tuple[str, Setting | None, UnlearningScores]]:
        """(concept, setting or None for the un-edited model, scores) for every concept and setting."""
        rows = []
        for c, concept in enumerate(self.plan.concepts):
            rows.append((concept, None, self.scores(BASE, concept)))
            for setting in self.plan.settings:
                rows.append((concept, setting, self.scores(Run(c, setting), concept)))
        return rows

    def best(self) -> list[tuple[str, Setting, UnlearningScores]]:
        """Per concept, the setting maximising (UA + IRA) / 2 (the first of equal ones)."""
        if self.class_names is None:
            raise SAEInputError("the sweep ran without a classifier, so there is nothing to score: connect a "
                                "classifier (SAE Classify (CLIP) or SAE Classifier Checkpoint) to the sweep")
        out = []
        for c, concept in enumerate(self.plan.concepts):
            setting, scores = best_setting([(s, self.scores(Run(c, s), concept)) for s in self.plan.settings])
            out.append((concept, setting, scores))
        return out


def run_sweep(plan: SweepPlan, generate: Callable[[Run, list[int]], Tensor], batches: Sequence[Sequence[int]], *,
              classifier: ImageClassifier | None = None, cross_classifier: ImageClassifier | None = None,
              fid_extractor: FeatureExtractor | None = None, grid: SweepGrid | None = None,
              progress: Callable[[int], None] | None = None, runs: Sequence[Run] | None = None) -> SweepResult:
    """Every run of the plan, batch by batch: generate, draw, classify, take FID features, drop the images."""
    order = sorted(i for b in batches for i in b)
    if order != list(range(len(plan.samples))):
        raise SAEInputError("the batches must hold every sample exactly once")
    names = tuple(classifier.class_names) if classifier is not None else None
    cross_names = tuple(cross_classifier.class_names) if cross_classifier is not None else None
    check_labels(plan, names, cross_names)
    records: dict[Run, RunRecord] = {}
    n = len(plan.samples)
    for run in (runs if runs is not None else plan.runs()):
        rec = records[run] = RunRecord(run, features=FeatureSet(fid_extractor) if fid_extractor else None)
        rec.fill(n, len(names) if names else None, len(cross_names) if cross_names else None)
        for batch in batches:
            batch = list(batch)
            images = generate(run, batch)
            if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] != len(batch):
                raise SAEInputError(f"a sweep batch of {len(batch)} prompts gave "
                                    f"{tuple(getattr(images, 'shape', ()))} images")
            if grid is not None:
                grid.draw(run, batch, images)
            if classifier is not None:
                rec.probabilities[batch] = classify(classifier, images).numpy()
            if cross_classifier is not None:
                rec.cross_probabilities[batch] = classify(cross_classifier, images).numpy()
            if rec.features is not None:
                rec.features.add(images)
            del images  # the grid holds its thumbnails; nothing else keeps the batch
            if progress is not None:
                progress(len(batch))
    result = SweepResult(plan, names, cross_names, records)
    if fid_extractor is not None and BASE in records:
        base = records[BASE].features.features
        for run, rec in records.items():
            if not run.is_base:
                result.fid[run] = frechet_distance(base, rec.features.features)
    return result


# ---------------------------------------------------------------------- what each setting suppresses
def feature_counts(selection) -> list[int]:
    """Features selected at each profile step (a :class:`sae_core.edits.unlearn.ConceptSelection`)."""
    return [int(step.features.numel()) for step in selection.steps]


def feature_row(concept: str, setting: Setting, selection, edited_positions: int | None = None) -> dict:
    distinct = {int(f) for step in selection.steps for f in step.features.tolist()}
    return {"concept": concept, "percentile": setting.percentile, "multiplier": setting.multiplier,
            "features_per_step": feature_counts(selection), "distinct_features": len(distinct),
            "edited_positions": edited_positions}


def feature_table(rows: Sequence[dict]) -> str:
    """A text table: per concept and setting, the features suppressed at each step (step 0 first), how many
    distinct features in all, and how many positions the edit changed while sampling the sweep."""
    if not rows:
        return "no setting"
    n_steps = max(len(r["features_per_step"]) for r in rows)
    return text_table(
        ("concept", "percentile", "multiplier", "distinct", "edited", f"features per step (steps 0-{n_steps - 1})"),
        [(r["concept"], f"{r['percentile']:g}", f"{r['multiplier']:g}", r["distinct_features"],
          "" if r["edited_positions"] is None else r["edited_positions"],
          " ".join(str(c) for c in r["features_per_step"])) for r in rows], align="lrrrrl")
