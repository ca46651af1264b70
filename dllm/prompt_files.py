"""Prompt files: JSONL, a JSON list or Parquet, read the same way by every command.

Each record has a `prompt` (or `question`) that is text or a list of token ids, and an
optional `answer`. A bare string in a JSON list or JSONL line is a prompt too. Every
problem is a one-line `UserError` naming the file and the line (JSONL) or record (JSON
list, Parquet). `t3d-collect` and `t3d-eval` both read prompts through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError

PROMPT_FIELDS = ("prompt", "question")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as read from its source."""

    prompt: str | tuple[int, ...]  # text, or token ids used as they are
    answer: str | None = None


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Records of a JSONL / JSON / Parquet prompt file (by extension; `.jsonl` and `.ndjson` are JSONL)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"prompts file not found: {path}")
    if not path.is_file():
        raise UserError(f"prompts path is not a file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"prompts file is empty: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = _read_jsonl(path)
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix in (".parquet", ".pq"):
        records = _read_parquet(path)
    else:
        raise UserError(f"prompts file must be .jsonl, .json or .parquet: {path}")
    if not records:
        raise UserError(f"prompts file holds no prompts: {path}")
    return records


def _read_jsonl(path: Path) -> list[PromptRecord]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno})") from None
            records.append(_record(value, f"{path} line {number}"))
    return records


def _read_json(path: Path) -> list[PromptRecord]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, list):
        raise UserError(f"{path} must hold a JSON list of records (or use .jsonl, one record per line)")
    return [_record(item, f"{path} record {i}") for i, item in enumerate(value)]


def _read_parquet(path: Path) -> list[PromptRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise UserError(f"cannot read Parquet prompts file {path}: {str(err).splitlines()[0]}") from None
    names = [n for n in PROMPT_FIELDS if n in table.column_names]
    if not names:
        raise UserError(f"{path} has no 'prompt' or 'question' column (columns: {', '.join(table.column_names)})")
    keep = names + (["answer"] if "answer" in table.column_names else [])  # a row may fill either field
    return [_record(row, f"{path} record {i}") for i, row in enumerate(table.select(keep).to_pylist())]


def _record(value: Any, where: str) -> PromptRecord:
    """One record -> PromptRecord, or a UserError that says where the bad record is."""
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise UserError(f"{where}: a record must be an object with a 'prompt' field, got {type(value).__name__}")
    field = next((f for f in PROMPT_FIELDS if value.get(f) is not None), None)
    if field is None:
        raise UserError(f"{where}: record has no 'prompt' or 'question' field")
    prompt = value[field]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: '{field}' must be non-empty text or a list of token ids")
    answer = value.get("answer")
    return PromptRecord(prompt=prompt, answer=None if answer is None else str(answer))
