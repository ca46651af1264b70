"""Published benchmark layouts: each one a registered description, recognised by its fields.

A prompt file's record is read in the layout whose fields it has (not null), the first
match in `LAYOUTS`, which lists the more specific layouts first. A layout turns its
record into t3d's own fields (`prompt`, `answer`, `tests` + `setup`, `test` +
`entry_point`), which `t3d.dllm.prompt_files` then checks:

| layout | identified by | prompt | judged by |
|---|---|---|---|
| HumanEval | `prompt`, `test`, `entry_point` | `prompt` | `test` + `entry_point` (code) |
| MBPP | `text`, `test_list` | `text` + the tests (below) | `test_list`, `test_setup_code` (code) |
| MBPP sanitized | `prompt`, `test_list` | `prompt` + the tests | `test_list`, `test_imports` (code) |
| MATH-500 | `problem`, `answer` | `problem` | `answer` (math) |
| Hendrycks MATH | `problem`, `solution` | `problem` | the last `\\boxed{}` of `solution` (math) |
| GSM8K | `question`, `answer` | `question` | what follows `####` in `answer` (math) |
| t3d | `prompt` or `question` | as is (text or token ids) | `answer`, `tests` + `setup`, `test` + `entry_point` |

MBPP's `challenge_test_list` is not run: MBPP is scored on `test_list` (as the paper and
lm-evaluation-harness do). Anything else is read with a `FieldMap` (`--prompt-field`,
`--answer-field`, `--tests-field`), which replaces recognition for the whole file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.scoring.math_answers import after_marker, last_boxed

T3D_FIELDS = ("prompt", "answer", "tests", "setup", "test", "entry_point")
"""t3d's own record fields, what every layout is turned into."""

MBPP_INSTRUCTION = "You are an expert Python programmer, and here is your task:\n{text}\nYour code should pass these tests:\n{tests}"
"""MBPP's prompt: the task, then its asserts, so the model knows the function's name and signature.

The wording is lm-evaluation-harness's `mbpp_instruct` task (`lm_eval/tasks/mbpp/mbpp_instruct.yaml`,
after Austin et al. 2021's "You are an expert Python programmer, and here is your task: {prompt}
Your code should pass these tests:"), zero-shot; every assert of `test_list` is shown.
"""


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The MBPP task text with its tests, in lm-evaluation-harness's `mbpp_instruct` wording."""
    return MBPP_INSTRUCTION.format(text=str(text).strip(), tests="\n".join(tests if isinstance(tests, list) else [str(tests)]))


def _lines(value: Any) -> str | None:
    """MBPP setup code: a string (`test_setup_code`) or a list of import lines (`test_imports`); empty -> None."""
    text = "\n".join(value) if isinstance(value, list) else (value or "")
    return text if str(text).strip() else None


@dataclass(frozen=True, kw_only=True)
class Layout:
    """One published layout: the fields that identify it and how its record becomes t3d's fields."""

    name: str
    """How messages call it (`GSM8K`)."""
    fields: tuple[str, ...]
    """Fields a record must have (not null) to be read in this layout."""
    note: str = ""
    """Where the reference comes from when it is not a field as is, for the recognition line."""
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    """A record of this layout -> t3d's fields (missing ones mean: not given)."""

    def matches(self, value: dict[str, Any]) -> bool:
        return all(value.get(f) is not None for f in self.fields)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.fields) or self.note})"


