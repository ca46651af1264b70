"""`t3d-eval` end to end: JSON with every field, the plot, the samples file, bad input.

Tiny random checkpoints with the built-in tokenizer stand in for trained models where a
test checks plumbing; the shipped teacher (`builtin`) is used where it exists.
"""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.loading import BUILTIN_DIR
from t3d.dllm.scoring import Verdict
from t3d.dllm.task import BuiltinTask
from t3d.dllm.tiny import build_checkpoint
from t3d.trainer import eval_decode
from t3d.trainer import evaluate as ev
from t3d.trainer.eval_cli import app

torch.set_num_threads(min(2, torch.get_num_threads()))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECORD_FIELDS = {f.name for f in dataclasses.fields(ev.EvalRecord)}
has_builtin = pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="shipped teacher not in dllm/builtin/ yet")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two random checkpoints speaking the built-in task's vocabulary (teacher, student)."""
    task = BuiltinTask()
    root = tmp_path_factory.mktemp("eval_models")
    common = dict(vocab_size=len(task.vocabulary), mask_id=task.mask_id, pad_id=task.pad_id, eos_id=task.eos_id, tokenizer=task.tokenizer())
    return {name: str(build_checkpoint(root / name, seed=seed, **common)) for name, seed in (("teacher", 0), ("student", 1))}


