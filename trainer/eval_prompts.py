"""Evaluation prompts, how their responses are judged, and how each model encodes them.

A `PromptSet` is the prompts of one evaluation and the scorer that judges their
responses: the built-in task (validity, exact likelihoods, the true distribution) or a
prompt file judged by a scorer of `t3d.dllm.scoring` (math, code, exact). Text prompts
are encoded per model with `t3d.dllm.prompt_encoding`, the encoding collect used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from t3d.dllm import DiffusionLM, UserError
from t3d.dllm.prompt_encoding import PromptEncoding, dataset_encoding
from t3d.dllm.prompt_encoding import encode_prompt as encode_prompt_text
from t3d.dllm.prompt_files import FieldMap, PromptRecord, builtin_split, describe_layouts, read_prompt_file
from t3d.dllm.scoring import Grading, Limits, Reference, Verdict, choose_scorer, judge_concurrently, runs_code, text_scorer
from t3d.dllm.task import BuiltinTask, diversity_report
from t3d.storage_schemas import DatasetError, Manifest
from t3d.trainer import metrics
from t3d.trainer.checkpoint import read_t3d_json


@dataclass(frozen=True, kw_only=True)
class EvalPrompt:
    """One evaluation prompt: text, token ids when the task defines them, optional reference answer."""

    text: str
    """The prompt as text (what the samples file shows)."""
    ids: tuple[int, ...] | None = None
    """Token ids used as they are (built-in task, id-list prompt files); None: tokenise `text` per model."""
    answer: str | None = None
    """Reference answer (GSM8K `#### 42`, `\\boxed{42}` or bare); None when unknown."""
    reference: Reference | None = None
    """Everything a prompt file's record gives its scorer (answer, code tests); None for the built-in task."""


class Scorer(Protocol):
    """How a prompt set judges responses; one implementation per kind of prompt source."""

    metric: str | None
    """Name of the task metric (`validity`, `accuracy`), None when there is nothing to judge."""

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        """The verdict on one response: correct True/False (None when this prompt cannot be judged) and its detail."""

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float | None:
        """Exact log p(response | prompt) under the task's true distribution, when it has one."""

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float] | None:
        """Diversity of one prompt's responses measured against the true distribution, when there is one.

        Keys: `expected_distinct` (distinct responses expected among as many true
        samples), `distinct_ratio` (distinct / expected: below 1 is mode collapse), and
        any task-specific measures.
        """


def judge_rows(
    scorer: Scorer, prompts: Sequence[EvalPrompt], responses: Sequence[metrics.Response], texts: Sequence[str]
) -> list[Verdict]:  # fmt: skip
    """Each row's verdict, in order: by the scorer's `judge_all` where it has one (a text scorer judging code
    samples several at a time), else by `judge`, row by row."""
    own = getattr(scorer, "judge_all", None)
    if own is not None:
        return own(prompts, responses, texts)
    return [scorer.judge(p, r, t) for p, r, t in zip(prompts, responses, texts)]


class TextScorer:
    """Prompt-file records judged on response text by a scorer of `t3d.dllm.scoring` (math, exact, code; auto: per record).

    code_workers: code samples judged at once (threads, each waiting on its own sandbox; `--code-workers`).
    """

    def __init__(self, name: str | None, code_limits: Limits | None = None, metric: str | None = None, code_workers: int = 1) -> None:
        self.name = name
        self.scorer = text_scorer(name, code_limits) if name is not None else None
        self.metric = metric if metric is not None or self.scorer is None else self.scorer.metric
        self.code_workers = code_workers

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        if self.scorer is None or prompt.reference is None:
            return Verdict(None)
        return self.scorer.score(prompt.reference, text)

    def judge_all(self, prompts: Sequence[EvalPrompt], responses: Sequence[metrics.Response], texts: Sequence[str]) -> list[Verdict]:
        """`judge` of every row, code samples `code_workers` at a time."""
        code = [self.scorer is not None and p.reference is not None and runs_code(self.scorer, p.reference) for p in prompts]
        return judge_concurrently(lambda i: self.judge(prompts[i], responses[i], texts[i]), code, self.code_workers)

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float | None:
        return None

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float] | None:
        return None