def _t3d(value: dict[str, Any]) -> dict[str, Any]:
    fields = {k: value.get(k) for k in T3D_FIELDS[1:]}
    return fields | {"prompt": value["prompt"] if value.get("prompt") is not None else value.get("question")}


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="HumanEval", fields=("prompt", "test", "entry_point"),
        convert=lambda v: {"prompt": v["prompt"], "test": v["test"], "entry_point": v["entry_point"]},
    ),
    Layout(
        name="MBPP", fields=("text", "test_list"),
        convert=lambda v: {"prompt": mbpp_prompt(v["text"], v["test_list"]), "tests": v["test_list"], "setup": _lines(v.get("test_setup_code"))},
    ),
    Layout(
        name="MBPP sanitized", fields=("prompt", "test_list"),
        convert=lambda v: {"prompt": mbpp_prompt(v["prompt"], v["test_list"]), "tests": v["test_list"], "setup": _lines(v.get("test_imports"))},
    ),
    Layout(name="MATH-500", fields=("problem", "answer"), convert=lambda v: {"prompt": v["problem"], "answer": v["answer"]}),
    Layout(
        name="Hendrycks MATH", fields=("problem", "solution"), note="answer: the last \\boxed{} of solution",
        convert=lambda v: {"prompt": v["problem"], "answer": last_boxed(str(v["solution"]))},
    ),
    Layout(
        name="GSM8K", fields=("question", "answer"), note="answer: what follows #### in answer",
        convert=lambda v: {"prompt": v["question"], "answer": after_marker(str(v["answer"])) or v["answer"]},
    ),
    Layout(name="t3d", fields=("prompt",), convert=_t3d),
    Layout(name="t3d", fields=("question",), convert=_t3d),
)
"""Every layout recognised, the more specific first (a MATH-500 record also has Hendrycks MATH's fields)."""


def known_layouts() -> str:
    return "; ".join(dict.fromkeys(layout.describe() for layout in LAYOUTS))


def recognise(value: dict[str, Any], where: str) -> Layout:
    """The layout of one record, or a one-line `UserError` naming its fields and the known layouts."""
    for layout in LAYOUTS:
        if layout.matches(value):
            return layout
    fields = ", ".join(k for k, v in value.items() if v is not None) or "none"
    raise UserError(
        f"{where}: no known layout has these fields ({fields}); known: {known_layouts()}; "
        "or name them with --prompt-field / --answer-field / --tests-field / --setup-field"
    )


@dataclass(frozen=True, kw_only=True)
class FieldMap:
    """Which fields of a file hold the prompt, the answer, the tests and their setup, for layouts t3d does not know."""

    prompt: str | None = None
    """Field holding the prompt (text or token ids)."""
    answer: str | None = None
    """Field holding the reference answer (GSM8K `#### 42`, `\\boxed{42}` or the bare answer)."""
    tests: str | None = None
    """Field holding the code tests: a list of assert statements (or one string of them)."""
    setup: str | None = None
    """Field holding code run before the solution is tested (imports, helpers; MBPP's test_setup_code)."""

    ROLES = ("prompt", "answer", "tests", "setup")
    """The fields above; each is the option `--ROLE-field`."""

    @property
    def given(self) -> bool:
        return any(getattr(self, role) is not None for role in self.ROLES)

    def layout(self) -> Layout:
        """The layout these fields describe; fields not mapped keep t3d's names (`prompt`, `answer`, ...)."""
        named = {role: getattr(self, role) or role for role in self.ROLES}
        shown = ", ".join(f"{role}={field}" for role, field in named.items() if getattr(self, role) is not None)

        def convert(value: dict[str, Any]) -> dict[str, Any]:
            fields = {k: value.get(k) for k in T3D_FIELDS} | {role: value.get(field) for role, field in named.items()}
            if isinstance(fields["tests"], str):
                fields["tests"] = [fields["tests"]]
            return fields

        return Layout(name="fields given", fields=(), note=shown, convert=convert)

    def check(self, values: list[Any], source: str) -> None:
        """A mapped field that no record has is a one-line error naming the option and the fields there are.

        A record without a mapped field has no such value (JSONL records may differ); a
        field in none of them is a typo or the wrong file.
        """
        records = [v for v in values if isinstance(v, dict)]
        present = list(dict.fromkeys(k for v in records for k in v))
        for role in self.ROLES:
            option, field = f"--{role}-field", getattr(self, role)
            if field is not None and records and field not in present:
                raise UserError(f"{source}: {option} {field!r} names no field of its records (fields: {', '.join(present) or 'none'})")
