"""`t3d-run`: the whole job as stages on Ray, resumable per stage, from one file; its bad input.

The runs share the test session's Ray (`--run.address`) except where a cluster of its
own is the point (`ray start --head` and a Ray Job submission). Budgets are tiny: the
built-in teacher and task, 8 prompts, 12 distill steps, 4 eval prompts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t3d.scheduler import run_config as rc
from t3d.scheduler.run import build_app

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = [
    "--collect.limit", "8", "--collect.rollouts-per-prompt", "2", "--collect.shard-size", "4", "--collect.no-progress",
    "--distill.max-steps", "12", "--distill.save-every", "4", "--distill.batch-size", "4",
    "--eval.limit", "4", "--eval.samples-per-prompt", "2", "--eval.steps-per-block", "4,1", "--eval.no-warmup",
    "--run.no-progress",
]  # fmt: skip


def t3d_run(args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "t3d-run"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())


def student_tensors(student: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(student.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def assert_same_student(a: Path, b: Path) -> None:
    ta, tb = student_tensors(a), student_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        assert ta[name].equal(tb[name]), name


# --- the spec: sections, precedence, wired keys ------------------------------------------------


def test_sections_layer_defaults_file_flags(tmp_path):
    file = {"run": {"rounds": 2}, "collect": {"limit": 5, "rollout": {"temperature": 0.5}}, "distill": {"max-steps": 50, "lr": 1e-3},
            "eval": {"limit": 3}}  # fmt: skip
    flags = rc.section_flags({"distill__max_steps": 100, "eval__limit": None, "run__out": str(tmp_path)})
    spec = rc.parse_spec(file, flags, "job.toml")
    assert spec.run.rounds == 2 and spec.run.out == str(tmp_path) and spec.run.distill_cpus is None
    collect = rc.collect_config(spec, 1)
    assert collect.prompts.limit == 5 and collect.rollout.sampler.temperature == 0.5 and collect.shard_size == 64
    assert collect.out == str(tmp_path / "round-1" / "trajectories")
    distill = rc.distill_config(spec, 1)
    assert distill.train.max_steps == 100 and distill.optim.lr == 1e-3, "flag over file over preset"
    assert distill.preset == "builtin" and distill.states.path_k_steps == 4, "the built-in teacher's preset below the file"
    assert distill.data.path == collect.out and distill.model.path == "builtin"
    second = rc.distill_config(spec, 2)
    assert second.model.path == str(tmp_path / "round-1" / "distill" / "student") and second.preset == "builtin"
    assert rc.collect_config(spec, 2).teacher.model == second.model.path, "round 2 collects with round 1's student"
    evaluation = rc.eval_config(spec, 2)
    assert evaluation.prompts.limit == 3 and evaluation.models.model[0] == "teacher=builtin"
    assert [m.split("=")[0] for m in evaluation.models.model] == ["teacher", "t3d", "t3d-r2"]


def test_the_builtin_job_carries_the_tuned_recipe():
    spec = rc.parse_spec({}, {}, "the built-in job")
    distill = rc.distill_config(spec, 1)
    expected = {"max_steps": 800, "lr": 3e-4, "beta": 1.0, "lambda_path": 1.0, "path_k_steps": 4, "state_order": "reference"}
    got = rc.distill_tree().values(distill)
    assert {k: got[k] for k in expected} == expected


def test_help_shows_each_stage_option_with_its_default():
    text = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "250"}).output
    for flag, default in (("--run.rounds", 1), ("--collect.rollouts-per-prompt", 4), ("--eval.threshold", 0.9),
                          ("--distill.batch-size", 8), ("--run.out", "./runs/run")):  # fmt: skip
        line = next(line for line in text.splitlines() if f" {flag} " in line)
        assert f"[default: ({default})]" in line, (flag, line)
    assert "--collect.out " not in text and "--distill.resume" not in text, "wired options are not flags"


def test_help_shows_the_distill_tables_defaults_of_the_preset_in_force(tmp_path):
    def shown(*args: str) -> tuple[dict[str, str], str]:
        text = CliRunner().invoke(build_app(["--help", *args]), ["--help", *args], env={"COLUMNS": "400"}).output
        flags = ("--distill.max-steps", "--distill.lr")
        lines = {flag: next(line for line in text.splitlines() if f" {flag} " in line) for flag in flags}
        return lines, " ".join(text.split("The distill table's defaults shown:")[-1].split())

    lines, epilog = shown()  # the built-in job: preset builtin, not the dataclass defaults (1000 steps, lr 1e-4)
    assert "[default: (800, preset builtin)]" in lines["--distill.max-steps"], lines
    assert "[default: (0.0003, preset builtin)]" in lines["--distill.lr"]
    assert epilog.startswith("preset builtin (the default for --model builtin)")
    assert "(1e-05, preset paper)" in shown("--distill.preset", "paper")[0]["--distill.lr"]
    config = tmp_path / "run.toml"
    config.write_text('[distill]\npreset = "paper"\n')
    assert "(1e-05, preset paper)" in shown(str(config))[0]["--distill.lr"]


# --- bad input: one line naming file and key, exit 2, nothing written ------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = {
    "unknown section": ("[colect]\nlimit = 2\n", [], "unknown section [colect] in {file}"),
    "unknown key": ("[collect]\nlimt = 2\n", [], "unknown option 'limt' in {file} [collect]"),
    "key of another stage": ("[eval]\nmax_steps = 2\n", [], "unknown option 'max_steps' in {file} [eval]"),
    "wrong type": ('[distill]\nmax_steps = "ten"\n', [], "option 'max_steps' in {file} [distill] must be int, got 'ten'"),
    "out of range": ("[distill]\nmax_steps = 0\n", [], "{file} [distill]: --max-steps must be >= 1"),
    "wired key": ('[collect]\nout = "x"\n', [], "{file} [collect] out: t3d-run sets it"),
    "bad run value": ("[run]\nrounds = 0\n", [], "{file} [run]: rounds must be at least 1"),
    "missing input": ('[collect]\nprompts = "nope.jsonl"\n', [], "{file} [collect]: prompts file not found"),
    "missing eval input": ('[eval]\nprompts = "nope.jsonl"\n', [], "{file} [eval] prompts: not found"),
    "no cluster": ("", ["--run.address", "127.0.0.1:{port}"], "no Ray cluster at 127.0.0.1:{port}"),
    "bad redo": ("", ["--redo", "train"], "--redo must be one of collect, distill, eval"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case, monkeypatch):
    text, flags, message = BAD[case]
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "job.toml"
    file.write_text(f'[run]\nout = "{tmp_path / "run"}"\n' * ("[run]" not in text) + text)
    port = free_port()
    result = CliRunner().invoke(build_app(), [str(file), *[f.format(port=port) for f in flags]])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message.format(file=file, port=port) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.ray
def test_resources_the_cluster_lacks_are_refused(tmp_path, ray_session):
    file = tmp_path / "job.yaml"
    file.write_text(f"run:\n  out: {tmp_path / 'run'}\n  distill_gpus: 1\n")
    result = CliRunner().invoke(build_app(), [str(file), "--run.address", ray_session.address])
    assert result.exit_code == 2, result.output
    assert f"error: {file} [run] distill_gpus: no node of the Ray cluster has" in result.stderr and "0 GPU" in result.stderr
    result = CliRunner().invoke(build_app(), [str(file), "--run.distill-gpus", "0", "--collect.cpus-per-worker", "64"])
    assert f"error: {file} [collect] cpus_per_worker: no node of the Ray cluster has 64 CPU" in result.stderr
    assert not (tmp_path / "run").exists()


# --- whole runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, ray_session):
    """The built-in job with a small budget and rounds = 2, on the session's Ray."""
    out = tmp_path_factory.mktemp("run") / "job"
    result = t3d_run([*SMALL, "--run.out", out, "--run.rounds", "2", "--run.address", ray_session.address])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_default_run_writes_run_json_the_table_and_a_plot(two_rounds):
    out, result = two_rounds
    data = json.loads((out / "run.json").read_text())
    assert data["finished"] and len(data["rounds"]) == 2
    for rnd in data["rounds"]:
        assert set(rnd["stages"]) == {"collect", "distill", "eval"}
        assert all(s["status"] == "done" and s["seconds"] > 0 and s["config"] for s in rnd["stages"].values())
    assert data["rounds"][0]["stages"]["distill"]["outputs"]["step"] == 12
    assert data["sections"]["distill"]["max_steps"] == 12 and data["run"]["rounds"] == 2
    table = data["table"]
    assert table.splitlines()[0].split()[:4] == ["model", "setting", "tok/step", "validity"]
    assert {line.split()[0] for line in table.splitlines()[2:]} == {"teacher", "t3d", "t3d-r2"}
    assert table in result.stdout
    assert (out / "eval.png").read_bytes()[:8] == PNG and (out / "round-2" / "eval" / "eval.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_round_two_collects_with_round_ones_student(two_rounds):
    from t3d.dllm import load_model
    from t3d.storage_schemas import Manifest

    out, _ = two_rounds
    student = load_model(out / "round-1" / "distill" / "student")
    teacher = Manifest.load(out / "round-2" / "trajectories").teacher
    assert teacher["fingerprint"] == student.fingerprint != Manifest.load(out / "round-1" / "trajectories").teacher["fingerprint"]
    data = json.loads((out / "run.json").read_text())
    assert data["rounds"][1]["stages"]["collect"]["outputs"]["teacher_fingerprint"] == student.fingerprint
    assert data["rounds"][1]["stages"]["distill"]["config"]["model"]["path"] == str(out / "round-1" / "distill" / "student")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_driver_killed_during_distill_resumes_it_and_ends_with_the_same_student(two_rounds, ray_session, tmp_path):
    """SIGKILL while distill trains; the same command again: collect skipped, distill resumed, same weights."""
    reference, _ = two_rounds
    out = tmp_path / "job"
    args = [*SMALL, "--run.out", out, "--run.address", ray_session.address]
    script = Path(sys.executable).parent / "t3d-run"
    driver = subprocess.Popen([str(script), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    checkpoint = out / "round-1" / "distill" / "checkpoints" / "step-0000004"
    deadline = time.monotonic() + 400
    while not checkpoint.is_dir() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert checkpoint.is_dir(), "the driver ended before distill saved its first checkpoint"
    log = (out / "round-1" / "distill.log").read_text()
    pid = int(log.split()[1])  # "pid N on HOST": the distill task's process
    while _pid_alive(pid) and time.monotonic() < deadline:  # Ray ends a dead driver's tasks
        time.sleep(0.2)
    assert not (out / "round-1" / "distill" / "student").exists(), "killed before the student was exported"
    result = t3d_run(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[round 1/1] collect: done already" in result.stdout
    assert "[round 1/1] distill: resuming" in result.stdout and "resumed from" in result.stdout
    assert_same_student(out / "round-1" / "distill" / "student", reference / "round-1" / "distill" / "student")
    data = json.loads((out / "run.json").read_text())
    assert data["rounds"][0]["stages"]["distill"]["resumed"] and data["finished"]

    # a changed [collect] option after collect finished is refused, nothing touched; --redo collect reruns it
    before = (out / "run.json").read_text()
    changed = t3d_run([*args, "--collect.seed", "1"])
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert changed.stderr.strip().splitlines()[-1].startswith("error: the built-in job [collect] changed since round 1's collect ran (seed: 0 there, 1 now)")
    assert "--redo collect" in changed.stderr and (out / "run.json").read_text() == before
    redone = t3d_run([*args, "--collect.seed", "1", "--redo", "collect"])
    assert redone.returncode == 0, redone.stdout[-3000:] + redone.stderr[-3000:]
    for stage in ("collect", "distill", "eval"):
        assert f"[round 1/1] {stage}: starting" in redone.stdout
    data = json.loads((out / "run.json").read_text())
    assert data["rounds"][0]["stages"]["collect"]["config"]["seed"] == 1
    again = t3d_run([*args, "--collect.seed", "1"])
    assert again.returncode == 0 and again.stdout.count("done already") == 3


# --- a cluster of its own: --address and a Ray Job -------------------------------------------------


@pytest.fixture
def head_node(tmp_path):
    """`ray start --head --block` on loopback with a dashboard (for jobs), auth off; stopped with its process."""
    port, dashboard = free_port(), free_port()
    # every port Ray would otherwise take at its fixed default (other Rays on this machine hold those)
    ports = ["--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]  # fmt: skip
    extra = [str(x) for name in ports for x in (name, free_port())]
    temp = Path(f"/tmp/t3d-head-{os.getpid()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"RAY_AUTH_MODE": "disabled"}
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--temp-dir", str(temp), "--disable-usage-stats", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            probe = subprocess.run([str(ray), "job", "list", "--address", f"http://127.0.0.1:{dashboard}"], capture_output=True, env=env)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        subprocess.run(["rm", "-rf", str(temp)])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_ray_job_and_an_address_run_on_a_cluster_started_with_ray_start(head_node, tmp_path):
    address, dashboard, env = head_node
    out = tmp_path / "job"
    tiny = [a.replace("12", "4") for a in SMALL]  # 4 distill steps
    ray = Path(sys.executable).parent / "ray"
    script = Path(sys.executable).parent / "t3d-run"
    command = [str(ray), "job", "submit", "--address", dashboard, "--", str(script), *tiny, "--run.out", str(out)]
    for _ in range(60):  # the head's job agent comes up a little after its dashboard
        submit = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        if "No available agent" not in submit.stderr:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower() + submit.stderr.lower()
    data = json.loads((out / "run.json").read_text())
    assert data["finished"] and data["table"]
    joined = t3d_run([*tiny, "--run.out", out, "--run.address", address], env=env)
    assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
    assert joined.stdout.count("done already") == 3


# --- a finished job: answered from its files, without Ray ------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_finished_run_answers_without_starting_ray(two_rounds, ray_session, monkeypatch):
    import ray

    from t3d.pipeline import cluster

    out, _ = two_rounds
    before = (out / "run.json").read_text()

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a finished run")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(cluster, "ray_connection", no_ray)
    args = [*SMALL, "--run.out", out, "--run.rounds", "2", "--run.address", ray_session.address]
    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.count("done already") == 6 and "without starting Ray" in result.stdout
    assert "eval, round 2:" in result.stdout and (out / "run.json").read_text() == before, "nothing rewritten"
    changed = CliRunner().invoke(build_app(), [str(a) for a in [*args, "--eval.seed", "3"]])  # not finished with these options
    assert changed.exit_code != 0 and "Ray was started" in repr(changed.exception), "the long way, which starts Ray"


@pytest.mark.parametrize("preset", [None, "disabled"])
def test_a_private_local_ray_chooses_token_auth_itself_so_ray_does_not_warn(preset):
    """Ray warns on every command when RAY_AUTH_MODE is unset; a mode the user set is kept."""
    code = (
        "import os\n"
        "from t3d.pipeline.cluster import choose_private_auth\n"
        "choose_private_auth()\n"
        "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
        "print(os.environ['RAY_AUTH_MODE'], get_authentication_mode() == AuthenticationMode.TOKEN)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | ({"RAY_AUTH_MODE": preset} if preset else {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == (["token", "True"] if preset is None else ["disabled", "False"])
