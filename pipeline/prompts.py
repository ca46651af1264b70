"""Prompt sources -> token ids, checked before any worker starts.

A prompt file is JSONL, a JSON list or Parquet. Each record has a `prompt` (or
`question`) that is text or a list of token ids, and an optional `answer`. A bare
string in a JSON list or JSONL line is a prompt too. Every problem is a one-line
`UserError` naming the file and the line (JSONL) or record (JSON list, Parquet).

Without a file, the prompts are the built-in task's `train` split (never `test`, which
`t3d-eval` keeps for measuring).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError

PROMPT_FIELDS = ("prompt", "question")
BUILTIN_SPLIT = "train"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as read from its source."""

    prompt: str | tuple[int, ...]  # text, or token ids used as they are
    answer: str | None = None


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready to sample: `index` is its position in the source (it seeds its rows)."""

    index: int
    ids: tuple[int, ...]
    text: str | None
    answer: str | None


@dataclass(frozen=True)
class PreparedPrompts:
    """The prompts a run samples, and those it skipped for length."""

    prompts: list[EncodedPrompt]
    skipped: list[int]  # source indices of prompts too long for the model
    total: int  # prompts read from the source (after --limit)

    def digest(self) -> str:
        """sha256 of the ids, texts and answers: a resumed run must be given the same prompts."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(json.dumps([p.index, list(p.ids), p.answer]).encode())
        h.update(json.dumps(self.skipped).encode())
        return h.hexdigest()[:16]


# --- reading ---------------------------------------------------------------------------


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
    keep = [names[0]] + (["answer"] if "answer" in table.column_names else [])
    return [_record(row, f"{path} record {i}") for i, row in enumerate(table.select(keep).to_pylist())]


def _record(value: Any, where: str) -> PromptRecord:
    """One record -> PromptRecord, or a UserError that says where the bad record is."""
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise UserError(f"{where}: a record must be an object with a 'prompt' field, got {type(value).__name__}")
    field = next((f for f in PROMPT_FIELDS if f in value), None)
    if field is None:
        raise UserError(f"{where}: record has no 'prompt' or 'question' field")
    prompt = value[field]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: '{field}' must be non-empty text or a list of token ids")
    answer = value.get("answer")
    return PromptRecord(prompt=prompt, answer=None if answer is None else str(answer))


def builtin_prompt_records(seed: int = 0) -> list[PromptRecord]:
    """The built-in task's train split, as token ids."""
    try:
        from t3d.dllm.task import BuiltinTask
    except ImportError:
        raise UserError("no --prompts given and the built-in task is not installed: pass --prompts FILE") from None
    return [PromptRecord(prompt=tuple(int(t) for t in p)) for p in BuiltinTask(seed=seed).prompts(BUILTIN_SPLIT)]


# --- encoding --------------------------------------------------------------------------


def encode(tokenizer: Any, text: str, chat_template: bool) -> list[int]:
    """Token ids of a text prompt: through the chat template when asked for and present."""
    if tokenizer is None:
        raise UserError("the teacher checkpoint has no tokenizer: give prompts as token-id lists")
    if chat_template and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if hasattr(out, "keys") else out
    else:
        ids = tokenizer(text)["input_ids"]
    return [int(t) for t in ids]


def prepare_prompts(
    records: list[PromptRecord],
    tokenizer: Any,
    *,
    chat_template: bool,
    max_prompt_tokens: int,
    on_long_prompt: str,
    limit: int | None = None,
    vocab_size: int | None = None,
) -> PreparedPrompts:
    """Encode, then keep the prompts that fit `max_prompt_tokens` (skip or error on the rest)."""
    records = records[:limit] if limit else records
    kept, skipped = [], []
    for index, record in enumerate(records):
        text = record.prompt if isinstance(record.prompt, str) else None
        ids = list(record.prompt) if text is None else encode(tokenizer, text, chat_template)
        if not ids:
            raise UserError(f"prompt {index} encodes to no tokens")
        if vocab_size is not None and not all(0 <= t < vocab_size for t in ids):
            raise UserError(f"prompt {index} has token ids outside the model's vocabulary (0..{vocab_size - 1})")
        if len(ids) > max_prompt_tokens:
            if on_long_prompt == "error":
                raise UserError(
                    f"prompt {index} has {len(ids)} tokens, more than the {max_prompt_tokens} the model allows "
                    "beside the response (pass --on-long-prompt skip to skip such prompts)"
                )
            skipped.append(index)
            continue
        kept.append(EncodedPrompt(index=index, ids=tuple(ids), text=text, answer=record.answer))
    if not kept:
        raise UserError(f"no prompt fits the model: all {len(records)} are longer than {max_prompt_tokens} tokens")
    return PreparedPrompts(prompts=kept, skipped=skipped, total=len(records))