def run_eval(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr + str(result.exception)
    return result


@pytest.fixture(scope="module")
def tiny_run(tiny_dirs, tmp_path_factory):
    """One CLI run on tiny models at two settings (plus the anchor) with every output file."""
    out = tmp_path_factory.mktemp("eval_out")
    result = run_eval(
        "--model", f"teacher={tiny_dirs['teacher']}", "--model", f"t3d={tiny_dirs['student']}",
        "--prompts", "builtin:test", "--steps-per-block", "2,1", "--limit", "3", "--samples-per-prompt", "2",
        "--json", out / "eval.json", "--plot", out / "eval.png", "--samples", out / "samples.jsonl",
    )  # fmt: skip
    return result, out


def check_report(data: dict, models: list[str], settings: list[str]) -> None:
    """Every record has every field; the anchor and the comparisons are filled in."""
    assert data["schema_version"] == ev.JSON_SCHEMA_VERSION and data["teacher"] == "teacher"
    assert data["prompts"] == {"source": "builtin:test", "quality_metric": "validity", "grading": None}  # a file's: per scorer, unjudged
    assert set(data["models"]) == set(models) and data["machine"]["torch"]
    assert [s["label"] for s in data["settings"]] == settings
    anchor = "static B=4 spb=4"
    expected = [("teacher", anchor)] * (anchor not in settings) + [(m, s) for m in models for s in settings]
    assert [(r["model"], r["setting"]) for r in data["records"]] == expected
    for r in data["records"]:
        assert set(r) == RECORD_FIELDS
        for name in ("quality", "agreement", "distinct", "distinct_valid", "entropy", "true_distinct", "distinct_ratio",
                     "nfe_per_response", "tokens_per_second", "speedup", "nfe_reduction", "speedup_to_nfe_reduction"):  # fmt: skip
            assert r[name] is not None, name
        assert 0 <= r["quality"] <= 1 and 0 <= r["agreement"] <= 1
        assert set(r["truth_extra"]) == {"marker_first_rate", "positional_tv"}
        assert r["speed_baseline"] == f"teacher {anchor}"
        assert r["responses"] == r["prompts"] * r["samples_per_prompt"]
        assert ("gap_closure" in r) and (r["model"] != "teacher" or r["gap_closure"] is None)
    full = data["records"][0]
    assert full["is_full_steps"] and full["agreement"] == 1.0 and full["speedup"] == 1.0
    one_step = [r for r in data["records"] if r["steps_per_block"] == 1]
    assert all(r["tokens_per_step"] == 4.0 and r["nfe_per_response"] <= 4 for r in one_step)
    for r in data["records"]:  # a fixed schedule reveals B / spb per forward, counted
        assert r["tokens_per_forward"] == r["revealed_tokens"] / r["forwards"] == 4 / r["steps_per_block"]
        assert r["forwards"] == round(r["nfe_per_response"] * r["responses"])
    scores = data["aup"]["models"]
    assert set(scores) == set(models) and data["aup"]["x"] == "tokens_per_forward" and data["aup"]["alpha"] == 3.0
    assert data["aup"]["y_max"] == max(100 * r["quality"] for r in data["records"])
    assert all(s["points"] == sum(r["model"] == m for r in data["records"]) for m, s in scores.items())


def test_json_has_every_field(tiny_run):
    result, out = tiny_run
    check_report(json.loads((out / "eval.json").read_text()), ["teacher", "t3d"], ["static B=4 spb=2", "static B=4 spb=1"])
    header = [cell.strip() for cell in result.stdout.splitlines()[0].split("  ") if cell.strip()]
    assert header == ["model", "setting", "tok/step", "validity", "95% CI", "n", "agree", "distinct", "NFE", "tok/fwd", "tok/s",
                      "spread", "speedup", "gap", "gap 95% CI", "AUP"]  # fmt: skip
    table, legend = result.stdout.split("\n\n", 1)
    assert len(table.splitlines()) == 2 + 5  # header, rule, anchor + 2 models x 2 settings
    for column in header[2:]:  # the legend under the table names every column
        assert f"  {column} " in legend, column


@pytest.mark.parametrize("teacher", [pytest.param("builtin", marks=has_builtin), "tiny"])
def test_json_has_every_field_on_the_shipped_teacher(tmp_path, tiny_dirs, teacher):
    """The issue's test: the shipped teacher at two settings, a copy of it as the student
    (the tiny variant runs the same checks until the shipped teacher lands)."""
    path = "builtin" if teacher == "builtin" else tiny_dirs["teacher"]
    run_eval(
        "--model", f"teacher={path}", "--model", f"copy={path}", "--prompts", "builtin:test", "--steps-per-block", "4,1",
        "--limit", "4", "--samples-per-prompt", "2", "--json", tmp_path / "eval.json",
    )  # fmt: skip
    data = json.loads((tmp_path / "eval.json").read_text())
    check_report(data, ["teacher", "copy"], ["static B=4 spb=4", "static B=4 spb=1"])
    teacher, copy = data["records"][:2], data["records"][2:]
    for t, c in zip(teacher, copy):  # same weights, same seeds: same responses
        assert (c["quality"], c["agreement"], c["distinct"]) == (t["quality"], t["agreement"], t["distinct"])
        assert c["gap_closure"] in (None, 0.0)


def test_plot_is_a_png_with_content(tiny_run):
    import matplotlib.image

    _, out = tiny_run
    png = (out / "eval.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    pixels = matplotlib.image.imread(out / "eval.png")  # (H, W, 4) floats
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    rgba = (pixels * 255).astype(np.uint32)  # one integer per pixel: np.unique over rows of a 1 M x 4 array takes seconds
    packed = (rgba[..., 0] << 24) | (rgba[..., 1] << 16) | (rgba[..., 2] << 8) | rgba[..., 3]
    assert len(np.unique(packed)) > 20, "not a blank canvas"


def test_samples_file_has_every_response(tiny_run):
    _, out = tiny_run
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 3 * 2  # (anchor + 2 models x 2 settings) x 3 prompts x 2 samples
    row = rows[0]
    assert {"model", "setting", "prompt", "response", "tokens", "seed", "validity"} <= set(row)
    assert row["model"] == "teacher" and row["prompt"] == BuiltinTask().decode(BuiltinTask().prompts("test")[0])
    assert all(isinstance(t, int) for t in row["tokens"]) and isinstance(row["response"], str)
    seeds = {(r["prompt_index"], r["sample_index"]): r["seed"] for r in rows if r["model"] == "teacher"}
    assert all(seeds[r["prompt_index"], r["sample_index"]] == r["seed"] for r in rows), "same seeds for every model"


class FirstTokenEven:
    """A made-up task metric with a real spread of values on a random model."""

    metric = "even"

    def judge(self, prompt, response, text):
        return Verdict(response[0] % 2 == 0)

    def log_likelihood(self, prompt, response):
        return None

    def against_truth(self, prompt, responses):
        return None


def test_same_weights_close_no_gap_and_agree_like_the_teacher(tiny_dirs):
    model = load_model(tiny_dirs["teacher"])
    prompts = ev.builtin_prompts("test", limit=4)
    prompts = dataclasses.replace(prompts, scorer=FirstTokenEven())
    settings = ev.sampler_settings(block_size=4, max_new_tokens=16, steps_per_block=[1], strategies=["static", "threshold"], threshold=0.001)
    report = ev.evaluate({"teacher": model, "student": model}, prompts, settings, ev.EvalConfig(samples_per_prompt=3, warmup=False))
    full, *teacher = [r for r in report.records if r.model == "teacher"]
    student = [r for r in report.records if r.model == "student"]
    assert full.is_full_steps and full.agreement == 1.0
    for t, s in zip(teacher, student):
        assert (s.quality, s.agreement, s.distinct, s.nfe_per_response) == (t.quality, t.agreement, t.distinct, t.nfe_per_response)
        gap = ev.metrics.gap_closure(t.quality, t.quality, full.quality)
        assert s.gap_closure == gap and (gap is None or gap == 0.0)
        assert s.nfe_reduction > 1.0
    threshold = student[1]
    assert threshold.strategy == "threshold" and threshold.tokens_per_step == threshold.measured_tokens_per_step
    assert report.quality_metric == "even" and "even" in ev.render_table(report).splitlines()[0]


def test_prompt_file_with_answers_reports_accuracy(tiny_dirs, tmp_path):
    prompts = tmp_path / "qa.jsonl"
    prompts.write_text('{"question": "c1 c2", "answer": "#### 4"}\n\n{"prompt": "c3 c3 c0", "answer": 7}\n{"prompt": "c5 c6"}\n')
    run_eval("--model", f"teacher={tiny_dirs['teacher']}", "--prompts", prompts, "--steps-per-block", "1",
             "--samples-per-prompt", "1", "--json", tmp_path / "eval.json", "--samples", tmp_path / "s.jsonl")  # fmt: skip
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["prompts"]["quality_metric"] == "accuracy"
    assert all(r["prompts"] == 3 and r["quality"] is not None and r["true_distinct"] is None for r in data["records"])
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    judged = [r for r in rows if r["prompt_index"] in (0, 1)]
    assert judged and all(isinstance(r["accuracy"], bool) for r in judged)  # the per-sample verdict
    assert {r["score_detail"]["reference"] for r in judged} == {"4", "7"}  # the parsed answers beside it
    assert all({"extracted", "parsed", "reference_parsed", "method"} <= set(r["score_detail"]) for r in judged)
    assert all(r["accuracy"] is None for r in rows if r["prompt_index"] == 2)  # no answer, nothing to judge


def test_prompt_file_with_tests_reports_pass_at_k(tiny_dirs, tmp_path):
    """The tiny model writes no Python: every sample fails its tests, and each says how."""
    prompts = tmp_path / "code.jsonl"
    prompts.write_text(json.dumps({"prompt": "c1 c2", "tests": ["assert f(1) == 2"]}) + "\n")
    run_eval("--model", f"teacher={tiny_dirs['teacher']}", "--prompts", prompts, "--steps-per-block", "1",
             "--samples-per-prompt", "2", "--json", tmp_path / "eval.json", "--samples", tmp_path / "s.jsonl")  # fmt: skip
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["prompts"]["quality_metric"] == "pass@1"
    assert all(r["quality"] == 0.0 and r["pass_at_k"] == {"pass@1": 0.0, "pass@2": 0.0} for r in data["records"])
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert all(r["pass@1"] is False and r["score_detail"]["status"] in ("error", "failed") for r in rows)


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_prompt_files_in_json_and_parquet(tmp_path, suffix):
    rows = [{"prompt": "c1 c2", "answer": "3"}, {"question": "c4 c5 c6", "answer": None}]
    path = tmp_path / f"p{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows + ["c7 c0", {"prompt": [5, 6]}]))  # a bare string; token ids
    else:
        import polars as pl

        pl.DataFrame(rows).write_parquet(path)
    loaded = ev.load_prompt_file(path)
    assert [(p.text, p.answer) for p in loaded.prompts][:2] == [("c1 c2", "3"), ("c4 c5 c6", None)]
    assert loaded.scorer.metric == "accuracy"
    assert len(ev.load_prompt_file(path, limit=1).prompts) == 1
    if suffix == ".json":
        assert [(p.text, p.ids) for p in loaded.prompts[2:]] == [("c7 c0", None), ("5 6", (5, 6))]  # ids used as they are


def bad_input(tmp_path, tiny_dirs):
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": "c1 c2"}\n{"prompt": "c1 \n')
    keyless = tmp_path / "keyless.jsonl"
    keyless.write_text('{"prompt": "c1 c2"}\n{"txt": "c1"}\n')
    badtests = tmp_path / "badtests.jsonl"
    badtests.write_text('{"prompt": "c1", "tests": ["assert f(1) == 1"]}\n{"prompt": "c2", "tests": ["assert f(1) =="]}\n')
    half = tmp_path / "half.jsonl"
    half.write_text('{"prompt": "c1 c2", "answer": "3"}\n{"prompt": "c1"}\n')
    model = f"teacher={tiny_dirs['teacher']}"
    toy = ["--prompts", "builtin:test"]  # a checkpoint not made on the built-in task gets its prompts by name only
    return {
        "missing prompts": (["--prompts", tmp_path / "nope.jsonl"], "prompts file not found"),
        "malformed line": (["--prompts", malformed], "bad.jsonl line 2: malformed JSON"),
        "no prompt field": (["--prompts", keyless], "keyless.jsonl line 2: no known layout has these fields (txt)"),
        "unknown model": (["--model", f"t3d={tmp_path / 'no_such_model'}", "--limit", "1"], "model directory not found"),
        "bad steps list": ([*toy, "--model", model, "--steps-per-block", "4,x"], "--steps-per-block must be a comma-separated list"),
        "zero steps": ([*toy, "--model", model, "--steps-per-block", "2,0"], "--steps-per-block must be a comma-separated list"),
        "steps above block": ([*toy, "--model", model, "--steps-per-block", "8", "--limit", "1"], "steps_per_block must be between 1"),
        "unknown strategy": ([*toy, "--model", model, "--strategy", "greedy"], "--strategy must name"),
        "unknown teacher": ([*toy, "--model", model, "--teacher", "t9", "--limit", "1"], "--teacher 't9' is not one of"),
        "duplicate label": ([*toy, "--model", model, "--model", model], "given twice"),
        "malformed tests": (["--prompts", badtests], "badtests.jsonl line 2: tests[0] is not valid Python (SyntaxError"),
        "scorer misfit": (["--prompts", half, "--scorer", "exact"], "half.jsonl line 2: --scorer exact needs an 'answer'"),
        "builtin scorer on a file": (["--prompts", half, "--scorer", "builtin"], "--scorer builtin judges only the built-in"),
        "unknown scorer": (["--scorer", "regex"], "--scorer must be one of"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing prompts", "malformed line", "no prompt field", "unknown model", "bad steps list", "zero steps",
     "steps above block", "unknown strategy", "unknown teacher", "duplicate label", "malformed tests", "scorer misfit",
     "builtin scorer on a file", "unknown scorer"],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_dirs, case):
    args, message = bad_input(tmp_path, tiny_dirs)[case]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_timing_warms_up_each_setting_then_takes_the_median_of_the_repeats(tiny_dirs, monkeypatch):
    """One untimed call per model and setting before its timed passes; seconds = median of the passes."""
    calls = []
    real = eval_decode.sample

    def spy(model, rows, setting, seeds):  # the real sampler, with a record of each call
        calls.append((setting.steps_per_block, len(rows)))
        return real(model, rows, setting, seeds)

    monkeypatch.setattr(eval_decode, "sample", spy)
    model = load_model(tiny_dirs["teacher"])
    settings = ev.sampler_settings(block_size=4, max_new_tokens=8, steps_per_block=[2, 1])
    config = ev.EvalConfig(samples_per_prompt=3, batch_size=4, timing_repeats=3)
    report = ev.evaluate({"teacher": model}, ev.builtin_prompts("test", limit=2), settings, config)
    per_setting = [[n for spb, n in calls if spb == s] for s in (4, 2, 1)]  # anchor first, then the settings
    assert per_setting == [[4] + [4, 2] * 3] * 3  # warm-up on the first batch, then 3 passes of 6 rows in 4 + 2
    for r in report.records:
        assert r.timing_repeats == 3 and r.seconds_spread is not None and r.seconds_spread >= 0


def test_intervals_and_noise_flags_are_in_the_json(tiny_run):
    _, out = tiny_run
    data = json.loads((out / "eval.json").read_text())
    assert data["intervals"]["level"] == 0.95 and data["intervals"]["seed"] == 0 and "agree" in data["legend"]
    for r in data["records"]:
        low, high = r["quality_interval"]
        assert low <= r["quality"] <= high
        assert r["speed_noisy"] is True, "one timed pass cannot support a speed-up"
        assert (r["gap_closure_interval"] is None) == (r["gap_closure"] is None)


def test_a_bare_path_is_labelled_after_its_directory_and_the_first_model_is_the_teacher(tiny_dirs, tmp_path):
    from t3d.trainer.eval_cli import path_label, unique_labels

    assert path_label("/models/SDAR-4B-Chat/") == "SDAR-4B-Chat"
    assert path_label("runs/sdar-student/student") == "sdar-student"
    assert [label for label, _ in unique_labels(["a/round-1/distill/student", "b/round-1/distill/student", "t=builtin"])] == [
        "a/round-1", "b/round-1", "t"]  # fmt: skip
    (tmp_path / "SDAR-mini").symlink_to(tiny_dirs["teacher"])
    (tmp_path / "sdar-student").mkdir()
    (tmp_path / "sdar-student" / "student").symlink_to(tiny_dirs["student"])
    result = run_eval(
        "--model", tmp_path / "SDAR-mini", "--model", tmp_path / "sdar-student" / "student", "--prompts", "builtin:test",
        "--steps-per-block", "1", "--limit", "2", "--samples-per-prompt", "1", "--no-warmup", "--json", tmp_path / "eval.json",
    )  # fmt: skip
    data = json.loads((tmp_path / "eval.json").read_text())
    assert list(data["models"]) == ["SDAR-mini", "sdar-student"] and data["teacher"] == "SDAR-mini"
    assert "teacher: SDAR-mini (the first --model" in result.stderr
    student = [r for r in data["records"] if r["model"] == "sdar-student"]
    assert student and all(r["agreement"] is not None and r["speedup"] is not None for r in student), "compared with the teacher"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_a_progress_bar_counts_every_decoded_row_on_a_terminal(tiny_dirs, monkeypatch, progress):
    model = load_model(tiny_dirs["teacher"])
    prompts = ev.builtin_prompts("test", limit=3)
    settings = ev.sampler_settings(block_size=4, max_new_tokens=16, steps_per_block=[4, 1])
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    config = ev.EvalConfig(samples_per_prompt=2, batch_size=4, timing_repeats=2, progress=progress)
    ev.evaluate({"teacher": model}, prompts, settings, config)
    total = 2 * (2 * 6 + 4)  # 2 settings x (2 timed passes over 6 rows + a warm-up batch of 4)
    assert (f"/{total} [" in err.getvalue()) == progress, err.getvalue()[-300:]  # the bar's total: every row decoded
    assert "done" not in err.getvalue()
