"""Fixtures shared by every test module (the helper modules beside it are importable by name: pyproject.toml's
pytest ``pythonpath``)."""
