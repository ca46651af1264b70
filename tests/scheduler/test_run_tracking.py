"""t3d-run: `[run] report-to` passed to the distill and eval stages, checked before any stage runs; the preset auto pins."""

import sys

from typer.testing import CliRunner

from t3d.scheduler import run_config as rc
from t3d.scheduler.run import build_app


def test_run_report_to_reaches_distill_and_eval_unless_the_stage_names_its_own(tmp_path):
    file = {"run": {"out": str(tmp_path), "report-to": "tensorboard"}, "eval": {"report-to": "none"}}
    spec = rc.parse_spec(file, {}, "job.toml")
    assert rc.distill_config(spec, 1).tracking.backends == ("tensorboard",)
    assert rc.eval_config(spec, 1).tracking.backends == ()  # [eval]'s own value wins
    name = tmp_path.name
    assert rc.distill_config(spec, 2).tracking.run_name == f"{name}-round-2-distill"  # the tracker's run says where it is
    assert rc.eval_config(spec, 1).tracking.run_name == f"{name}-round-1-eval"
    spec = rc.parse_spec({"run": {"out": str(tmp_path)}}, {}, "job.toml")
    assert rc.distill_config(spec, 1).tracking.backends == () and rc.eval_config(spec, 1).tracking.backends == ()


def test_trackers_do_not_decide_whether_a_finished_stage_is_reused(tmp_path):
    quiet = rc.parse_spec({"run": {"out": str(tmp_path)}}, {}, "job.toml")
    loud = rc.parse_spec({"run": {"out": str(tmp_path), "report-to": "tensorboard"}}, {}, "job.toml")
    assert rc.eval_record(rc.eval_config(quiet, 1)) == rc.eval_record(rc.eval_config(loud, 1))
    assert rc.distill_changes(rc.distill_config(quiet, 1), rc.distill_config(loud, 1)) == []


def test_a_missing_tracker_library_stops_the_run_before_any_stage(one_line_error, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "job.toml"
    file.write_text(f'[run]\nout = "{tmp_path / "run"}"\nreport-to = "wandb"\n')
    one_line_error(CliRunner().invoke(build_app(), [str(file)]), "--report-to wandb", "pip install wandb")
    assert not (tmp_path / "run").exists()
    file.write_text(f'[run]\nout = "{tmp_path / "run"}"\nreport-to = "wandbb"\n')
    one_line_error(CliRunner().invoke(build_app(), [str(file)]), "'wandbb' is not a tracker")


def test_auto_is_pinned_by_round_ones_model(real_fixtures, tmp_path):
    file = {"run": {"out": str(tmp_path)}, "collect": {"model": str(real_fixtures / "sdar")}}
    spec = rc.parse_spec(file, {}, "job.toml")
    assert rc.distill_values(spec, 1)["preset"] == rc.distill_values(spec, 2)["preset"] == "paper-2b"
