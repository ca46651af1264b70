"""The scheduler reaches each stage only through the entry the stage offers schedulers, and no stage imports it.

`t3d.pipeline.stage` (collect) and `t3d.trainer.stages` (distill, eval) are those
entries: option tree, config, `run`, what the outputs say. Every import in scheduler/,
function-local ones included, is read from the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import t3d.scheduler

SCHEDULER = Path(t3d.scheduler.__file__).resolve().parent
ROOT = SCHEDULER.parent
STAGE_PACKAGES = ("t3d.pipeline", "t3d.trainer")
ENTRIES = {
    "t3d.pipeline.stage",  # t3d-collect as a stage
    "t3d.trainer.stages",  # t3d-distill and t3d-eval as stages
    "t3d.pipeline.cluster",  # joining or starting Ray, shared by t3d-collect and t3d-run (no stage logic)
}


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module in STAGE_PACKAGES)
    return names


def stage_internals(source: str) -> set[str]:
    """Modules of the stage packages an import reaches, other than their scheduler entries."""
    return {n for n in imported_modules(source) if n.startswith(STAGE_PACKAGES) and n not in ENTRIES}


def test_the_scheduler_uses_only_the_stages_entries():
    found = {p.name: sorted(bad) for p in sorted(SCHEDULER.glob("*.py")) if (bad := stage_internals(p.read_text()))}
    assert not found, f"the scheduler reaches into a stage (use t3d.pipeline.stage / t3d.trainer.stages): {found}"


def test_no_stage_imports_the_scheduler():
    found = [str(p.relative_to(ROOT)) for folder in ("dllm", "pipeline", "trainer", "storage_schemas", "tools")
             for p in sorted((ROOT / folder).rglob("*.py"))
             if any(n.startswith("t3d.scheduler") for n in imported_modules(p.read_text()))]  # fmt: skip
    assert not found, f"a stage imports the scheduler: {found}"


@pytest.mark.parametrize("line", ["from t3d.trainer.config import TREE", "import t3d.trainer.checkpoint",
                                  "from t3d.trainer import checkpoint", "from t3d.pipeline.collect import plan_run"])  # fmt: skip
def test_the_check_sees_a_reach_into_a_stage(line):
    assert stage_internals(f"def f():\n    {line}\n")
    assert not stage_internals("from t3d.trainer.stages import DISTILL\nfrom t3d.pipeline.stage import COLLECT\n")
