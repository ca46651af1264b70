"""Prompt sources -> token ids, checked before any worker starts.

A prompt file is JSONL, a JSON list, Parquet or a `datasets` `save_to_disk` folder,
each record in its published layout, read by `t3d.dllm.prompt_files` (the same reader
`t3d-eval` uses); this module encodes the records and applies the length rules.

Without a file (or with `--prompts builtin:train`), the prompts are the built-in task's
`train` split (never `test`, which `t3d-eval` keeps for measuring); only the built-in
teacher gets them without asking (`PromptConfig` refuses a real checkpoint without
`--prompts`).

`row_scorer` builds what fills the dataset's `correct` column, from the scorer registry
`t3d.dllm.scoring` that `t3d-eval` uses too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_encoding import PromptEncoding, encode_prompt
from t3d.dllm.prompt_files import FieldMap, PromptRecord, builtin_split, describe_layouts, read_prompt_file
from t3d.dllm.scoring import BUILTIN, Grading, Reference, Verdict, choose_scorer, judge_concurrently, runs_code, text_scorer

__all__ = [
    "BUILTIN_SPLIT", "EncodedPrompt", "PreparedPrompts", "PromptRecord", "PromptSource", "RowScorer", "load_prompt_source",
    "read_prompt_file", "row_scorer",
]  # fmt: skip

BUILTIN_SPLIT = "train"
COLLECT_SPLITS = ("train", "val")
"""Built-in splits collect may roll out; `test` is t3d-eval's."""


@dataclass(frozen=True)
class PromptSource:
    """The records of a run, how each is graded, and the lines that say so once at the start."""

    records: list[PromptRecord]
    grading: Grading
    builtin: bool
    """The built-in task's prompts (token ids, judged by its validity check)."""
    notes: tuple[str, ...]
    """`layout ...` and `grading ...` lines for the run header."""


def load_prompt_source(source: str | None, scorer: str, *, fields: FieldMap = FieldMap(), limit: int | None = None, task_seed: int = 0) -> PromptSource:
    """`--prompts` (a file, `builtin:SPLIT`, or None: the built-in train split) read, limited and resolved against `--scorer`."""
    split = BUILTIN_SPLIT if source is None else builtin_split(source, BUILTIN_SPLIT)
    if split is not None:
        if split not in COLLECT_SPLITS:
            raise UserError(f"--prompts builtin:{split}: collect rolls out the built-in task's {' or '.join(COLLECT_SPLITS)} split ({split!r} is not one; test is kept for t3d-eval)")
        if fields.given:
            raise UserError("--prompt-field / --answer-field / --tests-field / --setup-field read a prompt file; the built-in task has none")
        records = builtin_prompt_records(task_seed, split)[:limit]
        grading = choose_scorer(scorer, None, f"builtin:{split}")
        return PromptSource(records, grading, True, (f"layout    built-in task, {split} split: {len(records)} prompts", f"grading   {grading.describe()}"))
    records = read_prompt_file(source, fields)[:limit]
    grading = choose_scorer(scorer, records, str(source))
    return PromptSource(records, grading, False, (f"layout    {describe_layouts(records)}", f"grading   {grading.describe()}"))


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


def builtin_prompt_records(seed: int = 0, split: str = BUILTIN_SPLIT) -> list[PromptRecord]:
    """The built-in task's prompts of `split`, as token ids."""
    try:
        from t3d.dllm.task import BuiltinTask
    except ImportError:
        raise UserError("no --prompts given and the built-in task is not installed: pass --prompts FILE") from None
    return [PromptRecord(prompt=tuple(int(t) for t in p), where=f"builtin:{split} record {i}", layout="built-in task")
            for i, p in enumerate(BuiltinTask(seed=seed).prompts(split))]  # fmt: skip


# --- encoding: t3d.dllm.prompt_encoding, the one function collect, distill and eval use ---------


def prepare_prompts(
    records: list[PromptRecord],
    tokenizer: Any,
    *,
    encoding: PromptEncoding,
    max_prompt_tokens: int,
    on_long_prompt: str,
    limit: int | None = None,
    vocab_size: int | None = None,
) -> PreparedPrompts:
    """Encode (text prompts by `encoding`; id lists as they are), then keep those that fit `max_prompt_tokens`."""
    records = records[:limit] if limit else records
    kept, skipped = [], []
    for index, record in enumerate(records):
        text = record.prompt if isinstance(record.prompt, str) else None
        ids = list(record.prompt) if text is None else encode_prompt(tokenizer, text, encoding)
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


# --- the `correct` column ----------------------------------------------------------------


class RowScorer:
    """`(prompt_ids, response_ids) -> bool | None` for the `correct` column, by a text scorer of the registry.

    `auto` judges each prompt by its own reference (code tests, else an answer); a prompt
    with neither stays None, and collect names it at the start (`Grading.describe`).

    Picklable (it travels to the Ray actors): the scorer's name, the tokenizer that
    decodes responses, and each kept prompt's reference keyed by its token ids. Two
    prompts that encode to the same ids with different references cannot be told apart
    by the ids, so their rows stay unjudged (None).
    """

    def __init__(
        self, name: str, tokenizer: Any, references: dict[tuple[int, ...], Reference | None], code_workers: int = 1
    ) -> None:  # fmt: skip
        self.name, self.tokenizer, self.references, self.code_workers = name, tokenizer, references, code_workers
        self._scorer: Any = None

    def __call__(self, prompt_ids: Any, response_ids: Any) -> bool | None:
        return self.score_all([(prompt_ids, response_ids)])[0]

    def score_all(self, rows: Sequence[tuple[Any, Any]]) -> list[bool | None]:
        """`correct` of each (prompt ids, response ids), in order: code samples `code_workers` at a time."""
        if self._scorer is None:
            self._scorer = text_scorer(self.name)
        references = [self.references.get(tuple(int(t) for t in prompt)) for prompt, _ in rows]
        texts = [self.tokenizer.decode([int(t) for t in response], skip_special_tokens=True) for _, response in rows]
        code = [ref is not None and runs_code(self._scorer, ref) for ref in references]
        judge = lambda i: self._scorer.score(references[i], texts[i]) if references[i] is not None else Verdict(None)  # noqa: E731
        return [v.correct for v in judge_concurrently(judge, code, self.code_workers)]

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": self.tokenizer, "references": self.references, "code_workers": self.code_workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


def row_scorer(
    grading: Grading | str | None, records: list[PromptRecord], prepared: PreparedPrompts, tokenizer: Any, builtin: Any = None,
    code_workers: int = 1,
) -> Any:  # fmt: skip
    """What fills `correct`: the built-in task's check, a `RowScorer` (judging `code_workers` code samples at once),
    or None (no record has anything to judge by)."""
    if isinstance(grading, Grading):
        name = None if grading.scorer != BUILTIN and not any(grading.judges) else grading.scorer
    else:
        name = grading
    if name == BUILTIN:
        return builtin
    if name is None:
        return None
    if tokenizer is None:
        raise UserError(f"--scorer {name} reads response text, but the teacher checkpoint has no tokenizer")
    references: dict[tuple[int, ...], Reference | None] = {}
    for p in prepared.prompts:
        reference = records[p.index].reference()
        references[p.ids] = reference if references.get(p.ids, reference) == reference else None
    return RowScorer(name, tokenizer, references, code_workers)
