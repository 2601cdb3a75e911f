"""Sequential unlearning (SAeUron, section 7.1): concepts removed one after another, scored after each step.

After step i the model has the first i concepts of ``order`` unlearned together. From that step's per-class
accuracies (:func:`sae_core.evaluate.metrics.per_class_accuracy`):

- **UA** ``= mean over the removed concepts r of (1 - accuracy[r])``: every concept removed so far stays removed;
- **IRA** ``= mean over the classes k not removed yet of accuracy[k]``: what is still in the model survives;
- **CRA** ``= mean of the other kind's per-class accuracies``, as for one concept.

Classes with no image at a step are left out of its means (as :mod:`.metrics` does), so a step where every
scored class is removed has no IRA.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import SAEInputError
from .metrics import UnlearningScores, _mean, canonical

MAX_STEPS = 64


def check_order(order: Sequence[str], what: str = "concepts") -> list[str]:
    """The concepts in removal order: at least one, at most :data:`MAX_STEPS`, no name twice."""
    names = [str(c).strip() for c in order if str(c).strip()]
    if not names:
        raise SAEInputError(f"{what} is empty: give the concepts to remove, in order, e.g. 'Van_Gogh, Monet'")
    if len(names) > MAX_STEPS:
        raise SAEInputError(f"{what} names {len(names)} concepts; at most {MAX_STEPS}")
    seen: set[str] = set()
    for name in names:
        if canonical(name) in seen:
            raise SAEInputError(f"{what} names '{name}' twice; each concept is removed once")
        seen.add(canonical(name))
    return names


@dataclass(frozen=True)
class SequentialStep:
    """The scores after removing ``removed`` (in order); ``concept`` is the one removed at this step."""

    step: int
    removed: tuple[str, ...]
    scores: UnlearningScores

    @property
    def concept(self) -> str:
        return self.removed[-1]

    def as_dict(self) -> dict:
        return {"step": self.step, "removed": list(self.removed), **self.scores.as_dict()}


def step_scores(removed: Sequence[str], accuracy: Mapping[str, float],
                cross_accuracy: Mapping[str, float] | None = None, *, n_images: int = 0) -> UnlearningScores:
    """UA over every removed concept, IRA over the classes not removed, CRA over the other kind."""
    gone = {canonical(c) for c in removed}
    ua = _mean(1.0 - v for k, v in accuracy.items() if canonical(k) in gone)
    ira = _mean(v for k, v in accuracy.items() if canonical(k) not in gone)
    for name, value in (*accuracy.items(), *(cross_accuracy or {}).items()):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise SAEInputError(f"the accuracy of '{name}' is {value!r}; accuracies are fractions in [0, 1]")
    cra = None if not cross_accuracy else _mean(cross_accuracy.values())
    label = " + ".join(removed) if len(removed) <= 3 else f"{removed[0]} + ... + {removed[-1]} ({len(removed)})"
    return UnlearningScores(label, ua, ira, cra, None, n_images)


def sequential_scores(order: Sequence[str], accuracies: Sequence[Mapping[str, float]],
                      cross_accuracies: Sequence[Mapping[str, float] | None] | None = None,
                      n_images: Sequence[int] | None = None) -> list[SequentialStep]:
    """One :class:`SequentialStep` per concept of ``order``; ``accuracies[i]`` are the per-class accuracies of the
    model with ``order[:i + 1]`` removed."""
    order = check_order(order)
    if len(accuracies) != len(order):
        raise SAEInputError(f"{len(order)} concepts to remove but {len(accuracies)} steps of accuracies")
    crosses = list(cross_accuracies) if cross_accuracies is not None else [None] * len(order)
    counts = list(n_images) if n_images is not None else [0] * len(order)
    return [SequentialStep(i + 1, tuple(order[:i + 1]),
                           step_scores(order[:i + 1], accuracies[i], crosses[i], n_images=counts[i]))
            for i in range(len(order))]


def step_rows(steps: Sequence[SequentialStep]) -> list[dict]:
    """Rows of the score table (:mod:`.report`'s columns): one per step, the setting column names the step."""
    from .report import score_row

    return [score_row(s.concept, f"step {s.step}: {len(s.removed)} removed", s.scores) for s in steps]


def chart_groups(steps: Sequence[SequentialStep]) -> list[tuple[str, UnlearningScores]]:
    """One bar group per step, labelled by the concept removed there."""
    return [(f"{s.step}. {s.concept}", s.scores) for s in steps]


def steps_of_sweep(result, setting) -> list[SequentialStep]:
    """The sequential scores of a :class:`sae_core.evaluate.sweep.SweepResult` whose run ``Run(i, setting)`` had
    the plan's concepts ``0..i`` removed together (the SAE Sequential Unlearning node's runs)."""
    from .metrics import per_class_accuracy, predicted_classes
    from .sweep import Run

    if result.class_names is None:
        raise SAEInputError("sequential unlearning is scored by a classifier: connect one")
    plan = result.plan
    accuracies, crosses = [], []
    for i in range(len(plan.concepts)):
        rec = result.records[Run(i, setting)]
        accuracies.append(per_class_accuracy(predicted_classes(rec.probabilities, result.class_names),
                                             [s.label for s in plan.samples]))
        crosses.append(None if rec.cross_probabilities is None else per_class_accuracy(
            predicted_classes(rec.cross_probabilities, result.cross_class_names),
            [s.cross_label for s in plan.samples]))
    return sequential_scores(plan.concepts, accuracies, crosses, [len(plan.samples)] * len(plan.concepts))
