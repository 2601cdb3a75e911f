"""Find the features that tell two sets of prompts apart, from a concept profile.

For steering, what matters is how much more a feature fires for the target prompts than for the
contrast prompts, in activation units: ``difference = mean over steps of (m_target - m_other)``
(position-averaged). Ranking by it finds the features to add for a "concept slider" driven by words;
``direction="other"`` finds the features of the contrast set instead. The SAeUron score (share of each
group's total activation) is reported alongside as a specificity measure.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..errors import SAEInputError
from ..render import bar_chart
from ..tables import text_table
from ..validate import check_choice
from .concept_profile import ConceptProfile, feature_scores

DIRECTIONS = ("target", "other")


@dataclass(frozen=True)
class ContrastFeature:
    feature: int
    difference: float  # mean over steps of (target mean - other mean) in the chosen direction
    target: float      # mean activation over the target prompts (position- and step-averaged)
    other: float
    specificity: float  # mean over steps of the SAeUron score (normalised share difference)


def contrast_features(profile: ConceptProfile, top_n: int = 10, direction: str = "target") -> list[ContrastFeature]:
    """The ``top_n`` features most stronger in ``direction``'s prompts than in the other set (difference > 0)."""
    check_choice("direction", direction, DIRECTIONS)
    if top_n < 1:
        raise SAEInputError(f"top_n must be at least 1, got {top_n}")
    target, other = profile.target_mean.double(), profile.other_mean.double()
    sign = 1.0 if direction == "target" else -1.0
    difference = sign * (target - other).mean(0)
    specificity = sign * feature_scores(profile.target_mean, profile.other_mean).double().mean(0)
    order = difference.argsort(descending=True)[:top_n]
    return [ContrastFeature(int(f), float(difference[f]), float(target[:, f].mean()), float(other[:, f].mean()),
                            float(specificity[f]))
            for f in order.tolist() if difference[f] > 0]


def ids_text(features: list[ContrastFeature]) -> str:
    """Ready to paste into SAE Feature Steer's features input."""
    return ", ".join(str(f.feature) for f in features)


def contrast_table(features: list[ContrastFeature], title: str) -> str:
    return text_table(("rank", "feature", "difference", "target", "other", "specificity"),
                      [(rank, f.feature, f"{f.difference:.4f}", f"{f.target:.4f}", f"{f.other:.4f}",
                        f"{f.specificity:.2e}") for rank, f in enumerate(features, 1)],
                      title=title, empty="(no feature fires more for this set than for the other)")


def contrast_chart(features: list[ContrastFeature], title: str) -> Image.Image:
    return bar_chart([f"#{f.feature}" for f in features] or ["none"], [f.difference for f in features] or [0.0],
                     title=title)
