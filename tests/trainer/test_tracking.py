"""`--report-to`: the JSONL's metrics reach TensorBoard / W&B / MLflow, read back with each library's own reader."""

import json
import sys

import pytest
from typer.testing import CliRunner

from t3d.dllm.errors import UserError
from t3d.trainer.distill import app
from t3d.trainer.tracking import TrackingConfig, backend_names


def distill(data, model, out, *extra):
    args = ["--data", str(data), "--model", str(model), "--out", str(out), "--max-steps", "3", "--batch-size", "4",
            "--no-progress", "--device", "cpu", "--warmup-steps", "0", "--loss", "ce", *map(str, extra)]  # fmt: skip
    return CliRunner().invoke(app, args)


def jsonl(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_jsonl_scalars(teachers, datasets, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    lines = jsonl(out)
    for name in ("loss", "ce", "lr", "grad_norm"):  # the JSONL's names, one point per step, the same values
        points = events.Scalars(name)
        assert [p.step for p in points] == [line["step"] for line in lines]
        assert [p.value for p in points] == pytest.approx([line[name] for line in lines], rel=1e-6)
    assert "step" not in events.Tags()["scalars"]


def test_wandb_offline_writes_its_run_files(teachers, datasets, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-home").mkdir()
    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", "wandb", "--run-name", "probe")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "wandb-home" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb-home").rglob("*"))
    (log,) = runs[0].glob("run-*.wandb")  # the run's record log, what `wandb sync` uploads
    records = log.read_bytes()
    for name in (b"loss", b"ce", b"grad_norm", b"lr", b"probe", b"max_steps"):  # the metrics, the name, the config
        assert name in records, name


def test_mlflow_run_holds_the_loss_per_step(teachers, datasets, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3 wants a database; a file store is enough here
    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", "mlflow", "--project", "probe")
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    lines = jsonl(out)
    assert [m.step for m in history] == [r["step"] for r in lines]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in lines])


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_library_is_one_line_before_anything_loads(one_line_error, teachers, datasets, tmp_path, monkeypatch,
                                                             backend, package):  # fmt: skip
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", f"{backend}")
    one_line_error(result, f"--report-to {backend}", f"pip install {package}")
    assert not out.exists()  # nothing written: the check comes before the model and the output directory


def test_report_to_names_are_checked():
    assert backend_names("tensorboard, wandb") == ("tensorboard", "wandb")
    assert backend_names("none") == () and TrackingConfig().backends == ()
    with pytest.raises(UserError, match="'tensorbord' is not a tracker"):
        TrackingConfig(report_to="tensorbord")
    with pytest.raises(UserError, match="cannot be combined"):
        backend_names("none,wandb")


def test_eval_reports_every_record_under_the_json_names(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from t3d.trainer.eval_cli import app as eval_app

    report = tmp_path / "eval" / "eval.json"
    args = ["--model", "teacher=builtin", "--limit", "3", "--samples-per-prompt", "1", "--steps-per-block", "4,1",
            "--timing-repeats", "1", "--no-warmup", "--json", str(report), "--report-to", "tensorboard"]  # fmt: skip
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "eval" / "tensorboard"))  # beside the JSON
    events.Reload()
    data = json.loads(report.read_text())
    records = data["records"]
    assert len(records) == 2
    for record in records:
        for field in ("quality", "tokens_per_step", "nfe_per_response", "tokens_per_forward"):
            (point,) = events.Scalars(f"{record['model']}/{record['setting']}/{field}")
            assert point.value == pytest.approx(record[field])
    (aup,) = events.Scalars("teacher/aup")
    assert aup.value == pytest.approx(data["aup"]["models"]["teacher"]["aup"])


def test_an_unknown_tracker_is_one_line_and_writes_nothing(one_line_error, teachers, datasets, tmp_path):
    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", "tensorboard,wandbb")
    one_line_error(result, "--report-to 'wandbb' is not a tracker", "tensorboard, wandb, mlflow, none")
    assert not out.exists()


def test_eval_checks_the_tracker_library_before_loading_a_model(one_line_error, tmp_path, monkeypatch):
    import t3d.trainer.eval_cli as eval_cli

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr(eval_cli, "load_model", lambda *a, **k: pytest.fail("a model loaded before the check"))
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_cli.app, ["--model", "teacher=builtin", "--json", str(report), "--report-to", "wandb"])
    one_line_error(result, "--report-to wandb needs the wandb package", "pip install wandb")
    assert not report.exists()


def test_a_resumed_run_replaces_the_tensorboard_steps_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from t3d.trainer.tracking import TensorBoardTracker

    cfg = TrackingConfig(report_to="tensorboard")
    crashed = TensorBoardTracker(cfg, tmp_path, {})
    for step in (1, 2, 3, 4):  # the checkpoint was at step 2; steps 3 and 4 are lost with the crash
        crashed.log({"loss": float(step)}, step)
    crashed.close()
    resumed = TensorBoardTracker(cfg, tmp_path, {}, start_step=2)
    resumed.log({"loss": 30.0}, 3)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(p.step, p.value) for p in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_mlflow_without_a_store_it_can_open_is_one_line_before_anything_loads(one_line_error, teachers, datasets,
                                                                               tmp_path, monkeypatch):  # fmt: skip
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow 3's default: sqlite:///mlflow.db
    monkeypatch.chdir(tmp_path)
    if not mlflow.get_tracking_uri().startswith("sqlite"):
        pytest.skip(f"this MLflow's default store is {mlflow.get_tracking_uri()}, not SQLite")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # what mlflow-skinny lacks
    out = tmp_path / "run"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--report-to", "mlflow")
    one_line_error(result, "--report-to mlflow: the tracking store sqlite:", "needs SQLAlchemy", "MLFLOW_TRACKING_URI")
    assert not out.exists()
