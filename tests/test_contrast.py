"""Finding the features that separate target prompts from contrast prompts."""
from __future__ import annotations

import pytest
import torch

from sae_core import SAEInputError
from sae_core.observe.concept_profile import ConceptProfile
from sae_core.observe.contrast import contrast_chart, contrast_features, contrast_table, ids_text
from sae_core.render import PALETTE, pil_to_array


def profile(target, other) -> ConceptProfile:
    return ConceptProfile(torch.tensor(target), torch.tensor(other), 3, 3, tuple(float(s) for s in
                          range(len(target), 0, -1)), {"fingerprint": "x"}, "up_blocks.1.attentions.2", "winter")


def test_ranking_by_mean_difference_over_steps():
    # 6 features, 2 steps. Feature 4: +2 then +4 (mean +3); feature 1: +1 both steps; feature 2: fires on both sets
    # equally; feature 5: stronger on the other set.
    target = [[0.1, 1.5, 2.0, 0.0, 2.5, 0.0], [0.1, 1.5, 2.0, 0.0, 4.5, 0.0]]
    other = [[0.1, 0.5, 2.0, 0.0, 0.5, 1.0], [0.1, 0.5, 2.0, 0.0, 0.5, 3.0]]
    found = contrast_features(profile(target, other), top_n=10)
    assert [f.feature for f in found] == [4, 1]  # only features stronger on the target set
    assert found[0].difference == pytest.approx(3.0) and found[1].difference == pytest.approx(1.0)
    assert found[0].target == pytest.approx(3.5) and found[0].other == pytest.approx(0.5)
    assert ids_text(found) == "4, 1"
    assert [f.feature for f in contrast_features(profile(target, other), top_n=1)] == [4]
    other_side = contrast_features(profile(target, other), direction="other")
    assert [f.feature for f in other_side] == [5] and other_side[0].difference == pytest.approx(2.0)


def test_nothing_distinguishes_identical_sets():
    same = [[1.0, 2.0, 3.0]]
    found = contrast_features(profile(same, same))
    assert found == []
    assert "no feature fires more" in contrast_table(found, "t")


def test_table_and_chart():
    found = contrast_features(profile([[0.0, 4.0, 2.0]], [[0.0, 0.0, 1.0]]))
    table = contrast_table(found, "concept")
    assert table.splitlines()[2].split()[:3] == ["1", "1", "4.0000"]
    bars = (abs(pil_to_array(contrast_chart(found, "t")).astype(int) - PALETTE[0]) <= 10).all(-1)
    lengths = sorted({int(n) for n in bars.sum(1) if n > 0}, reverse=True)
    assert lengths[0] == pytest.approx(4 * lengths[-1], rel=0.1)  # differences 4 and 1


@pytest.mark.parametrize("kwargs, message", [({"direction": "up"}, "direction 'up' is not valid"),
                                             ({"top_n": 0}, "top_n must be at least 1")])
def test_bad_settings(kwargs, message):
    with pytest.raises(SAEInputError, match=message):
        contrast_features(profile([[1.0]], [[0.0]]), **kwargs)
