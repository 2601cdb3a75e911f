"""Checks for values that come from users (node widgets, HTTP requests, files, the command line).

Every input is attacker input on a shared ComfyUI server: a choice must be one that is offered, a number finite
and inside its documented range, a text short and free of NUL bytes, and a name must stay inside the folder it
names something in. Each check raises :class:`SAEInputError` saying what was given (shortened) and what would be
valid, and returns the clean value.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import SAEInputError

SHOWN_CHARS = 60  # a bad value is echoed at most this long
_SEGMENT = re.compile(r"^\w[\w .+()\[\]=,@-]*$")  # no %, $, ~, quotes, control characters


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, shortened so a 100,000-character input is not echoed back whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, (str, bytes)) else ""
    return text[: limit - 1] + "…" + size


def check_choice(name: str, value: object, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (ComfyUI 0.3.x does not check Combo values: a dropdown is no
    defence)."""
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise SAEInputError(f"{name} {shown(value)} is not valid; valid: {', '.join(options)}")
    return value


def check_number(name: str, value: object, minimum: float | None = None, maximum: float | None = None, *,
                 integer: bool = False) -> float | int:
    """A finite number in ``[minimum, maximum]`` (JSON lets NaN and huge values through ComfyUI's own range
    check); ``integer`` also refuses fractions. Booleans are not numbers here."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SAEInputError(f"{name} must be {kind}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SAEInputError(f"{name} must be a finite number, got {value}")
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise SAEInputError(f"{name} must be {kind}, got {value}")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f"{minimum:g}"
        high = "" if maximum is None else f"{maximum:g}"
        bounds = f"between {low} and {high}" if low and high else (f"at least {low}" if low else f"at most {high}")
        number = f"{value:g}" if abs(value) < 1e300 else shown(value, 20)
        raise SAEInputError(f"{name} {number} is out of range: it must be {bounds}")
    return value


def check_text(name: str, value: object, max_length: int, *, single_line: bool = False) -> str:
    """A string of at most ``max_length`` characters, without NUL bytes (nor line breaks when ``single_line``)."""
    if not isinstance(value, str):
        raise SAEInputError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > max_length:
        raise SAEInputError(f"{name} has {len(value)} characters; at most {max_length} are allowed")
    if "\x00" in value:
        raise SAEInputError(f"{name} contains a NUL byte; write plain text")
    if single_line and ("\n" in value or "\r" in value):
        raise SAEInputError(f"{name} must be a single line")
    return value


def relative_parts(name: object, what: str) -> list[str]:
    """The segments of a user-given relative name (``/`` or ``\\`` separated), refusing absolute paths, drive
    letters, ``..``, ``.``, empty segments, NUL bytes and over-long names before any file is touched."""
    text = check_text(what, name, 1024, single_line=True).strip()
    if not text:
        raise SAEInputError(f"{what} is empty; give a name inside its folder")
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\", "~")) or any(p in ("", ".", "..") or not _SEGMENT.match(p) for p in parts):
        raise SAEInputError(f"{what} {shown(text)} is not a valid file name: it must be a relative name inside its "
                            f"folder, made of letters, digits, spaces and . _ - + ( ) (no absolute paths, drive "
                            f"letters, '~', '..', '%' or empty parts)")
    return parts


def resolve_inside(root: str | Path, name: object, what: str, *, must_exist: bool = True) -> Path:
    """``root/name`` for a relative ``name`` whose real path (symlinks followed) stays inside ``root``'s."""
    parts = relative_parts(name, what)
    base = Path(os.path.realpath(root))
    candidate = Path(root).joinpath(*parts)
    real = Path(os.path.realpath(candidate))
    if real != base and not real.is_relative_to(base):
        raise SAEInputError(f"{what} {shown('/'.join(parts))} leads outside its folder (through a link); "
                            f"only names inside the folder can be used")
    if must_exist and not candidate.exists():
        raise SAEInputError(f"{what} {shown('/'.join(parts))} does not exist in its folder")
    return candidate


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path``'s real location is ``root`` or below it (used when listing folders)."""
    base = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    return real == base or real.is_relative_to(base)
