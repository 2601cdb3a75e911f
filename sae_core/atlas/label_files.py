"""Label set files, in and out: the JSON list public label sets use and the CSV users write by hand.

- JSON: a list of ``{"id": 0, "label": "office organization supplies", "category": "object",
  "confidence": "high", "meanActivation": 19.95}`` (only ``id`` and ``label`` required; other keys ignored), or an
  object ``{"id": "label"}`` (an atlas's own labels.json).
- CSV: ``id,label[,category,confidence]``, with or without that header row.

A file is untrusted input: it is refused as a whole, with the row at fault, when it is too large, is not UTF-8, is
malformed, names a feature the SAE does not have, names one twice or holds a label that would not be stored. A
row with an empty label is skipped (it labels nothing).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import SAEInputError
from ..validate import shown
from .labels import (
    ImportedLabel,
    ShownLabel,
    validate_category,
    validate_confidence,
    validate_label,
    validate_mean_activation,
)

MAX_LABEL_FILE_BYTES = 8 << 20  # a label for each of 20,480 features is ~3 MB
LABEL_FILE_SUFFIXES = (".json", ".csv")
CSV_COLUMNS = ("id", "label", "category", "confidence")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _feature(value: object, n_latents: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 4000:  # int() refuses longer
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise SAEInputError(f"{where}: id {shown(value)} is not a feature number")
    if not 0 <= value < n_latents:
        raise SAEInputError(f"{where}: id {shown(value, 24)} exceeds the SAE's {n_latents} features "
                            f"(ids 0..{n_latents - 1})")
    return value


def _row(fields: dict, n_latents: int, where: str, source: str) -> tuple[int, ImportedLabel]:
    feature = _feature(fields.get("id"), n_latents, where)
    try:
        label = ImportedLabel(validate_label(fields.get("label", "")), validate_category(fields.get("category")),
                              validate_confidence(fields.get("confidence")),
                              validate_mean_activation(fields.get("meanActivation")), source)
    except SAEInputError as exc:
        raise SAEInputError(f"{where} (feature {feature}): {exc}") from None
    return feature, label


def _collect(rows, n_latents: int, name: str, source: str) -> dict[int, ImportedLabel]:
    found: dict[int, ImportedLabel] = {}
    first_seen: dict[int, str] = {}
    for where, fields in rows:
        feature, label = _row(fields, n_latents, f"{name} {where}", source)
        if feature in first_seen:
            raise SAEInputError(f"{name} {where}: feature {feature} is labelled twice (first at "
                                f"{first_seen[feature]}); keep one label per feature")
        first_seen[feature] = where
        if label.text:
            found[feature] = label
    return found


def parse_json_labels(text: str, n_latents: int, name: str, source: str) -> dict[int, ImportedLabel]:
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise SAEInputError(f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise SAEInputError(f"{name} is not valid JSON ({str(exc)[:80]})") from None
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return _collect(((f"key {shown(k, 20)}", {"id": k, "label": v}) for k, v in data.items()), n_latents, name,
                        source)
    if not isinstance(data, list):
        raise SAEInputError(f"{name} must hold a JSON list of {{\"id\": ..., \"label\": ...}} objects (or an "
                            f"object {{\"id\": \"label\"}}), not a {type(data).__name__}")
    bad = next((i for i, item in enumerate(data) if not isinstance(item, dict)), None)
    if bad is not None:
        raise SAEInputError(f"{name} item {bad}: must be an object {{\"id\": ..., \"label\": ...}}, got "
                            f"{shown(data[bad], 40)}")
    return _collect(((f"item {i}", item) for i, item in enumerate(data)), n_latents, name, source)


def parse_csv_labels(text: str, n_latents: int, name: str, source: str) -> dict[int, ImportedLabel]:
    if "\x00" in text:
        raise SAEInputError(f"{name} contains NUL bytes; give a UTF-8 CSV file")
    try:
        lines = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise SAEInputError(f"{name} is not valid CSV ({exc})") from None
    if lines and lines[0][1][0].strip().lower() == "id":  # a header row names the columns
        header = [cell.strip().lower() for cell in lines[0][1]]
        if header[:2] != ["id", "label"] or not set(header) <= set(CSV_COLUMNS):
            raise SAEInputError(f"{name} line {lines[0][0]}: the header must be {','.join(CSV_COLUMNS)} (the last "
                                f"two optional), got {shown(','.join(header), 60)}")
        columns, lines = header, lines[1:]
    else:
        columns = list(CSV_COLUMNS)
    rows = []
    for number, cells in lines:
        if len(cells) > len(columns):
            raise SAEInputError(f"{name} line {number}: {len(cells)} columns, at most {len(columns)} "
                                f"({','.join(columns)}); quote labels that contain commas")
        rows.append((f"line {number}", dict(zip(columns, cells))))
    return _collect(rows, n_latents, name, source)


def read_label_file(path: str | Path, n_latents: int, *, name: str | None = None,
                    source: str | None = None) -> dict[int, ImportedLabel]:
    """The labels of a .json or .csv file (chosen by suffix). ``name`` is how errors name the file (never the
    server's absolute path); ``source`` is what the labels remember as their origin."""
    path = Path(path)
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix not in LABEL_FILE_SUFFIXES:
        raise SAEInputError(f"labels file {shown(name)} must be a .json or .csv file")
    if not path.is_file():
        raise SAEInputError(f"labels file {shown(name)} does not exist")
    size = path.stat().st_size
    if size > MAX_LABEL_FILE_BYTES:
        raise SAEInputError(f"labels file {shown(name)} has {size} bytes; at most {MAX_LABEL_FILE_BYTES >> 20} MB "
                            f"are allowed")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_LABEL_FILE_BYTES + 1)
    if len(raw) > MAX_LABEL_FILE_BYTES:
        raise SAEInputError(f"labels file {shown(name)} is larger than {MAX_LABEL_FILE_BYTES >> 20} MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SAEInputError(f"labels file {shown(name)} is not UTF-8 text") from None
    parse = parse_json_labels if suffix == ".json" else parse_csv_labels
    return parse(text, n_latents, f"labels file {shown(name)}", source or name)


# ------------------------------------------------------------------ export
def labels_to_json(labels: dict[int, ShownLabel]) -> str:
    """The public shape: a list of {id, label, category, confidence[, meanActivation]}, by id."""
    rows = []
    for feature, label in sorted(labels.items()):
        row = {"id": feature, "label": label.text, "category": label.category, "confidence": label.confidence}
        published = label.imported.mean_activation if label.imported is not None else None
        if published is not None and label.source != "user":
            row["meanActivation"] = published
        rows.append(row)
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


def labels_to_csv(labels: dict[int, ShownLabel]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for feature, label in sorted(labels.items()):
        writer.writerow([feature, label.text, label.category, label.confidence])
    return out.getvalue()


def export_text(labels: dict[int, ShownLabel], fmt: str) -> str:
    if fmt not in ("json", "csv"):
        raise SAEInputError(f"format {shown(fmt)} is not valid; valid: json, csv")
    return labels_to_json(labels) if fmt == "json" else labels_to_csv(labels)
