"""Prompt lists from text boxes and prompt files: one prompt per non-empty line, or a CSV column."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import SAEInputError

PROMPT_COLUMNS = ("prompt", "caption", "text")
MAX_PROMPT_FILE_BYTES = 64 << 20  # a prompt list of a million captions fits; anything larger is not a prompt file
MAX_PROMPT_CHARS = 10_000


def parse_prompts(text: str, what: str | None = None) -> list[str]:
    """One prompt per non-empty line (surrounding spaces dropped). With ``what`` (e.g. "target"), an empty list
    is an error naming the box."""
    if not isinstance(text, str):
        raise SAEInputError(f"prompts must be text, got {type(text).__name__}")
    if "\x00" in text:
        raise SAEInputError("the prompts contain a NUL byte; write plain text, one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    long = next((p for p in prompts if len(p) > MAX_PROMPT_CHARS), None)
    if long is not None:
        raise SAEInputError(f"a prompt has {len(long)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    if what is not None and not prompts:
        raise SAEInputError(f"the {what} prompts are empty; write one prompt per line")
    return prompts


def read_prompt_file(path: str | Path, shown_name: str | None = None) -> list[str]:
    """Prompts from a text file (one per line) or a CSV file (a prompt/caption/text column, or the first).

    ``shown_name`` is how errors name the file (the name the user gave, not the server's absolute path).
    """
    path = Path(path)
    name = shown_name or path.name
    if not path.is_file():
        raise SAEInputError(f"prompt file {name!r} does not exist; give a .txt (one prompt per line) or "
                            f".csv file (with a 'prompt', 'caption' or 'text' column)")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise SAEInputError(f"prompt file {name!r} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SAEInputError(f"prompt file {name!r} is not UTF-8 text; give a .txt or .csv file") from None
    if path.suffix.lower() != ".csv":
        return parse_prompts(text)
    if "\x00" in text:
        raise SAEInputError(f"prompt file {name!r} contains NUL bytes; give a .txt or .csv file")
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in PROMPT_COLUMNS if name in header), None)
    if column is None:
        column, body = 0, rows
    else:
        body = rows[1:]
    return parse_prompts("\n".join(row[column].strip().replace("\n", " ") for row in body if len(row) > column))
