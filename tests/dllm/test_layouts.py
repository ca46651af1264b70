"""Published benchmark files load as they are (JSONL, JSON, Parquet, a save_to_disk folder) and are graded per record.

The rows are in tests/data/published_layouts.json: two records of each layout in its real
field names, with the reference answer each must yield and a right and a wrong response.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.layouts import MBPP_INSTRUCTION, FieldMap
from t3d.dllm.prompt_files import describe_layouts, read_prompt_file, record_from_value, require_prompts
from t3d.dllm.scoring import choose_scorer, text_scorer

DATA = json.loads((Path(__file__).parents[1] / "data" / "published_layouts.json").read_text())["layouts"]
CODE = {"MBPP", "MBPP sanitized", "HumanEval"}


def write(rows: list[dict], path: Path) -> Path:
    """`rows` as the file a user downloads: JSONL, a JSON list, or Parquet (one column per field)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("layout", list(DATA))
def test_each_published_layout_loads_as_it_is(tmp_path, layout, suffix):
    case = DATA[layout]
    records = read_prompt_file(write(case["rows"], tmp_path / f"bench{suffix}"))
    assert [r.layout.split(" (")[0] for r in records] == [layout, layout]
    judged = "code tests" if layout in CODE else "math answers"
    assert describe_layouts(records).startswith(f"{records[0].layout} layout: 2 records, {judged}")
    if layout in CODE:
        assert all(r.reference().has_code_tests and r.answer is None for r in records)
    else:
        assert [r.answer for r in records] == case["answers"]  # after ####, the last \boxed{} (nested braces), or the field


@pytest.mark.parametrize("layout", list(DATA))
def test_each_layout_is_graded_per_record_right_passes_wrong_fails(tmp_path, layout):
    case = DATA[layout]
    records = read_prompt_file(write(case["rows"], tmp_path / "bench.jsonl"))
    grading = choose_scorer("auto", records, "bench.jsonl")
    assert grading.judges == (("code",) if layout in CODE else ("math",)) * 2 and not grading.unjudged
    scorer = text_scorer("auto")
    right = [scorer.score(r.reference(), text).correct for r, text in zip(records, case["right"])]
    wrong = [scorer.score(r.reference(), text).correct for r, text in zip(records, case["wrong"])]
    assert right == [True, True] and wrong == [False, False]


def test_mbpp_prompt_shows_the_task_and_its_tests():
    original, sanitized = (read_prompt_file_rows(DATA[name]["rows"][:1])[0] for name in ("MBPP", "MBPP sanitized"))
    tests = "\n".join(DATA["MBPP"]["rows"][0]["test_list"])
    assert original.prompt == MBPP_INSTRUCTION.format(text=DATA["MBPP"]["rows"][0]["text"], tests=tests)
    assert original.prompt.endswith("Your code should pass these tests:\n" + tests)
    assert sanitized.prompt.startswith("You are an expert Python programmer, and here is your task:\nWrite a function that returns")
    volume = read_prompt_file_rows(DATA["MBPP"]["rows"][1:])[0]
    assert volume.setup == "from math import isclose" and volume.tests == tuple(DATA["MBPP"]["rows"][1]["test_list"])  # not the challenge tests
    assert read_prompt_file_rows(DATA["MBPP sanitized"]["rows"][1:])[0].setup == "import math"


def read_prompt_file_rows(rows):
    return [record_from_value(row, f"row {i}") for i, row in enumerate(rows)]


def test_a_save_to_disk_folder_loads_and_a_dataset_dict_names_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = DATA["GSM8K"]["rows"]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "gsm8k"))
    records = read_prompt_file(tmp_path / "gsm8k")
    assert [r.answer for r in records] == ["72", "10"] and records[0].where == f"{tmp_path / 'gsm8k'} record 0"
    sharded = tmp_path / "mbpp"
    datasets.Dataset.from_list(DATA["MBPP"]["rows"] * 3).save_to_disk(str(sharded), num_shards=2)
    assert len(read_prompt_file(sharded)) == 6 and len(list(sharded.glob("data-*.arrow"))) == 2
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"holds several splits \(train, test\): pass one split's folder, e.g. .*dd/train$"):
        read_prompt_file(tmp_path / "dd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a dataset saved by datasets' save_to_disk"):
        read_prompt_file(tmp_path / "plain")


