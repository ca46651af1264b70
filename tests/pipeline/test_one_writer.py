"""t3d-collect and t3d-run: one writer per output, and their outputs and teachers fail as one line.

A held --out / --run.out is refused naming its holder (a real process holds it); an
output that cannot be a directory is one line before the teacher is read; a half-written
teacher checkpoint is one line naming the file and leaves no manifest; a dataset this
run started whose teacher then fails on the workers loses its lone manifest, and nothing
else, ever.
"""

from __future__ import annotations

import shutil

import pytest
from t3d_test_support import Holder
from typer.testing import CliRunner

from t3d.pipeline import collect as collect_module
from t3d.scheduler import run as run_module
from t3d.pipeline.collect import build_app as collect_app
from t3d.pipeline.output import discard_if_unstarted, open_output
from t3d.scheduler.run import build_app as run_app
from t3d.storage_schemas import Manifest


def collect(args):
    return CliRunner().invoke(collect_app(), [str(a) for a in args])


def t3d_run(args):
    return CliRunner().invoke(run_app(), [str(a) for a in args])


@pytest.fixture
def no_teacher_read(monkeypatch):
    """Reading the teacher (config, tokenizer, weights) fails the test: the errors under test come first."""

    def boom(*_args, **_kwargs):
        raise AssertionError("the teacher was read before the output was checked")

    monkeypatch.setattr(collect_module, "describe_teacher", boom)
    monkeypatch.setattr(run_module, "preflight", boom)


@pytest.mark.parametrize("command", ["collect", "run"])
@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_an_out_that_cannot_be_a_directory_is_one_line(one_line_error, no_teacher_read, tmp_path, collect_cmd, command, where):
    regular = tmp_path / "regular"
    regular.write_text("mine")
    out = regular if where == "a_file" else regular / "sub"
    words = "exists and is not a directory" if where == "a_file" else f"{regular} is a file"
    if command == "collect":
        one_line_error(collect(collect_cmd(out)), "--out", words)
    else:
        one_line_error(t3d_run(["--run.out", out]), "--run.out", words)
    assert regular.read_text() == "mine"


def test_a_held_dataset_is_refused_naming_the_holder_and_left_alone(one_line_error, no_teacher_read, tmp_path, collect_cmd):
    out = tmp_path / "out"
    Manifest(teacher={"name": "t", "fingerprint": "0123456789abcdef"}).save(out)
    before = (out / "manifest.json").read_text()
    holder = Holder(out, "t3d-collect")
    try:
        one_line_error(collect([*collect_cmd(out), "--overwrite"]),
                       f"{out} is in use by t3d-collect (pid {holder.proc.pid} on host ", "choose another --out")  # fmt: skip
    finally:
        holder.release()
    assert (out / "manifest.json").read_text() == before, "--overwrite of a held dataset deleted nothing"


def test_a_held_run_directory_is_refused_before_anything_runs(one_line_error, no_teacher_read, tmp_path):
    out = tmp_path / "job"
    holder = Holder(out, "t3d-run", option="--run.out")
    try:
        one_line_error(t3d_run(["--run.out", out]), f"{out} is in use by t3d-run (pid {holder.proc.pid}", "--run.out")
    finally:
        holder.release()


@pytest.mark.parametrize("existing", [False, True])
def test_a_truncated_teacher_is_one_line_and_leaves_no_manifest(one_line_error, tmp_path, teacher_dir, collect_cmd, existing):
    teacher = tmp_path / "cut"
    shutil.copytree(teacher_dir, teacher)
    weights = teacher / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    args = collect_cmd(out)
    args[args.index("--model") + 1] = str(teacher)
    one_line_error(collect(args), str(weights), "truncated or corrupt")
    assert not (out / "manifest.json").exists()
    assert out.exists() == existing and (not existing or list(out.iterdir()) == [])


def _open(out):
    """open_output as t3d-collect calls it: starts a dataset, or resumes the one there."""
    return open_output(out, collect_config={"dataset_key": {"seed": 1}}, teacher={"name": "t", "fingerprint": "f" * 16},
                       skipped={}, overwrite=False)  # fmt: skip


@pytest.mark.parametrize("case", ["fresh", "resumed", "a_shard_landed", "no_failure"])
def test_a_failed_run_discards_only_a_dataset_it_started_that_holds_nothing(tmp_path, case):
    out = tmp_path / "out"
    state = _open(out)
    if case == "resumed":  # a second run into the dataset the first one started
        state = _open(out)
    assert state.resumed == (case == "resumed")
    if case == "a_shard_landed":
        (out / "shard-00000.parquet").write_bytes(b"committed by a worker, not yet listed")
    try:
        with discard_if_unstarted(out, state):
            if case != "no_failure":
                raise RuntimeError("every worker failed to load the teacher")
    except RuntimeError:
        pass
    assert (out / "manifest.json").exists() == (case != "fresh")
    assert (case != "a_shard_landed") or (out / "shard-00000.parquet").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_a_teacher_that_fails_on_the_workers_leaves_no_manifest(tmp_path, teacher_dir, collect_cmd, ray_session):
    """Weights the header check cannot fault (a NaN) fail only when a worker loads them, after the manifest was written."""
    from safetensors.torch import load_file, save_file

    teacher = tmp_path / "nan"
    shutil.copytree(teacher_dir, teacher)
    weights = load_file(teacher / "model.safetensors")
    first = sorted(name for name, t in weights.items() if t.is_floating_point())[0]
    weights[first].view(-1)[0] = float("nan")
    save_file(weights, teacher / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    args = collect_cmd(out, address=ray_session.address)
    args[args.index("--model") + 1] = str(teacher)
    result = collect(args)
    assert result.exit_code == 2 and "NaN" in result.stderr.strip().splitlines()[-1], result.output
    assert not (out / "manifest.json").exists() and not out.exists()