class TaskScorer:
    """The built-in task: validity, exact log-likelihood and the true distribution."""

    metric: str | None = "validity"

    def __init__(self, task: BuiltinTask) -> None:
        self.task = task

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        return Verdict(bool(self.task.is_valid(list(prompt.ids), list(response))))

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float:
        return float(self.task.log_likelihood(list(prompt.ids), list(response)))

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float]:
        report = diversity_report(self.task, list(prompt.ids), [list(r) for r in responses])
        return {
            "expected_distinct": report.expected_distinct,
            "distinct_ratio": report.distinct_ratio,
            "marker_first_rate": report.marker_first_rate,
            "positional_tv": report.positional_tv,
        }


@dataclass(frozen=True, kw_only=True)
class PromptSet:
    """The prompts of one evaluation and the scorer that judges their responses."""

    prompts: tuple[EvalPrompt, ...]
    scorer: Scorer
    source: str
    """Where the prompts came from (`builtin:test`, a file path), recorded in the JSON."""
    notes: tuple[str, ...] = ()
    """The layout recognised and how the records are graded (which are not), printed once at the start."""
    grading: dict[str, Any] | None = None
    """`Grading.summary()` of a prompt file: records per scorer and those nothing can judge (in the JSON)."""


def load_prompts(
    source: str | Path | None, limit: int | None = None, scorer: str = "auto", code_limits: Limits | None = None,
    fields: FieldMap = FieldMap(), split: str = "test", code_workers: int = 1,
) -> PromptSet:  # fmt: skip
    """`--prompts`: a file, `builtin:SPLIT`, or None (the built-in task's `split`: for the built-in teacher only, checked by the CLI)."""
    named = split if source is None else builtin_split(source, split)
    if named is None:
        return load_prompt_file(source, limit, scorer, code_limits, fields, code_workers)
    if fields.given:
        raise UserError("--prompt-field / --answer-field / --tests-field / --setup-field read a prompt file; the built-in task has none")
    return builtin_prompts(named, limit, scorer=scorer)


def builtin_prompts(split: str = "test", limit: int | None = None, task_seed: int = 0, scorer: str = "auto") -> PromptSet:
    """The built-in task's prompts; `test` is held out from collect's defaults (train) and tuning (val)."""
    choose_scorer(scorer, None, f"builtin:{split}")  # only `builtin` (or auto) fits
    task = BuiltinTask(seed=task_seed)
    ids = list(task.prompts(split))[:limit]
    prompts = tuple(EvalPrompt(text=task.decode(p), ids=tuple(int(t) for t in p)) for p in ids)
    return PromptSet(prompts=prompts, scorer=TaskScorer(task), source=f"builtin:{split}")


def load_prompt_file(
    path: str | Path, limit: int | None = None, scorer: str = "auto", code_limits: Limits | None = None,
    fields: FieldMap = FieldMap(), code_workers: int = 1,
) -> PromptSet:  # fmt: skip
    """A prompt file in any layout `t3d.dllm.prompt_files` reads (GSM8K, MATH-500, MBPP, HumanEval, t3d's own, or `fields`).

    The same reader as t3d-collect's `--prompts`. `scorer` is a name of
    `t3d.dllm.scoring` (`auto`: each record by its own fields: code tests, else an answer).
    """
    records = read_prompt_file(path, fields)[:limit]
    grading = choose_scorer(scorer, records, str(path))
    notes = (f"layout: {describe_layouts(records)}", grading.describe())
    return PromptSet(
        prompts=tuple(_eval_prompt(r) for r in records), scorer=_text_scorer(grading, code_limits, code_workers), source=str(path),
        notes=notes,
        grading=grading.summary(),
    )  # fmt: skip