def test_a_file_mixing_math_and_code_rows_is_graded_per_row(tmp_path):
    rows = [DATA["GSM8K"]["rows"][0], DATA["MBPP"]["rows"][0], DATA["HumanEval"]["rows"][0], DATA["MATH-500"]["rows"][0], {"prompt": "Say hi."}]
    records = read_prompt_file(write(rows, tmp_path / "mixed.jsonl"))
    grading = choose_scorer("auto", records, "mixed.jsonl")
    assert grading.judges == ("math", "code", "code", "math", None) and grading.metric == "accuracy"
    assert grading.describe().endswith(f"1 record had nothing to grade it by (no answer, no tests): {tmp_path / 'mixed.jsonl'} line 5")
    assert "GSM8K (question, answer) layout: 1 record, math answers" in describe_layouts(records)
    scorer = text_scorer("auto")
    responses = [DATA["GSM8K"]["right"][0], DATA["MBPP"]["wrong"][0], DATA["HumanEval"]["right"][0], DATA["MATH-500"]["wrong"][0], "hi"]
    verdicts = [scorer.score(r.reference(), text) for r, text in zip(records, responses)]
    assert [v.correct for v in verdicts] == [True, False, True, False, None]
    assert [v.detail.get("scorer") for v in verdicts] == ["math", "code", "code", "math", None]


def test_field_options_read_any_other_layout(tmp_path):
    rows = [{"instruction": "What is 6 x 7?", "gold": "42", "checks": None}, {"instruction": "Write f.", "gold": None, "checks": ["assert f() == 1"]}]
    path = write(rows, tmp_path / "custom.parquet")
    with pytest.raises(UserError, match=r"record 0: no known layout has these fields \(instruction, gold\); known: HumanEval"):
        read_prompt_file(path)
    records = read_prompt_file(path, FieldMap(prompt="instruction", answer="gold", tests="checks"))
    assert [(r.prompt, r.answer, r.tests) for r in records] == [("What is 6 x 7?", "42", None), ("Write f.", None, ("assert f() == 1",))]
    assert choose_scorer("auto", records, "custom").judges == ("math", "code")
    with pytest.raises(UserError, match=r"custom.parquet: --answer-field 'answer_text' names no field of its records \(fields: instruction, gold, checks\)$"):
        read_prompt_file(path, FieldMap(prompt="instruction", answer="answer_text"))


def test_the_setup_field_runs_before_the_tests(tmp_path):
    rows = [{"task": "Write double.", "checks": ["assert double(square(3)) == 18"], "helpers": "def square(x):\n    return x * x\n"}]
    path = write(rows, tmp_path / "custom.jsonl")
    (record,) = read_prompt_file(path, FieldMap(prompt="task", tests="checks", setup="helpers"))
    assert record.setup == rows[0]["helpers"] and record.tests == tuple(rows[0]["checks"])
    scorer = text_scorer("code")
    assert scorer.score(record.reference(), "def double(x):\n    return 2 * x\n").correct is True
    (bare,) = read_prompt_file(path, FieldMap(prompt="task", tests="checks"))  # without its setup, the tests cannot pass
    assert scorer.score(bare.reference(), "def double(x):\n    return 2 * x\n").correct is False
    with pytest.raises(UserError, match=r"--setup-field 'setup_code' names no field of its records"):
        read_prompt_file(path, FieldMap(prompt="task", tests="checks", setup="setup_code"))


def test_a_real_checkpoint_without_prompts_is_refused(tmp_path):
    real = tmp_path / "sdar"
    real.mkdir()
    (real / "config.json").write_text('{"model_type": "sdar"}')
    with pytest.raises(UserError, match=r"^--model .*sdar is a real checkpoint, not the built-in teacher: pass --prompts FILE .* --prompts builtin:train"):
        require_prompts(str(real), None, "train")
    require_prompts(str(real), "gsm8k.jsonl", "train")  # given: fine
    require_prompts("builtin", None, "train")  # the built-in teacher: its own task
    built = tmp_path / "pretrained"
    built.mkdir()
    (built / "config.json").write_text('{"model_type": "llama", "t3d_task_seed": 0}')
    require_prompts(str(built), None, "train")  # made on the built-in task (t3d-pretrain, or its student)


def test_json_lines_under_a_json_name_load(tmp_path):
    """`datasets.Dataset.to_json("test.json")` writes one record per line: such a file is read as JSONL."""
    path = tmp_path / "test.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in DATA["MATH-500"]["rows"]))
    assert [r.answer for r in read_prompt_file(path)] == DATA["MATH-500"]["answers"]


def test_unfenced_code_with_prose_around_it_is_graded(tmp_path):
    record = read_prompt_file(write(DATA["MBPP"]["rows"][:1], tmp_path / "mbpp.jsonl"))[0]
    scorer = text_scorer("auto")
    right = "Sure, here it is:\ndef square_perimeter(a):\n    return 4 * a\n\nIt multiplies the side by four."
    wrong = "Sure, here it is:\ndef square_perimeter(a):\n    return a * a\n\nIt squares the side."
    assert scorer.score(record.reference(), right).correct is True
    assert scorer.score(record.reference(), wrong).correct is False
