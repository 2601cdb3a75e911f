"""The server owner's cap on sampling work: how it is read and what the refusal says."""
from __future__ import annotations

import pytest

from sae_core.budget import DEFAULT_MAX_WORK, ENV, Work, check_work, collection_work, max_work
from sae_core.errors import SAEInputError


def test_the_cap_comes_from_the_environment_with_a_default_and_no_cap_possible():
    assert max_work({}) == DEFAULT_MAX_WORK
    assert max_work({ENV: "  "}) == DEFAULT_MAX_WORK
    assert max_work({ENV: "5000"}) == 5000
    assert max_work({ENV: "2_000_000"}) == max_work({ENV: "2,000,000"}) == 2_000_000
    for no_cap in ("0", "none", "None", "off", "unlimited"):
        assert max_work({ENV: no_cap}) is None
    for typo in ("lots", "-5", "1.5", "1e6"):  # a typo must not lift the cap: refused, naming the variable
        with pytest.raises(SAEInputError, match=f"{ENV}=.* is not a whole number of image-steps"):
            max_work({ENV: typo})


def test_work_is_images_times_steps_and_the_refusal_names_both_numbers():
    work = Work(88, 20, "22 runs x 4 prompt-seed samples")
    assert work.total == 1760
    assert work.describe() == "22 runs x 4 prompt-seed samples = 88 images x 20 steps = 1,760 image-steps"
    assert check_work(work, 1760) is work  # the cap itself is allowed
    assert check_work(work, None) is work
    with pytest.raises(SAEInputError) as caught:
        check_work(work, 1759)
    text = str(caught.value)
    assert "88 images x 20 steps = 1,760 image-steps" in text and "cap of 1,759 image-steps" in text
    assert f"raise {ENV}" in text
    assert Work(1, 1).describe() == "1 image x 1 step = 1 image-step"


def test_collection_rows_are_bounded_by_the_latent_grid_or_the_positions_kept():
    every = collection_work(10, 2, blocks=3, passes=2, positions_per_image=0, latent_positions=64)
    assert (every.total, every.rows) == (20, 10 * 2 * 2 * 64 * 3)
    assert collection_work(10, 2, blocks=1, passes=1, positions_per_image=16, latent_positions=64).rows == 320
    assert collection_work(10, 2, blocks=1, passes=1, positions_per_image=1000, latent_positions=64).rows == 1280
    assert "10 prompts to collect = 10 images x 2 steps = 20 image-steps, at most 1,280 rows" == \
        collection_work(10, 2, blocks=1, passes=1, positions_per_image=0, latent_positions=64).describe()
