"""Prompt sources -> token ids, checked before any worker starts.

A prompt file is JSONL, a JSON list or Parquet, read by `t3d.dllm.prompt_files` (the
same reader `t3d-eval` uses); this module encodes the records and applies the length
rules.

Without a file, the prompts are the built-in task's `train` split (never `test`, which
`t3d-eval` keeps for measuring).

`row_scorer` builds what fills the dataset's `correct` column, from the scorer registry
`t3d.dllm.scoring` that `t3d-eval` uses too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_encoding import PromptEncoding, encode_prompt
from t3d.dllm.prompt_files import PromptRecord, read_prompt_file
from t3d.dllm.scoring import BUILTIN, Reference, text_scorer

__all__ = ["BUILTIN_SPLIT", "EncodedPrompt", "PreparedPrompts", "PromptRecord", "RowScorer", "read_prompt_file", "row_scorer"]

BUILTIN_SPLIT = "train"


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


def builtin_prompt_records(seed: int = 0) -> list[PromptRecord]:
    """The built-in task's train split, as token ids."""
    try:
        from t3d.dllm.task import BuiltinTask
    except ImportError:
        raise UserError("no --prompts given and the built-in task is not installed: pass --prompts FILE") from None
    return [PromptRecord(prompt=tuple(int(t) for t in p)) for p in BuiltinTask(seed=seed).prompts(BUILTIN_SPLIT)]


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

    Picklable (it travels to the Ray actors): the scorer's name, the tokenizer that
    decodes responses, and each kept prompt's reference keyed by its token ids. Two
    prompts that encode to the same ids with different references cannot be told apart
    by the ids, so their rows stay unjudged (None).
    """

    def __init__(self, name: str, tokenizer: Any, references: dict[tuple[int, ...], Reference | None]) -> None:
        self.name, self.tokenizer, self.references = name, tokenizer, references
        self._scorer: Any = None

    def __call__(self, prompt_ids: Any, response_ids: Any) -> bool | None:
        reference = self.references.get(tuple(int(t) for t in prompt_ids))
        if reference is None:
            return None
        if self._scorer is None:
            self._scorer = text_scorer(self.name)
        text = self.tokenizer.decode([int(t) for t in response_ids], skip_special_tokens=True)
        return self._scorer.score(reference, text).correct

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": self.tokenizer, "references": self.references}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


def row_scorer(name: str | None, records: list[PromptRecord], prepared: PreparedPrompts, tokenizer: Any, builtin: Any = None) -> Any:
    """What fills `correct`: the built-in task's check, a `RowScorer`, or None (nothing to judge)."""
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
    return RowScorer(name, tokenizer, references)
