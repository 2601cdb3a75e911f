"""The feature atlas: each feature's top generations, statistics and labels, stored beside its SAE, built from
recordings or datasets, and served to the browser."""
