"""UnlearnCanvas scores of an unlearned concept, as SAeUron computes them (scripts/avg_accuracy_*.py).

For a concept c of one kind (a style or an object) unlearned from the model, and the images that model generates:

- ``accuracy[k]``: the fraction of the images made for class k (prompted with it) that the classifier of c's kind
  predicts as k (the class of highest probability; ties go to the first class, as ``argmax`` does).
- **UA** (unlearning accuracy) ``= 1 - accuracy[c]``: how often the concept is no longer recognised.
- **IRA** (in-domain retain accuracy) ``= mean over k != c of accuracy[k]``: the other concepts of the same kind
  survive. A mean of per-class accuracies, not of all images pooled: each class counts once.
- **CRA** (cross-domain retain accuracy) ``= mean over classes j of the other kind of cross_accuracy[j]``, from the
  classifier of the other kind (objects when styles are unlearned and vice versa).

Classes with no image in the set are left out of the means (the paper's sets have images of every class, where
this is exactly its rule). Averages over concepts are plain means of the per-concept scores.

The best setting of a concept is the (percentile, multiplier) maximising ``(UA + IRA) / 2``, the paper's rule for
objects (scripts/find_best_params_cls_sweep.py); among equal scores the first in the sweep's order wins, as the
reference's strict ``>`` does.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import SAEInputError


def canonical(name: str) -> str:
    """How class names are compared: case, underscores and repeated spaces do not matter (``Van_Gogh`` is
    ``van gogh``), as SAeUron's prompts write UnlearnCanvas's class names with spaces."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def predicted_classes(probabilities: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The class of highest probability per row (the first one on ties)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise SAEInputError(f"predictions must be (images, {len(class_names)}) probabilities, got shape "
                            f"{probabilities.shape}")
    return [class_names[i] for i in np.argmax(probabilities, axis=1)]


def per_class_accuracy(predicted: Sequence[str], truth: Sequence[str | None]) -> dict[str, float]:
    """``{class: fraction of the images of that true class predicted as it}`` over the images with a true class
    (``None`` = not scored); names compared with :func:`canonical`, keys as first written in ``truth``."""
    if len(predicted) != len(truth):
        raise SAEInputError(f"{len(predicted)} predictions for {len(truth)} labels")
    hits: dict[str, list[int]] = {}
    shown: dict[str, str] = {}
    for p, t in zip(predicted, truth):
        if t is None:
            continue
        key = canonical(t)
        shown.setdefault(key, t)
        hits.setdefault(key, []).append(int(canonical(p) == key))
    return {shown[k]: sum(v) / len(v) for k, v in hits.items()}


def _find(accuracy: Mapping[str, float], name: str) -> str | None:
    return next((k for k in accuracy if canonical(k) == canonical(name)), None)


@dataclass(frozen=True)
class UnlearningScores:
    """Scores of one concept under one setting, as fractions in [0, 1] (None where not measured)."""

    concept: str
    ua: float | None
    ira: float | None
    cra: float | None = None
    fid: float | None = None
    n_images: int = 0

    @property
    def selection_score(self) -> float | None:
        """(UA + IRA) / 2, what the best setting maximises."""
        if self.ua is None or self.ira is None:
            return None
        return (self.ua + self.ira) / 2

    def as_dict(self, percent: bool = True) -> dict:
        """JSON-ready; ``percent`` writes UA, IRA, CRA and (UA+IRA)/2 in percent, as the paper reports them."""
        scale = 100.0 if percent else 1.0
        out = asdict(self)
        for key in ("ua", "ira", "cra"):
            out[key] = None if out[key] is None else out[key] * scale
        out["ua_ira_mean"] = None if self.selection_score is None else self.selection_score * scale
        return out


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def unlearning_scores(concept: str, accuracy: Mapping[str, float],
                      cross_accuracy: Mapping[str, float] | None = None, *, fid: float | None = None,
                      n_images: int = 0) -> UnlearningScores:
    """UA, IRA (and CRA when the other kind was classified) of ``concept`` from per-class accuracies."""
    key = _find(accuracy, concept)
    ua = None if key is None else 1.0 - accuracy[key]
    ira = _mean(v for k, v in accuracy.items() if k != key)
    cra = None if not cross_accuracy else _mean(cross_accuracy.values())
    for name, value in (("UA", ua), ("IRA", ira), ("CRA", cra)):
        if value is not None and not (0.0 <= value <= 1.0 and math.isfinite(value)):
            raise SAEInputError(f"{name} {value} is not a fraction; accuracies must lie in [0, 1]")
    return UnlearningScores(concept, ua, ira, cra, fid, n_images)


def average_scores(scores: Sequence[UnlearningScores]) -> UnlearningScores:
    """The mean of each score over concepts (each over the concepts where it was measured)."""
    def avg(name: str) -> float | None:
        return _mean(getattr(s, name) for s in scores if getattr(s, name) is not None)

    return UnlearningScores("average", avg("ua"), avg("ira"), avg("cra"), avg("fid"),
                            sum(s.n_images for s in scores))


def best_setting(candidates: Sequence[tuple[Hashable, UnlearningScores]]) -> tuple[Hashable, UnlearningScores]:
    """The (setting, scores) pair maximising (UA + IRA) / 2; the first of equal ones (the sweep's order)."""
    best = None
    for setting, scores in candidates:
        value = scores.selection_score
        if value is None:
            continue
        if best is None or value > best[1].selection_score:
            best = (setting, scores)
    if best is None:
        raise SAEInputError("no setting has both UA and IRA: the images need prompts of the unlearned concept "
                            "(for UA) and of at least one other class of the same kind (for IRA), each labelled "
                            "with its class")
    return best
