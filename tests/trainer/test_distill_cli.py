"""`t3d-distill` on good and bad input: one-line errors, non-zero exit, no traceback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.distill import app

REQUIRED = ("--data", "--model", "--out", "--config", "--max-steps", "--batch-size", "--grad-accum", "--lr", "--loss",
            "--alpha", "--beta", "--lambda-path", "--path-k-steps", "--round-every", "--state-order", "--num-workers",
            "--address", "--resume", "--seed", "--save-every")  # fmt: skip


def invoke(data, model, out, *extra):
    args = ["--data", str(data), "--model", str(model), "--out", str(out), "--max-steps", "2", "--batch-size", "4",
            "--no-progress", "--device", "cpu", "--warmup-steps", "0", *map(str, extra)]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_help_lists_every_option_of_the_issue():
    result = subprocess.run([sys.executable, "-m", "t3d.trainer.distill", "--help"], capture_output=True, text=True,
                            env=os.environ | {"COLUMNS": "200"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    for option in REQUIRED:
        assert option in result.stdout, option


def test_config_file_and_flags(kit, teachers, datasets, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{datasets["bidirectional"]}"\nmax-steps = 3\nloss = "ce"\n[train]\nbatch_size = 2\n')
    result = CliRunner().invoke(app, ["--config", str(config), "--model", str(teachers["bidirectional"]),
                                      "--out", str(tmp_path / "out"), "--max-steps", "2", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["rows"] == 2 and "ce" in lines[0]  # flag over file; file over default
    assert "global batch 2 rows" in result.stdout and "tokens per step" in result.stdout


def test_an_address_with_no_cluster_is_refused_at_once(one_line_error, teachers, datasets, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    result = invoke(datasets["bidirectional"], teachers["bidirectional"], out, "--num-workers", "2", "--address", f"127.0.0.1:{port}")
    one_line_error(result, f"no Ray cluster at 127.0.0.1:{port}")
    assert not out.exists()


def test_missing_and_empty_data_directories(one_line_error, teachers, tmp_path):
    one_line_error(invoke(tmp_path / "nope", teachers["bidirectional"], tmp_path / "o"), "not found", "nope")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke(tmp_path / "empty", teachers["bidirectional"], tmp_path / "o"), "empty")


def test_missing_directory_in_a_real_process(teachers, tmp_path):
    result = subprocess.run([sys.executable, "-m", "t3d.trainer.distill", "--data", str(tmp_path / "nope"),
                             "--model", str(teachers["bidirectional"])], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().startswith("error: data directory not found")
    assert "Traceback" not in result.stderr


def test_schema_version_mismatch(one_line_error, dataset_copy, teachers, tmp_path):
    data = dataset_copy()
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["schema_version"] = 999
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(invoke(data, teachers["bidirectional"], tmp_path / "o"), "schema version 999")


def _corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupted_shard_is_named_and_can_be_skipped(one_line_error, dataset_copy, teachers, tmp_path):
    data = dataset_copy()
    _corrupt(data / "shard-00001.parquet")
    one_line_error(invoke(data, teachers["bidirectional"], tmp_path / "a"), "shard-00001", "checksum")
    result = invoke(data, teachers["bidirectional"], tmp_path / "b", "--skip-bad-shards")
    assert result.exit_code == 0, result.output
    assert "skipping bad shard shard-00001" in result.output
    assert "32 rows in 2 shards" in result.output


def test_student_vocabulary_must_match_the_teacher(one_line_error, datasets, tmp_path):
    other = build_checkpoint(tmp_path / "wide", "bidirectional", vocab_size=80, max_position_embeddings=32)
    one_line_error(invoke(datasets["bidirectional"], other, tmp_path / "o"), "vocabulary", "80")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(one_line_error, teachers, datasets, tmp_path):
    out = tmp_path / "o"
    # a learning rate of 1e30 makes the weights explode after the first step
    result = invoke(datasets["bidirectional"], teachers["bidirectional"], out, "--lr", "1e30", "--save-every", "1",
                    "--max-steps", "5")  # fmt: skip
    one_line_error(result, "at step 2", "last good checkpoint", ckpt.step_name(1))
    assert any(w in result.stderr for w in ("nan", "inf"))
    assert ckpt.latest_checkpoint(out).name == ckpt.step_name(1)
    assert not (out / "checkpoints" / ckpt.step_name(2)).exists() and not (out / "student").exists()
    load_model(out / "checkpoints" / ckpt.step_name(1))  # still a loadable model


@pytest.mark.parametrize("flags, words", [(["--loss", "mse"], "mse"), (["--resume"], "no checkpoint")])
def test_bad_options(one_line_error, teachers, datasets, tmp_path, flags, words):
    one_line_error(invoke(datasets["bidirectional"], teachers["bidirectional"], tmp_path / "o", *flags), words)


def test_multi_worker_runs_check_the_inputs_before_starting_ray(one_line_error, datasets, tmp_path):
    other = build_checkpoint(tmp_path / "wide", "bidirectional", vocab_size=80, max_position_embeddings=32)
    result = invoke(datasets["bidirectional"], other, tmp_path / "o", "--num-workers", "2")
    one_line_error(result, "vocabulary")
    assert not (tmp_path / "o").exists()  # failed before any worker (or Ray) started
