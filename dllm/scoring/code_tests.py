"""Code: a response's program run against the prompt's tests in the sandbox (MBPP, HumanEval).

The program is the response's code: the fenced block (```python ... ```) that defines
the function the tests call, else the first fenced block, else the whole response, or,
when that is not Python, its lines from the first `def` / `import` on that are (the
prose before and after dropped).

- MBPP style (`tests`: assert statements, optional `setup`): `setup`, then the code,
  then each assert on its own, so the verdict names the first one that fails.
- HumanEval style (`test` defining `check(candidate)`, `entry_point`): a response may
  hold the whole function (often with the prompt repeated, as `prompt +
  canonical_solution`) or only its body (the completion of the prompt). When the code
  defines `entry_point` it runs after the whole prompt (its imports and helper
  functions; the prompt's own stub of `entry_point`, a docstring only, is then
  redefined), de-indented if it came indented as a block; otherwise it is the body: the
  prompt, then the code, indented one level when its first line is not. Then `test`
  and `check(entry_point)`.

The verdict's detail is the sandbox's: `status` (passed, failed, error, timeout,
memory), the failing test, the error line.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from t3d.dllm.scoring.base import Reference, Verdict
from t3d.dllm.scoring.sandbox import Limits, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def _defines(code: str, names: set[str]) -> bool:
    return any(re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(n)}\s*\(", code, re.M) for n in names)


def called_names(tests: tuple[str, ...] | None, entry_point: str | None) -> set[str]:
    """Names of the functions the tests call (MBPP), or the entry point (HumanEval)."""
    if entry_point:
        return {entry_point}
    names: set[str] = set()
    for test in tests or ():
        for node in ast.walk(ast.parse(test)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names.add(node.func.id)
    return names


def extract_code(response: str, names: set[str] = frozenset()) -> str:
    """The program a response gives: its fenced block defining one of `names`, else its first block, else its code lines."""
    blocks = [body for lang, body in _FENCE.findall(response) if lang.lower() in ("", "python", "py", "python3")]
    for block in blocks:
        if _defines(block, names):
            return block
    return blocks[0] if blocks else _unfenced_code(response)


_CODE_START = re.compile(r"(?:def|async\s+def|class|import|from|@)\b")


def _unfenced_code(response: str) -> str:
    """Code given without a fence: all of it when it is Python (or a body, which is indented), else the
    longest run of lines from the first `def` / `class` / `import` line that is Python (prose around it dropped)."""
    lines = response.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None or _parses(response):
        return response
    for end in range(len(lines), start, -1):
        chunk = "\n".join(lines[start:end])
        if _parses(chunk):
            return chunk + "\n"
    return response


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


_DEFINITION = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def _is_definition(node: ast.stmt) -> bool:
    """An import, a definition, an assignment or a bare string: what a prompt may run before the response's function."""
    return isinstance(node, _DEFINITION) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))


def _prompt_head(prompt: str) -> str:
    """What runs before a whole function: the prompt (imports, helpers, the stub) when it only defines things, else its imports."""
    try:
        body = ast.parse(prompt).body
    except (SyntaxError, ValueError):
        return "\n".join(line for line in prompt.splitlines() if re.match(r"(import|from)\s+\w", line))
    if all(_is_definition(node) for node in body):
        return prompt
    return "\n".join(ast.get_source_segment(prompt, node) or "" for node in body if isinstance(node, (ast.Import, ast.ImportFrom)))


def _as_body(code: str) -> str:
    """A completion of the prompt: indented one level when its first code line starts at column 0."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first and not first[0].isspace():
        return textwrap.indent(code, "    ")
    return code


def build_program(reference: Reference, response: str) -> tuple[str, list[str]]:
    """(the program, the tests run after it one by one) for one response."""
    names = called_names(reference.tests, reference.entry_point)
    code = extract_code(response, names)
    if reference.test is not None:
        prompt = reference.prompt if reference.prompt.endswith("\n") or not reference.prompt else reference.prompt + "\n"
        if _defines(code, names):
            program = f"{_prompt_head(prompt)}\n{textwrap.dedent(code)}\n"
        else:
            program = f"{prompt}{_as_body(code)}\n"
        return program, [f"{reference.test}\ncheck({reference.entry_point})"]
    return f"{reference.setup or ''}\n{textwrap.dedent(code)}\n", list(reference.tests or ())


class CodeScorer:
    """Functional correctness: the response's code passes every test (pass@1; pass@k over samples)."""

    name = "code"
    metric = "pass@1"
    runs_code = True
    needs = "'tests' or 'test' + 'entry_point'"

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def fits(self, reference: Reference) -> bool:
        return reference.has_code_tests

    def score(self, reference: Reference, response: str) -> Verdict:
        if not reference.has_code_tests:
            return Verdict(None)
        program, tests = build_program(reference, response)
        # the tests run outside the sandbox, beside the reference's own code (prompt helpers, setup)
        trusted = reference.prompt if reference.test is not None else reference.setup or ""
        calls = (reference.entry_point,) if reference.entry_point else ()
        result = run_python(program, tests, self.limits, trusted=trusted, calls=calls)
        detail: dict[str, Any] = {"status": result.status}
        for key in ("failed_test", "error"):
            if getattr(result, key):
                detail[key] = getattr(result, key)
        return Verdict(result.passed, detail)
