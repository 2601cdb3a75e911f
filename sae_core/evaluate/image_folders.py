"""The paper's evaluation of folders of generated images (UnlearnCanvas, as SAeUron's scripts run it).

Image names, as SAeUron's sampling scripts write them (scripts/sample_unlearning_*.py, sweep_cls_distr.py):
``<style>_<object>_seed<seed>.jpg`` (an object in a style), ``<object>_seed<seed>.jpg`` (the object alone) and
``<object>_seed<seed>_<i>.jpg`` (the object sweep). Styles may contain ``_`` (``Van_Gogh``); objects are the last
part (``Dogs``), or, when the object classes are known, the longest class name that ends the name.

What is classified (scripts/accuracy_unlearncanvas_fast.py and _cls_fast.py):

- a **style** unlearned: the style classifier on the styled images (UA, IRA); the object classifier on the
  objects-alone images (CRA), or on the styled images when a folder has no object alone;
- an **object** unlearned: the object classifier on the styled and the objects-alone images together (UA, IRA);
  the style classifier on the styled images (CRA).

FID (scripts/fid_unlearncanvas.py, here against the un-edited model's images rather than UnlearnCanvas's real
ones): the styled images against the reference folder's images of the same names, leaving out those of the
unlearned concept.

Folder layouts: the images directly in one folder (one concept); one sub-folder per unlearned concept
(``<concept>/``, SAeUron's ``output_dir/<theme>``); or a sweep, ``percentile_<p>_multiplier_<m>/<concept>/`` (SAeUron's
sweep output), where the best setting per concept is chosen by (UA + IRA) / 2.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import SAEInputError
from .classifiers import ImageClassifier, classify
from .fid import FeatureExtractor, FeatureSet, frechet_distance
from .metrics import (
    UnlearningScores,
    average_scores,
    best_setting,
    canonical,
    per_class_accuracy,
    predicted_classes,
    unlearning_scores,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
KINDS = ("style", "object")
_NAME = re.compile(r"^(?P<stem>.+?)_seed(?P<seed>\d+)(?:_(?P<index>\d+))?$")
_SETTING = re.compile(r"^percentile_(?P<p>[-+0-9.eE]+)_multiplier_(?P<m>[-+0-9.eE]+)$")
MAX_IMAGES = 1_000_000


@dataclass(frozen=True)
class ImageName:
    path: Path
    style: str | None
    object: str
    seed: int
    index: int | None = None

    @property
    def key(self) -> str:
        return self.path.name


def parse_name(path: str | Path, objects: Sequence[str] | None = None) -> ImageName | None:
    """The style, object and seed an image name says, or None for a name of another form."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    m = _NAME.match(path.stem)
    if m is None:
        return None
    stem, seed, index = m["stem"], int(m["seed"]), None if m["index"] is None else int(m["index"])
    if objects:
        for obj in sorted(objects, key=len, reverse=True):
            if canonical(stem) == canonical(obj):
                return ImageName(path, None, stem, seed, index)
            tail = len(obj) + 1
            if len(stem) > tail and stem[-tail] == "_" and canonical(stem[-tail + 1:]) == canonical(obj):
                return ImageName(path, stem[:-tail], stem[-tail + 1:], seed, index)
        return None
    style, _, obj = stem.rpartition("_")
    return ImageName(path, style or None, obj, seed, index)


def list_images(folder: str | Path, objects: Sequence[str] | None = None) -> tuple[list[ImageName], int]:
    """The images of ``folder`` (not its sub-folders) named as SAeUron names them, by name; and how many files
    had another name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SAEInputError(f"{folder} is not a folder")
    found, other = [], 0
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        name = parse_name(path, objects)
        if name is None:
            other += 1
        else:
            found.append(name)
        if len(found) > MAX_IMAGES:
            raise SAEInputError(f"{folder} holds more than {MAX_IMAGES} images")
    return found, other


def load_image(path: Path) -> torch.Tensor:
    """(H, W, 3) float in [0, 1]."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SAEInputError(f"{path} is not a readable image ({type(exc).__name__})") from None
    return torch.from_numpy(array)


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _by_size(paths: Sequence[Path]):
    """Loaded images grouped by size (a batch holds one size): [(indices, (B, H, W, 3))]."""
    groups: dict[tuple, list] = {}
    for i, path in enumerate(paths):
        image = load_image(path)
        groups.setdefault(tuple(image.shape), []).append((i, image))
    return [([i for i, _ in g], torch.stack([im for _, im in g])) for g in groups.values()]


