"""Transformer blocks as a patch sees them: block names and layouts, the per-call context (passes, steps), the
patch contract and the views that turn each architecture's block call into SAE positions and back."""
