"""t3d-collect reads benchmark files as published and fills `correct` per row; a real checkpoint needs --prompts.

The rows are tests/data/published_layouts.json (each layout in its real field names). The
teacher is the real-layout SDAR fixture (a tokenizer with a chat template, tiny random
weights): the prompt path up to the work units runs without Ray (`plan_run`).
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from t3d.pipeline.collect import build_app, plan_run
from t3d.pipeline.config import build_config

DATA = json.loads((Path(__file__).parents[1] / "data" / "published_layouts.json").read_text())["layouts"]
CODE = {"MBPP", "MBPP sanitized", "HumanEval"}


def write(rows, path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("layout", list(DATA))
def test_collect_reads_each_layout_and_grades_each_row(tmp_path, real_fixtures, layout, suffix):
    case = DATA[layout]
    prompts = write(case["rows"], tmp_path / f"bench{suffix}")
    cfg = build_config({}, {"model": str(real_fixtures / "sdar"), "prompts": str(prompts), "out": str(tmp_path / "out")})
    plan = plan_run(cfg)
    judged = "code tests" if layout in CODE else "math answers"
    assert plan.notes[0].startswith(f"layout    {layout} (") and plan.notes[0].endswith(f"layout: 2 records, {judged}")
    assert plan.notes[1] == f"grading   graded per record: 2 {'code' if layout in CODE else 'math'}"
    assert plan.scorer == ("code" if layout in CODE else "math") and not (tmp_path / "out").exists()
    tokenizer = plan.teacher.tokenizer
    say = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for prompt, right, wrong in zip(plan.prompts.prompts, case["right"], case["wrong"]):
        assert plan.score(prompt.ids, say(right)) is True
        assert plan.score(prompt.ids, say(wrong)) is False


def test_a_mixed_file_names_the_rows_nothing_grades(tmp_path, real_fixtures, capsys):
    rows = [DATA["GSM8K"]["rows"][0], DATA["MBPP"]["rows"][0], {"prompt": "Say hi."}]
    prompts = write(rows, tmp_path / "mixed.jsonl")
    plan = plan_run(build_config({}, {"model": str(real_fixtures / "sdar"), "prompts": str(prompts), "out": str(tmp_path / "o")}))
    assert plan.scorer == "auto"
    assert plan.notes[1] == f"grading   graded per record: 1 math, 1 code; 1 record had nothing to grade it by (no answer, no tests): {prompts} line 3"
    say = lambda text: plan.teacher.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    gsm, mbpp, bare = plan.prompts.prompts
    assert plan.score(gsm.ids, say(DATA["GSM8K"]["right"][0])) is True
    assert plan.score(mbpp.ids, say(DATA["MBPP"]["right"][0])) is True and plan.score(mbpp.ids, say(DATA["MBPP"]["wrong"][0])) is False
    assert plan.score(bare.ids, say("hi")) is None  # and named above, before any row is collected
    assert plan.manifest_config()["grading"]["unjudged"] == [f"{prompts} line 3"]  # and in the manifest


def test_a_real_checkpoint_without_prompts_is_refused(one_line_error, tmp_path, real_fixtures):
    sdar, out = real_fixtures / "sdar", tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["--model", str(sdar), "--out", str(out), "--max-new-tokens", "16"])
    one_line_error(result, f"--model {sdar} is a real checkpoint, not the built-in teacher: pass --prompts FILE", "--prompts builtin:train")
    assert not out.exists()
    toy = build_config({}, {"model": str(sdar), "prompts": "builtin:train", "out": str(out)})  # asked for by name: allowed
    assert toy.prompts.prompts == "builtin:train"
    result = CliRunner().invoke(build_app(), ["--model", str(sdar), "--prompts", "builtin:test", "--out", str(out)])
    one_line_error(result, "--prompts builtin:test: collect rolls out the built-in task's train or val split")
    assert not out.exists()


def test_a_field_option_naming_no_column_is_one_line_and_writes_nothing(one_line_error, tmp_path, real_fixtures):
    prompts = write(DATA["GSM8K"]["rows"], tmp_path / "gsm8k.parquet")
    out = tmp_path / "out"
    args = ["--model", str(real_fixtures / "sdar"), "--prompts", str(prompts), "--out", str(out), "--answer-field", "final"]
    one_line_error(CliRunner().invoke(build_app(), args), f"{prompts}: --answer-field 'final' names no field of its records (fields: question, answer)")
    assert not out.exists()


@pytest.mark.parametrize("stage", ["collect", "eval"])
def test_t3d_run_refuses_a_real_checkpoint_without_prompts_before_writing(tmp_path, real_fixtures, monkeypatch, stage):
    from t3d.scheduler.run import build_app as run_app

    monkeypatch.chdir(tmp_path)
    sdar = real_fixtures / "sdar"
    gsm8k = write(DATA["GSM8K"]["rows"], tmp_path / "gsm8k.jsonl")
    given = {"collect": f'[eval]\nprompts = "{gsm8k}"\n', "eval": f'prompts = "{gsm8k}"\n'}[stage]  # the other stage's prompts
    job = tmp_path / "job.toml"
    job.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[collect]\nmodel = "{sdar}"\n' + given)
    result = CliRunner().invoke(run_app(), [str(job)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {job} [{stage}]") and "is a real checkpoint, not the built-in teacher: pass --prompts FILE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_a_full_collect_fills_correct_per_row(tmp_path, real_fixtures, ray_session):
    """SDAR (random weights) on a file mixing GSM8K, MBPP and HumanEval rows: every graded row is True or
    False by its own reference, the row with nothing to grade it by is null, and the manifest says auto."""
    from t3d.pipeline.collect import collect
    from t3d.storage_schemas import Dataset, Manifest

    rows = [DATA["GSM8K"]["rows"][0], DATA["MBPP sanitized"]["rows"][0], DATA["HumanEval"]["rows"][0], {"prompt": "Say hi."}]
    flags = {"model": str(real_fixtures / "sdar"), "prompts": str(write(rows, tmp_path / "mixed.jsonl")), "out": str(tmp_path / "out"),
             "max_new_tokens": 8, "rollouts_per_prompt": 2, "address": ray_session.address, "progress": False}  # fmt: skip
    collect(build_config({}, flags))
    table = Dataset.open(tmp_path / "out").scan().collect().sort("prompt_index")
    correct = dict(zip(table["prompt_index"].to_list(), table["correct"].to_list()))
    assert {i: v is None for i, v in correct.items()} == {0: False, 1: False, 2: False, 3: True}
    config = Manifest.load(tmp_path / "out").collect_config
    assert config["scorer"] == "auto" and config["grading"]["judged_by"] == {"math": 1, "code": 2, "none": 1}
    assert config["grading"]["unjudged"] == [f"{tmp_path / 'mixed.jsonl'} line 4"]