@dataclass
class ConceptEvaluation:
    """The scores of one folder (one concept unlearned under one setting) and what they were computed from."""

    concept: str
    kind: str
    scores: UnlearningScores
    accuracy: dict[str, float] = field(default_factory=dict)
    cross_accuracy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"concept": self.concept, "kind": self.kind, **self.scores.as_dict(),
                "accuracy_percent": {k: v * 100 for k, v in self.accuracy.items()},
                "cross_accuracy_percent": {k: v * 100 for k, v in self.cross_accuracy.items()},
                "counts": self.counts}


def _known(names: Sequence[str], value: str | None) -> bool:
    return value is not None and canonical(value) in {canonical(n) for n in names}


def evaluate_folder(folder: str | Path, concept: str, kind: str, classifiers: dict[str, ImageClassifier], *,
                    batch_size: int = 32, reference: str | Path | None = None,
                    fid_extractor: FeatureExtractor | None = None,
                    progress: Callable[[int], None] | None = None) -> ConceptEvaluation:
    """UA, IRA, CRA (and FID) of ``concept`` (of ``kind``) from the images in ``folder``.

    ``classifiers`` maps ``"style"`` / ``"object"`` to a classifier; the one of ``kind`` is required, the other
    gives CRA.
    """
    if kind not in KINDS:
        raise SAEInputError(f"kind {kind!r} is not valid; valid: {', '.join(KINDS)}")
    other = KINDS[1 - KINDS.index(kind)]
    same = classifiers.get(kind)
    if same is None:
        raise SAEInputError(f"unlearning a {kind} is scored by a {kind} classifier; give one")
    cross = classifiers.get(other)
    objects = (classifiers["object"].class_names if "object" in classifiers else None)
    images, skipped = list_images(folder, objects)
    styled = [n for n in images if n.style is not None]
    alone = [n for n in images if n.style is None]
    if not images:
        raise SAEInputError(f"{folder} holds no image named <style>_<object>_seed<seed>.jpg or "
                            f"<object>_seed<seed>.jpg")
    # which images each classifier sees, and the true label of each (SAeUron's scripts)
    if kind == "style":
        tasks = {"same": (styled, "style"), "cross": (alone or styled, "object")}
    else:
        tasks = {"same": (styled + alone, "object"), "cross": (styled, "style")}
    plan: dict[Path, dict[str, str]] = {}
    classifier_of = {"same": same, "cross": cross}
    unscored = {"same": 0, "cross": 0}
    for task, (names, attribute) in tasks.items():
        clf = classifier_of[task]
        if clf is None:
            continue
        for n in names:
            label = getattr(n, attribute)
            if _known(clf.class_names, label):
                plan.setdefault(n.path, {})[task] = label
            else:
                unscored[task] += 1
    if not any("same" in v for v in plan.values()):
        raise SAEInputError(f"no image in {folder} shows a class of the {kind} classifier "
                            f"({', '.join(same.class_names[:8])}, ...)")
    paths = list(plan)
    predictions = {"same": ([], []), "cross": ([], [])}
    features = FeatureSet(fid_extractor) if fid_extractor is not None and reference is not None else None
    for chunk in _batches(paths, batch_size):
        for indices, batch in _by_size(chunk):
            for task in ("same", "cross"):
                rows = [j for j, i in enumerate(indices) if task in plan[chunk[i]]]
                if not rows:
                    continue
                clf = classifier_of[task]
                probs = classify(clf, batch[rows]).numpy()
                predictions[task][0].extend(predicted_classes(probs, clf.class_names))
                predictions[task][1].extend(plan[chunk[indices[j]]][task] for j in rows)
        if progress is not None:
            progress(len(chunk))
    accuracy = per_class_accuracy(*predictions["same"])
    cross_accuracy = per_class_accuracy(*predictions["cross"]) if cross is not None else {}
    fid = None
    counts = {"images": len(images), "other_files": skipped, "styled": len(styled), "objects_alone": len(alone),
              f"not_a_{kind}_class": unscored["same"], f"not_a_{other}_class": unscored["cross"]}
    if features is not None:
        fid, n_fid = _fid(folder, reference, styled, concept, kind, fid_extractor, batch_size)
        counts["fid_images"] = n_fid
    scores = unlearning_scores(concept, accuracy, cross_accuracy or None, fid=fid, n_images=len(paths))
    return ConceptEvaluation(concept, kind, scores, accuracy, cross_accuracy, counts)


