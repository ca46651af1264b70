"""Prompt files: JSONL, a JSON list, Parquet or a `datasets` `save_to_disk` folder, read the same way by every command.

Each record is read in its published layout (`t3d.dllm.layouts`: GSM8K, MATH-500,
Hendrycks MATH, MBPP, MBPP sanitized, HumanEval, or t3d's own fields), recognised by its
fields, or in the fields a `FieldMap` names. t3d's own fields: a `prompt` (or `question`)
that is text or a list of token ids, and what its responses are judged by: an `answer`
(math), or code tests in MBPP style (`tests`: a list of assert statements, optional
`setup` code) or HumanEval style (`test`: code defining `check(candidate)`, and the
`entry_point` it is called with). Test code is compiled on reading, so a malformed test
is an error here, not a failed sample later. A bare string in a JSON list or JSONL line
is a prompt too. Every problem is a one-line `UserError` naming the file and the line
(JSONL) or record (JSON list, Parquet, Arrow). `t3d-collect`, `t3d-eval` and `t3d-eval
--grade` all read records through here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.layouts import FieldMap, Layout, recognise
from t3d.dllm.scoring.base import Reference

__all__ = [
    "BUILTIN_PREFIX", "FieldMap", "PromptRecord", "built_on_builtin_task", "builtin_split", "describe_layouts", "read_prompt_file",
    "read_rows", "record_from_value", "require_prompts",
]  # fmt: skip

CODE_FIELDS = ("tests", "setup", "test", "entry_point")
BUILTIN_PREFIX = "builtin"
"""`--prompts builtin:SPLIT` (or `builtin`, the command's own split) names the built-in task's prompts."""


def builtin_split(source: str | Path | None, default: str) -> str | None:
    """The built-in task's split a `--prompts` value names (`builtin`, `builtin:train`), else None (a file)."""
    text = str(source) if source is not None else ""
    name, sep, split = text.partition(":")
    if name != BUILTIN_PREFIX:
        return None
    if sep and not split:
        raise UserError(f"--prompts {text}: name a split of the built-in task, e.g. builtin:{default}")
    return split or default


def built_on_builtin_task(model: str) -> bool:
    """The built-in teacher, or a checkpoint made on the built-in task (t3d-pretrain, or a student of one).

    Such a checkpoint's config.json carries `t3d_task_seed`. A path that does not exist
    counts as one here: the loader says it is missing, more usefully than this check could.
    """
    if model == BUILTIN_PREFIX:
        return True
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return not Path(model).expanduser().exists()
    try:
        return "t3d_task_seed" in json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False


def require_prompts(model: str, prompts: str | Path | None, split: str, option: str = "--prompts") -> None:
    """No silent toy: a real checkpoint without prompts would be fed the built-in task's token ids and graded for validity."""
    if prompts is None and not built_on_builtin_task(model):
        raise UserError(
            f"--model {model} is a real checkpoint, not the built-in teacher: pass {option} FILE (JSONL, JSON, Parquet or a "
            f"datasets save_to_disk folder, e.g. GSM8K or MBPP as published), or {option} {BUILTIN_PREFIX}:{split} to run it "
            "on the built-in toy task on purpose"
        )


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
    layout: str = field(default="t3d (prompt)", compare=False)  # the layout it was read in (`GSM8K (question, answer)`)

    def reference(self) -> Reference:
        """What a scorer judges this prompt's responses by."""
        text = self.prompt if isinstance(self.prompt, str) else ""
        return Reference(
            prompt=text, answer=self.answer, tests=self.tests, setup=self.setup, test=self.test, entry_point=self.entry_point
        )

    @property
    def judged_by(self) -> str:
        """What this record carries to grade its responses: code tests, a math answer, or nothing."""
        ref = self.reference()
        return "code tests" if ref.has_code_tests else "math answers" if ref.answer is not None else "nothing to grade by"


def read_prompt_file(path: str | Path, fields: FieldMap = FieldMap()) -> list[PromptRecord]:
    """Records of a prompt file or saved dataset folder, each in its layout (or in `fields` when given)."""
    rows = read_rows(path, "prompts")
    if not rows:
        raise UserError(f"prompts file holds no prompts: {path}")
    fields.check([value for value, _ in rows], str(path))
    return [record_from_value(value, where, fields) for value, where in rows]


def describe_layouts(records: Sequence[PromptRecord]) -> str:
    """The recognition line: `MBPP (text, test_list) layout: 500 records, code tests`, one part per layout."""
    parts = []
    for layout, group in _group(records, lambda r: r.layout).items():
        kinds = Counter(r.judged_by for r in group)
        judged = ", ".join(kind if len(kinds) == 1 else f"{n} {kind}" for kind, n in kinds.items())
        parts.append(f"{layout} layout: {len(group)} record{'s' if len(group) != 1 else ''}, {judged}")
    return "; ".join(parts)


def _group(items: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# --- rows: (value, where) from every format ------------------------------------------------


def read_rows(path: str | Path, what: str = "prompts") -> list[tuple[Any, str]]:
    """Every row of a JSONL / JSON / Parquet file or a `save_to_disk` folder, with where it is (for errors)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file not found: {path}")
    if path.is_dir():
        return _table_rows(_read_saved_dataset(path), path)
    if path.stat().st_size == 0:
        raise UserError(f"{what} file is empty: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".parquet", ".pq"):
        return _table_rows(_read_parquet(path), path)
    if suffix == ".arrow":
        return _table_rows(_read_arrow(path, path), path)
    raise UserError(f"{what} file must be .jsonl, .json, .parquet or a datasets save_to_disk folder: {path}")


def _read_jsonl(path: Path) -> list[tuple[Any, str]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{path} line {number}"))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno})") from None
    return rows


def _read_json(path: Path) -> list[tuple[Any, str]]:
    """A JSON list of records; or JSON lines under a .json name, as `datasets`' `to_json` writes by default."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and err.lineno > 1:  # one value per line: JSON lines
            return _read_jsonl(path)
        raise UserError(f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, list):
        raise UserError(f"{path} must hold a JSON list of records (or use .jsonl, one record per line)")
    return [(item, f"{path} record {i}") for i, item in enumerate(value)]


def _read_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise UserError(f"cannot read Parquet file {path}: {str(err).splitlines()[0]}") from None


def _read_arrow(file: Path, source: Path) -> Any:
    """One Arrow IPC stream file, as `datasets` writes its shards (`data-00000-of-00001.arrow`)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        with pa.memory_map(str(file)) as source_file:
            return ipc.open_stream(source_file).read_all()
    except Exception as err:  # a file cut short or not Arrow
        raise UserError(f"cannot read Arrow file {file} of {source}: {str(err).splitlines()[0]}") from None


def _read_saved_dataset(path: Path) -> Any:
    """A folder written by `datasets.Dataset.save_to_disk`: `state.json` lists its Arrow shards, read in order.

    A `DatasetDict` folder (`dataset_dict.json`, one subfolder per split) is refused with its
    splits named: which split to use is the user's choice.
    """
    import pyarrow as pa

    splits_file, state_file = path / "dataset_dict.json", path / "state.json"
    if splits_file.is_file():
        splits = _json_file(splits_file).get("splits") or sorted(p.name for p in path.iterdir() if p.is_dir())
        raise UserError(f"{path} holds several splits ({', '.join(splits)}): pass one split's folder, e.g. {path / splits[0]}")
    if not state_file.is_file():
        raise UserError(f"{path} is a folder but not a dataset saved by datasets' save_to_disk (no state.json)")
    shards = [entry.get("filename") for entry in _json_file(state_file).get("_data_files", [])]
    if not shards or not all(isinstance(name, str) for name in shards):
        raise UserError(f"{state_file} lists no data files")
    missing = [name for name in shards if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path}: data file {missing[0]} listed in state.json is missing")
    tables = [_read_arrow(path / name, path) for name in shards]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def _table_rows(table: Any, path: Path) -> list[tuple[Any, str]]:
    return [(row, f"{path} record {i}") for i, row in enumerate(table.to_pylist())]


# --- records: one row in its layout -> PromptRecord ------------------------------------------


def record_from_value(value: Any, where: str, fields: FieldMap = FieldMap()) -> PromptRecord:
    """One row -> PromptRecord, read in its layout (or `fields`: check them against the whole file first with `FieldMap.check`)."""
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise UserError(f"{where}: a record must be an object with a 'prompt' field, got {type(value).__name__}")
    layout: Layout = fields.layout() if fields.given else recognise(value, where)
    return _record(layout.convert(value), where, layout.describe(), fields.prompt or "prompt")


def _record(value: dict[str, Any], where: str, layout: str, prompt_field: str) -> PromptRecord:
    """t3d's fields, checked."""
    prompt = value.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: '{prompt_field}' must be non-empty text or a list of token ids")
    answer = value.get("answer")
    answer = None if answer is None or not str(answer).strip() else str(answer)
    return PromptRecord(prompt=prompt, answer=answer, **_code_fields(value, where), where=where, layout=layout)


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
