"""t3d-collect on Ray: every way of running the same command gives the same dataset.

The reference is one uninterrupted run with one worker. Two workers, a worker killed
mid-run, the driver SIGKILLed mid-run and re-run, and a two-node cluster that loses a
node mid-run must all produce the same rows, arrays and shard bytes, with no duplicates;
a unit that keeps failing stops the run with its name after bounded retries.
All runs share the session's Ray (subprocess drivers join it with --address) except the
two-node test, which needs nodes it can remove.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from t3d.pipeline.collect import collect
from t3d.pipeline.inspect import inspect_dataset
from t3d.pipeline.pool import ACTOR_NAME_PREFIX
from t3d.storage_schemas import Dataset, Manifest

pytestmark = pytest.mark.ray


def committed_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for(condition, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def our_actors() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_NAME_PREFIX)]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory, collect_cmd, tools):
    out = tmp_path_factory.mktemp("reference") / "dataset"
    summary = collect(tools.config_from_args(collect_cmd(out, num_workers=1)))
    return out, summary


@pytest.fixture(scope="module")
def units(tools):
    kept = tools.num_prompts - 1  # one prompt is too long for the model
    return -(-kept // tools.shard_size)


def test_uninterrupted_run(reference, units, tools):
    out, summary = reference
    assert summary.units_run == units and summary.retries == 0
    manifest = Manifest.load(out)
    assert sorted(manifest.shards) == [f"shard-{i:05d}" for i in range(units)]
    assert manifest.skipped == {"prompt_too_long": 1}
    dataset = Dataset.open(out, verify=True)
    rows = dataset.scan().collect()
    assert rows.height == 2 * (tools.num_prompts - 1) == summary.rows
    assert tools.long_prompt not in rows["prompt_index"].to_list()
    assert rows["prompt_ids"].to_list()[0][:1] == [4], "the chat template starts with `user:` (id 4)"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "no temporaries"
    report = inspect_dataset(str(out), as_json=True, plot_path=str(out.parent / "plot.png"))
    assert report["rows"] == rows.height and report["shards"] == report["shards_planned"] == units
    assert report["skipped"] == {"prompt_too_long": 1}
    assert set(report["bytes_per_response_token"]) == {"parquet", "topk_ids", "topk_logprobs"}
    assert (out.parent / "plot.png").stat().st_size > 10_000


def test_two_workers_give_the_identical_dataset(reference, tmp_path, collect_cmd, tools):
    out = tmp_path / "dataset"
    summary = collect(tools.config_from_args(collect_cmd(out, num_workers=2)))
    assert summary.units_run == reference[1].units_run
    tools.assert_same_dataset(out, reference[0])


def test_a_killed_actor_loses_nothing(reference, tmp_path, collect_cmd, tools, capsys):
    out = tmp_path / "dataset"
    cfg = tools.config_from_args(collect_cmd(out, num_workers=2))
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(summary=collect(cfg)))
    driver.start()
    try:
        printed = []
        wait_for(lambda: printed.append(capsys.readouterr().out) or "ready on node" in "".join(printed), 120, "a worker")
        # The pool hands a unit to a worker as soon as it is ready: killing it now loses that unit.
        ready = re.search(r"worker +(\d+) ready on node", "".join(printed)).group(1)
        (victim,) = [a for a in our_actors() if a["name"].startswith(f"{ACTOR_NAME_PREFIX}-{ready}-")]
        time.sleep(0.1)
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=False)  # a crash: Ray restarts it
    finally:
        driver.join(timeout=240)
    summary = result["summary"]
    assert summary.actors_lost >= 1 and summary.retries >= 1, "the killed worker held a unit"
    tools.assert_same_dataset(out, reference[0])


def test_a_unit_that_keeps_failing_is_named_after_bounded_retries(ray_session, tmp_path, teacher_dir):
    """A real failure on the worker (its output path is under a file), tried 1 + max_retries times."""
    from t3d.dllm import load_model
    from t3d.pipeline.config import ClusterConfig, RolloutConfig, TeacherConfig
    from t3d.pipeline.pool import ActorPool
    from t3d.pipeline.prompts import EncodedPrompt
    from t3d.pipeline.rollout import RolloutJob
    from t3d.pipeline.units import UnitFailedError, plan_units

    (tmp_path / "a-file").write_text("not a directory")
    identity = load_model(teacher_dir).identity()
    job = RolloutJob(out_dir=str(tmp_path / "a-file" / "out"), teacher=TeacherConfig(model=str(teacher_dir)),
                     teacher_identity=identity, rollout=RolloutConfig(rollouts_per_prompt=1), seed=0)
    units = plan_units([EncodedPrompt(index=i, ids=(4, 6), text=None, answer=None) for i in range(2)], shard_size=1)
    pool = ActorPool(job, ClusterConfig(num_workers=1, max_retries=1), num_gpus=0)
    done = []
    try:
        with pytest.raises(UnitFailedError, match=r"^unit shard-0000[01] failed 2 times; last: (FileExistsError|NotADirectoryError): "):
            pool.run(units, lambda unit, result: done.append(unit))
    finally:
        pool.shutdown()
    assert done == [] and pool.stats.retries >= 1


@pytest.mark.slow
def test_driver_sigkill_then_rerun_equals_an_uninterrupted_run(reference, ray_session, tmp_path, collect_cmd, units, tools):
    out = tmp_path / "dataset"
    args = collect_cmd(out, num_workers=2, address=ray_session.address)
    first = tools.popen("t3d-collect", args)
    try:
        wait_for(lambda: committed_shards(out) >= 1 or first.poll() is not None, 120, "the first shard")
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert 1 <= committed_shards(out) < units, "killed mid-run"
    wait_for(lambda: not our_actors(), 60, "the dead driver's actors to go", poll=0.5)

    again = tools.cli("t3d-collect", args)
    assert again.returncode == 0, again.stderr
    assert "to run" in again.stdout and "0 done" not in again.stdout
    tools.assert_same_dataset(out, reference[0])
    assert tools.visible_shards(out) == [f"shard-{i:05d}.parquet" for i in range(units)]

    done = tools.cli("t3d-collect", args)
    assert done.returncode == 0 and "nothing to do" in done.stdout


@pytest.mark.slow
def test_a_two_node_cluster_survives_losing_a_node(reference, ray_session, tmp_path, collect_cmd, units, tools):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "dataset"
        run = tools.popen("t3d-collect", collect_cmd(out, num_workers=2, address=cluster.address))
        wait_for(lambda: committed_shards(out) >= 1 or run.poll() is not None, 150, "the first shard")
        assert committed_shards(out) < units, "the node goes mid-run"
        cluster.remove_node(node)
        stdout, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr
        print(stdout)  # "workers lost 1" when the node's worker held a unit, 0 when it was still loading
        tools.assert_same_dataset(out, reference[0])
    finally:
        cluster.shutdown()