def _fid(folder, reference, styled: list[ImageName], concept: str, kind: str, extractor: FeatureExtractor,
         batch_size: int) -> tuple[float, int]:
    reference = Path(reference)
    if not reference.is_dir():
        raise SAEInputError(f"the FID reference {reference} is not a folder")
    keep = [n for n in styled if canonical(n.style if kind == "style" else n.object) != canonical(concept)
            and (reference / n.path.name).is_file()]
    if len(keep) < 2:
        raise SAEInputError(f"FID needs at least 2 styled images (other than '{concept}') present under the same "
                            f"names in {folder} and in the reference {reference}; found {len(keep)}")
    sets = {"generated": FeatureSet(extractor), "reference": FeatureSet(extractor)}
    for chunk in _batches(keep, batch_size):
        for which, root in (("generated", None), ("reference", reference)):
            paths = [n.path if root is None else root / n.path.name for n in chunk]
            for _, batch in _by_size(paths):
                sets[which].add(batch)
    return frechet_distance(sets["reference"].features, sets["generated"].features), len(keep)


# ---------------------------------------------------------------------- folders of folders
def parse_setting_folder(name: str) -> tuple[float, float] | None:
    """``percentile_99.99_multiplier_-5.0`` -> (99.99, -5.0)."""
    m = _SETTING.match(name)
    if m is None:
        return None
    try:
        return float(m["p"]), float(m["m"])
    except ValueError:
        return None


@dataclass
class ProtocolResult:
    kind: str
    evaluations: dict[tuple[str, tuple[float, float] | None], ConceptEvaluation]
    best: dict[str, tuple[tuple[float, float] | None, UnlearningScores]]

    @property
    def average(self) -> UnlearningScores:
        return average_scores([scores for _, scores in self.best.values()])

    def as_dict(self) -> dict:
        def setting(s):
            return None if s is None else {"percentile": s[0], "multiplier": s[1]}

        return {
            "kind": self.kind, "units": "percent (UA, IRA, CRA, ua_ira_mean); FID as computed",
            "selection_rule": "per concept, the setting maximising (UA + IRA) / 2; the first of equal ones",
            "evaluations": [{"setting": setting(s), **e.as_dict()} for (c, s), e in self.evaluations.items()],
            "best": {c: {"setting": setting(s), **scores.as_dict()} for c, (s, scores) in self.best.items()},
            "average": self.average.as_dict(),
        }


def discover(folder: str | Path, concept: str | None = None) -> list[tuple[str, tuple[float, float] | None, Path]]:
    """(concept, setting or None, folder) to evaluate, from one of the three layouts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SAEInputError(f"{folder} is not a folder")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    sweeps = [(parse_setting_folder(p.name), p) for p in subdirs if parse_setting_folder(p.name)]
    found = []
    if sweeps:
        for setting, path in sweeps:
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                if concept is None or canonical(sub.name) == canonical(concept):
                    found.append((sub.name, setting, sub))
    elif concept is not None:
        match = next((p for p in subdirs if canonical(p.name) == canonical(concept)), None)
        found.append((concept, None, match or folder))
    else:
        found = [(p.name, None, p) for p in subdirs]
    if not found:
        raise SAEInputError(f"{folder} holds no images to evaluate: give --concept NAME for a folder of images, or a "
                            f"folder with one sub-folder per unlearned concept, or percentile_P_multiplier_M/"
                            f"<concept>/ sub-folders (a sweep)")
    return found


def evaluate_protocol(folder: str | Path, kind: str, classifiers: dict[str, ImageClassifier], *,
                      concept: str | None = None, batch_size: int = 32, reference: str | Path | None = None,
                      fid_extractor: FeatureExtractor | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> ProtocolResult:
    """Every concept (and setting) found in ``folder``; the best setting per concept by (UA + IRA) / 2."""
    jobs = discover(folder, concept)
    evaluations = {}
    for i, (name, setting, path) in enumerate(jobs):
        if progress is not None:
            progress(f"{name}" + ("" if setting is None else f" (percentile {setting[0]:g}, multiplier "
                                                            f"{setting[1]:g})"), i, len(jobs))
        ref = None if reference is None else (Path(reference) / name if (Path(reference) / name).is_dir()
                                              else Path(reference))
        evaluations[(name, setting)] = evaluate_folder(path, name, kind, classifiers, batch_size=batch_size,
                                                       reference=ref, fid_extractor=fid_extractor)
    best = {}
    for name in dict.fromkeys(c for c, _ in evaluations):
        candidates = [(s, e.scores) for (c, s), e in evaluations.items() if c == name]
        best[name] = best_setting(candidates) if len(candidates) > 1 else candidates[0]
    return ProtocolResult(kind, evaluations, best)
