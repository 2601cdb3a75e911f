"""Feature ids as users type them: ``"4998"``, ``"4998:10, 2301:-5"`` (an id and its own strength)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SAEInputError
from ..validate import check_number, check_text, shown

MAX_FEATURE_TEXT = 20_000
_TOKEN = re.compile(r"^(\d+)\s*(?::\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?$")


@dataclass(frozen=True)
class FeatureEdit:
    feature: int
    strength: float


def parse_feature_list(text: str, n_latents: int, default_strength: float,
                       max_strength: float | None = None) -> list[FeatureEdit]:
    """``"4998"`` or ``"4998:10, 2301:-5"`` (commas, semicolons or new lines) -> edits.

    A feature without ``:strength`` takes ``default_strength``; every strength must be finite and, with
    ``max_strength``, within +-max_strength.
    """
    text = check_text("features", text or "", MAX_FEATURE_TEXT)
    tokens = [t.strip() for t in re.split(r"[,;\n]", text) if t.strip()]
    if not tokens:
        raise SAEInputError("no features given; write feature ids such as '4998' or '4998:10, 2301:-5'")
    edits: list[FeatureEdit] = []
    seen: set[int] = set()
    for token in tokens:
        m = _TOKEN.match(token)
        if not m:
            raise SAEInputError(f"{shown(token)} is not a feature id or id:strength "
                                f"(write e.g. '4998' or '4998:10, 2301:-5')")
        digits = m.group(1)
        feature = int(digits) if len(digits) <= 12 else n_latents  # huge ids: past every SAE, never int()-ed
        if feature >= n_latents:
            label = digits if len(digits) <= 20 else f"{digits[:12]}… ({len(digits)} digits)"
            raise SAEInputError(f"feature {label} does not exist: this SAE has {n_latents} features "
                                f"(ids 0..{n_latents - 1})")
        if feature in seen:
            raise SAEInputError(f"feature {feature} is listed twice")
        seen.add(feature)
        strength = float(m.group(2)) if m.group(2) is not None else float(default_strength)
        bound = None if max_strength is None else -max_strength
        check_number(f"the strength of feature {feature}", strength, bound, max_strength)
        edits.append(FeatureEdit(feature, strength))
    return edits
