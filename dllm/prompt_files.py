"""Prompt files: JSONL, a JSON list or Parquet, read the same way by every command.

Each record has a `prompt` (or `question`) that is text or a list of token ids, and
what its responses are judged by: an `answer` (math), or code tests in MBPP style
(`tests`: a list of assert statements, optional `setup` code) or HumanEval style
(`test`: code defining `check(candidate)`, and the `entry_point` it is called with).
Test code is compiled on reading, so a malformed test is an error here, not a failed
sample later. A bare string in a JSON list or JSONL line is a prompt too. Every
problem is a one-line `UserError` naming the file and the line (JSONL) or record (JSON
list, Parquet). `t3d-collect` and `t3d-eval` both read prompts through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.scoring.base import Reference

PROMPT_FIELDS = ("prompt", "question")
CODE_FIELDS = ("tests", "setup", "test", "entry_point")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as read from its source."""

    prompt: str | tuple[int, ...]  # text, or token ids used as they are
    answer: str | None = None
    tests: tuple[str, ...] | None = None  # MBPP style: assert statements
    setup: str | None = None  # MBPP style: code run before the solution
    test: str | None = None  # HumanEval style: code defining check(candidate)
    entry_point: str | None = None  # HumanEval style: the function check() is given
    where: str = field(default="", compare=False)  # `FILE line N` / `FILE record N`, for errors

    def reference(self) -> Reference:
        """What a scorer judges this prompt's responses by."""
        text = self.prompt if isinstance(self.prompt, str) else ""
        return Reference(
            prompt=text, answer=self.answer, tests=self.tests, setup=self.setup, test=self.test, entry_point=self.entry_point
        )


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
    keep = names + [c for c in ("answer", *CODE_FIELDS) if c in table.column_names]  # a row may fill either prompt field
    return [_record(row, f"{path} record {i}") for i, row in enumerate(table.select(keep).to_pylist())]


def record_from_value(value: Any, where: str) -> PromptRecord:
    """One parsed JSON value -> PromptRecord (what `t3d-eval --grade` reads beside each response)."""
    return _record(value, where)


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
    return PromptRecord(prompt=prompt, answer=None if answer is None else str(answer), **_code_fields(value, where), where=where)


def _code_fields(value: dict[str, Any], where: str) -> dict[str, Any]:
    """`tests`/`setup` (MBPP) or `test`/`entry_point` (HumanEval), checked and compiled."""
    tests, setup, test, entry = (value.get(name) for name in CODE_FIELDS)
    if tests is not None:
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise UserError(f"{where}: 'tests' must be a non-empty list of assert statements (strings)")
        tests = tuple(tests)
        for i, line in enumerate(tests):
            _compiles(line, f"{where}: tests[{i}]")
    for name, code in (("setup", setup), ("test", test)):
        if code is not None:
            if not isinstance(code, str):
                raise UserError(f"{where}: '{name}' must be Python code as a string")
            _compiles(code, f"{where}: '{name}'")
    if test is not None and tests is not None:
        raise UserError(f"{where}: give 'tests' (MBPP style) or 'test' + 'entry_point' (HumanEval style), not both")
    if (test is None) != (entry is None):
        raise UserError(f"{where}: HumanEval-style tests need both 'test' and 'entry_point'")
    if entry is not None and not (isinstance(entry, str) and entry.isidentifier()):
        raise UserError(f"{where}: 'entry_point' must be a function name, got {entry!r}")
    return {"tests": tests, "setup": setup, "test": test, "entry_point": entry}


def _compiles(code: str, where: str) -> None:
    try:
        compile(code, "<test>", "exec")
    except (SyntaxError, ValueError) as err:
        raise UserError(f"{where} is not valid Python ({type(err).__name__}: {getattr(err, 'msg', err)})") from None
