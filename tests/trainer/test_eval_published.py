"""t3d-eval reads benchmark files as published, grades each row by its own reference, and refuses a real
checkpoint without --prompts; `--grade` reads the same layouts and names the rows it cannot judge.

The rows are tests/data/published_layouts.json (each layout in its real field names).
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from t3d.trainer.eval_cli import app
from t3d.trainer.eval_prompts import load_prompts

DATA = json.loads((Path(__file__).parents[1] / "data" / "published_layouts.json").read_text())["layouts"]
CODE = {"MBPP", "MBPP sanitized", "HumanEval"}


def write(rows, path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("layout", list(DATA))
def test_eval_reads_each_layout_and_judges_each_row(tmp_path, layout, suffix):
    case = DATA[layout]
    prompt_set = load_prompts(write(case["rows"], tmp_path / f"bench{suffix}"))
    kind = "code" if layout in CODE else "math"
    assert prompt_set.notes[0].startswith(f"layout: {layout} (") and prompt_set.notes[1] == f"graded per record: 2 {kind}"
    assert prompt_set.scorer.metric == ("pass@1" if layout in CODE else "accuracy")
    judge = lambda prompt, text: prompt_set.scorer.judge(prompt, (), text).correct  # noqa: E731
    assert [judge(p, t) for p, t in zip(prompt_set.prompts, case["right"])] == [True, True]
    assert [judge(p, t) for p, t in zip(prompt_set.prompts, case["wrong"])] == [False, False]


def test_builtin_prompts_by_name_and_a_mixed_file(tmp_path):
    assert load_prompts("builtin:val", limit=3).source == "builtin:val"
    assert load_prompts(None, limit=3).source == "builtin:test"  # the built-in models' default
    mixed = write([DATA["GSM8K"]["rows"][0], DATA["HumanEval"]["rows"][0], {"prompt": "Say hi."}], tmp_path / "mixed.jsonl")
    prompt_set = load_prompts(mixed)
    assert prompt_set.scorer.metric == "accuracy"  # math and code rows: the share correct
    assert prompt_set.notes[1] == f"graded per record: 1 math, 1 code; 1 record had nothing to grade it by (no answer, no tests): {mixed} line 3"
    texts = [DATA["GSM8K"]["right"][0], DATA["HumanEval"]["wrong"][0], "hi"]
    assert [prompt_set.scorer.judge(p, (), t).correct for p, t in zip(prompt_set.prompts, texts)] == [True, False, None]


def test_a_real_checkpoint_without_prompts_is_refused_before_loading(one_line_error, real_fixtures):
    sdar = real_fixtures / "sdar"
    for spec in (f"teacher={sdar}", str(sdar)):
        one_line_error(run("--model", spec), f"--model {sdar} is a real checkpoint, not the built-in teacher", "--prompts builtin:test")


def test_eval_of_a_real_checkpoint_on_a_published_file(tmp_path, real_fixtures):
    prompts = write(DATA["GSM8K"]["rows"], tmp_path / "gsm8k.parquet")
    result = run("--model", f"teacher={real_fixtures / 'sdar'}", "--prompts", prompts, "--max-new-tokens", "8", "--steps-per-block", "4",
                 "--samples-per-prompt", "1", "--timing-repeats", "1", "--no-warmup", "--json", tmp_path / "eval.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "prompts: layout: GSM8K (question, answer) layout: 2 records, math answers" in result.stderr
    assert "prompts: graded per record: 2 math" in result.stderr
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["prompts"]["grading"] == {"scorer": "auto", "judged_by": {"math": 2}, "unjudged": []}
    record = data["records"][0]
    assert record["quality_metric"] == "accuracy" and record["quality"] is not None  # random weights: judged, not null


def test_grade_judges_each_line_by_its_own_reference_and_names_the_rest(tmp_path):
    lines = [
        DATA["GSM8K"]["rows"][0] | {"response": DATA["GSM8K"]["right"][0]},
        DATA["MATH-500"]["rows"][0] | {"response": DATA["MATH-500"]["wrong"][0]},
        DATA["MBPP"]["rows"][0] | {"response": DATA["MBPP"]["right"][0]},
        DATA["HumanEval"]["rows"][0] | {"response": DATA["HumanEval"]["wrong"][0]},
        {"prompt": "Say hi.", "response": "hi"},
    ]
    path = write(lines, tmp_path / "responses.jsonl")
    result = run("--grade", path, "--samples", tmp_path / "graded.jsonl", "--json", tmp_path / "grade.json")
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, True, False, None]
    assert [g["score_detail"]["scorer"] for g in graded] == ["math", "math", "code", "code", None]
    header, _, row, note = result.stdout.strip().splitlines()
    assert header.split() == ["model", "setting", "prompts", "responses", "judged", "accuracy"]
    assert row.split() == ["responses", "-", "5", "5", "4", "0.500"]  # 2 of the 4 judged; the fifth counts in no share
    assert note == f"graded per record: 2 math, 2 code; 1 record had nothing to grade it by (no answer, no tests): {path} line 5"
    data = json.loads((tmp_path / "grade.json").read_text())
    assert data["scorer"] == "auto" and data["grading"]["unjudged"] == [f"{path} line 5"]


def test_grade_reads_a_parquet_file_in_a_published_layout(tmp_path):
    rows = [r | {"response": text, "model": "m"} for r, text in zip(DATA["Hendrycks MATH"]["rows"], DATA["Hendrycks MATH"]["right"])]
    rows += [r | {"response": text, "model": "m"} for r, text in zip(DATA["Hendrycks MATH"]["rows"], DATA["Hendrycks MATH"]["wrong"])]
    result = run("--grade", write(rows, tmp_path / "math.parquet"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[2].split() == ["m", "-", "2", "4", "4", "0.500", "1.000"]
    assert "graded per record: 4 math" in result.stderr


def test_eval_reads_a_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    case = DATA["MBPP sanitized"]
    datasets.Dataset.from_list(case["rows"]).save_to_disk(str(tmp_path / "mbpp"))
    prompt_set = load_prompts(tmp_path / "mbpp")
    assert prompt_set.notes == ("layout: MBPP sanitized (prompt, test_list) layout: 2 records, code tests", "graded per record: 2 code")
    assert [prompt_set.scorer.judge(p, (), t).correct for p, t in zip(prompt_set.prompts, case["right"])] == [True, True]
    assert [prompt_set.scorer.judge(p, (), t).correct for p, t in zip(prompt_set.prompts, case["wrong"])] == [False, False]