def _text_scorer(grading: Grading, code_limits: Limits | None, code_workers: int = 1) -> TextScorer:
    """The records' scorer; none when no record has anything to judge it by (no task metric then)."""
    if grading.name is None:
        return TextScorer(None)
    return TextScorer(grading.scorer, code_limits, metric=grading.metric, code_workers=code_workers)


def _eval_prompt(record: PromptRecord) -> EvalPrompt:
    if isinstance(record.prompt, str):
        return EvalPrompt(text=record.prompt, answer=record.answer, reference=record.reference())
    text = " ".join(map(str, record.prompt))
    return EvalPrompt(text=text, ids=record.prompt, answer=record.answer, reference=record.reference())


def encode_prompt(model: DiffusionLM, prompt: EvalPrompt, encoding: PromptEncoding = PromptEncoding()) -> list[int]:
    """Token ids of `prompt` for `model`: the task's ids as they are, else text through `encoding`."""
    if prompt.ids is not None:
        if max(prompt.ids, default=0) >= model.vocab_size:
            raise UserError(f"model {model.name} has {model.vocab_size} tokens: too few for prompt ids up to {max(prompt.ids)}")
        return list(prompt.ids)
    if model.tokenizer is None:
        raise UserError(f"model {model.name} has no tokenizer to encode text prompts ({model.path})")
    return encode_prompt_text(model.tokenizer, prompt.text, encoding)


def recorded_encoding(model: DiffusionLM) -> PromptEncoding | None:
    """The encoding a student was distilled on (its t3d.json, written by t3d-distill), or None."""
    recorded = read_t3d_json(Path(model.path)).get("prompt_encoding") if model.path else None
    return None if recorded is None else PromptEncoding.from_dict(recorded, f"{model.path}/t3d.json")


def like_dataset(path: str | Path) -> PromptEncoding:
    """The prompt encoding recorded in a dataset's manifest (`t3d-eval --like DATASET`)."""
    try:
        manifest = Manifest.load(path)
    except (DatasetError, FileNotFoundError, NotADirectoryError) as err:
        raise UserError(f"--like {path}: not a readable t3d dataset ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return dataset_encoding(manifest.collect_config, f"{path}/manifest.json")


def resolve_encodings(
    models: dict[str, DiffusionLM], like: PromptEncoding | None = None, like_source: str = "", overrides: dict[str, Any] | None = None
) -> tuple[dict[str, PromptEncoding], list[str]]:
    """Each model's prompt encoding, and notes to print when they are not all alike.

    `like` (a dataset's) is used for every model; without it each model uses the one it
    was distilled on, else the default. `overrides` (fields given on the command line)
    apply on top. A note names every model whose own recorded encoding is not the one used,
    and the models when they end up encoding prompts differently.
    """
    recorded = {label: recorded_encoding(m) for label, m in models.items()}
    chosen = {label: like or rec or PromptEncoding() for label, rec in recorded.items()}
    chosen = {label: replace(enc, **(overrides or {})) for label, enc in chosen.items()}
    notes = [f"prompt encoding of {like_source}: {like.describe()}"] if like is not None else []
    notes += [
        f"note: {label} was distilled on prompts encoded with {rec.describe()}; evaluating it with {chosen[label].describe()}"
        for label, rec in recorded.items() if rec is not None and rec != chosen[label]
    ]  # fmt: skip
    if len(set(chosen.values())) > 1:
        notes.append("note: the models encode prompts differently: " + "; ".join(f"{k}: {v.describe()}" for k, v in chosen.items()))
    return chosen, notes


def decode_response(model: DiffusionLM, response: metrics.Response) -> str:
    """Response text without special tokens; ids joined by spaces when the model has no tokenizer."""
    if model.tokenizer is None:
        return " ".join(str(t) for t in response)
    return model.tokenizer.decode(list(response), skip_special_tokens=True)
