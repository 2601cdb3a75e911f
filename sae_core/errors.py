"""Exceptions with messages a user can act on: what, where, what was found, what would be valid."""
from __future__ import annotations

from pathlib import Path


class SAEError(Exception):
    """Base class of every error this package raises on purpose."""


class SAEFormatError(SAEError):
    """A checkpoint could not be read: names the path, what was found and what was expected."""

    def __init__(self, path: str | Path, problem: str, *, found: str | None = None, expected: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.found = found
        self.expected = expected
        parts = [f"{self.path}: {problem}"]
        if found is not None:
            parts.append(f"found {found}")
        if expected is not None:
            parts.append(f"expected {expected}")
        super().__init__("; ".join(parts))


class SAEHubError(SAEError):
    """A hub download failed and nothing usable is cached."""


class SAEInputError(SAEError, ValueError):
    """A user-supplied value (feature list, block name, strength...) is invalid."""
