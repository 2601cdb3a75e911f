"""Seeing what an SAE sees: recordings of sparse codes during sampling, their analysis (top features, maps,
timelines), pictures of them, and concept profiles (feature statistics of prompt sets)."""
