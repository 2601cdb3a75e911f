"""Measuring unlearning as SAeUron does (papers.md section 4.8): classifier predictions -> UA / IRA / CRA per
concept and averaged, the best (percentile, multiplier) per concept, FID against the un-edited model's images,
the settings sweep (plan, feature table, labelled grid) and the paper's folder protocol.

- :mod:`.metrics`: the scores and the best-setting rule (pure numbers).
- :mod:`.classifiers`: the classifier interface (image batch -> class probabilities over named classes) and the
  checkpoint classifier (a ViT state dict, read without running pickled code).
- :mod:`.fid`: FID through torch-fidelity (an optional dependency, imported when FID is asked for).
- :mod:`.sweep`: the grid of settings, what each suppresses per step, and the streaming labelled grid image.
- :mod:`.protocol`: image names as SAeUron's scripts write them, and the paper's evaluation of such folders.
"""
