"""A pool of Ray actors that run work units; the driver keeps the queue.

One actor per worker loads the teacher once and then runs one unit at a time (one unit
= one shard, written and committed by that actor). The driver hands a unit to each idle
actor and, as units finish, passes the results to `on_done` (which records them in the
manifest). Why a queue of our own rather than Ray Data: see DESIGN.md section 7.

Failures:
- an actor dies (process killed, node removed): its unit goes back to the front of the
  queue and is retried on another actor; Ray restarts the dead actor (on any node with
  room) and it rejoins the pool once it answers `ready()` again;
- a unit raises a `UserError` (bad input that a retry cannot fix): the run stops;
- a unit raises anything else: retried on another actor.
A unit is tried at most `1 + max_retries` times; then `UnitFailedError` names it.
Retries are safe because a shard commit is atomic and writes the same bytes each time.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from t3d.dllm.errors import UserError
from t3d.pipeline.config import ClusterConfig
from t3d.pipeline.rollout import RolloutJob, UnitResult
from t3d.pipeline.units import UnitFailedError, WorkUnit

ACTOR_NAME_PREFIX = "t3d-collect-worker"
ACTOR_MAX_RESTARTS = 3  # per actor; a unit's own retries are bounded separately
WAIT_SLICE_S = 1.0
LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)


class RolloutActor:
    """Holds the teacher; runs units. Never raises from `__init__`: `ready()` reports a failed load."""

    def __init__(self, job: RolloutJob) -> None:
        tic = time.perf_counter()
        self._error: BaseException | None = None
        self._runner = None
        try:
            from t3d.pipeline.rollout import UnitRunner

            # A GPU only when Ray assigned one: a worker without num_gpus must not grab a visible GPU.
            self._runner = UnitRunner(job, device="cuda" if ray.get_gpu_ids() else "cpu")
        except BaseException as err:  # reported by ready(), where the driver can name it
            self._error = err
        self._load_seconds = time.perf_counter() - tic

    def ready(self) -> dict[str, Any]:
        """Where this actor runs; raises the load error if the teacher did not load."""
        if self._error is not None:
            raise self._error
        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "node": node, "device": self._runner.device, "load_seconds": self._load_seconds}

    def run(self, unit: WorkUnit) -> UnitResult:
        return self._runner.run(unit)


@dataclass
class PoolStats:
    """What happened in the pool, for the summary."""

    units_done: int = 0
    retries: int = 0
    actors_lost: int = 0
    first_ready_seconds: float | None = None  # pool start until the first actor could take a unit
    workers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Worker:
    index: int
    handle: Any
    losses: int = 0  # times it died; past ACTOR_MAX_RESTARTS it has left the pool


class ActorPool:
    """The driver side: a queue of units over `num_workers` actors."""

    def __init__(self, job: RolloutJob, cluster: ClusterConfig, num_gpus: float) -> None:
        self.cluster = cluster
        self.stats = PoolStats()
        self._started = time.perf_counter()
        self._run_id = uuid.uuid4().hex[:8]
        remote_cls = ray.remote(RolloutActor)
        options = dict(
            num_cpus=cluster.cpus_per_worker,
            num_gpus=num_gpus,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=0,  # the driver retries units itself, on another actor
        )
        self._workers = [
            _Worker(i, remote_cls.options(name=f"{ACTOR_NAME_PREFIX}-{i}-{self._run_id}", **options).remote(job))
            for i in range(cluster.num_workers)
        ]
        self._pings = {w.handle.ready.remote(): w for w in self._workers}
        self._idle: list[_Worker] = []
        self._running: dict[Any, tuple[WorkUnit, _Worker]] = {}
        self._tries: dict[int, int] = {}
        self._avoid: dict[int, int] = {}  # unit index -> worker it last failed on

    def run(
        self,
        units: list[WorkUnit],
        on_done: Callable[[WorkUnit, UnitResult], None],
        on_ready: Callable[[dict[str, Any]], None] | None = None,
    ) -> PoolStats:
        """Run every unit; `on_done(unit, result)` is called on the driver as each one finishes,
        `on_ready(info)` as each actor (re)starts and can take units."""
        self._queue = deque(units)
        self._on_ready = on_ready
        last_progress = time.monotonic()
        while self._queue or self._running:
            self._dispatch()
            waiting = list(self._running) + list(self._pings)
            if not waiting:
                raise UnitFailedError(
                    f"no worker left (each died more than {ACTOR_MAX_RESTARTS} times); "
                    f"unit {self._queue[0].name} and {len(self._queue) - 1} more not run"
                )
            done, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_SLICE_S)
            if done:
                last_progress = time.monotonic()
                self._handle(done[0], on_done)
            elif not self._running and time.monotonic() - last_progress > self.cluster.worker_timeout:
                raise UnitFailedError(
                    f"no worker became available for {self.cluster.worker_timeout:.0f} s; unit "
                    f"{self._queue[0].name} and {len(self._queue) - 1} more not run "
                    f"(does the cluster have {self.cluster.cpus_per_worker} CPU and the GPUs each worker needs?)"
                )
        return self.stats

    def shutdown(self) -> None:
        """Stop the actors (they die with the driver anyway; a shared Ray should not keep them)."""
        for w in self._workers:
            ray.kill(w.handle, no_restart=True)

    # --- internals ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            worker = self._idle.pop(0)
            unit = self._take_unit_for(worker)
            self._running[worker.handle.run.remote(unit)] = (unit, worker)

    def _take_unit_for(self, worker: _Worker) -> WorkUnit:
        """The first queued unit that did not last fail on this worker (else the first)."""
        for position, unit in enumerate(self._queue):
            if self._avoid.get(unit.index) != worker.index:
                del self._queue[position]
                return unit
        return self._queue.popleft()

    def _handle(self, ref: Any, on_done: Callable[[WorkUnit, UnitResult], None]) -> None:
        if ref in self._pings:
            self._handle_ping(ref, self._pings.pop(ref))
            return
        unit, worker = self._running.pop(ref)
        try:
            result = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            if isinstance(cause, UserError):
                raise UserError(f"unit {unit.name}: {_first_line(cause)}") from None
            self._retry(unit, worker, _one_line(cause))
            self._idle.append(worker)  # the actor itself is fine
            return
        except LOST as err:
            self.stats.actors_lost += 1
            self._retry(unit, worker, f"worker {worker.index} lost ({type(err).__name__})")
            self._ping_again(worker)
            return
        on_done(unit, result)
        self.stats.units_done += 1
        self._idle.append(worker)

    def _handle_ping(self, ref: Any, worker: _Worker) -> None:
        try:
            info = ray.get(ref)
        except RayTaskError as err:  # the teacher did not load: no retry can fix that
            cause = err.cause if err.cause is not None else err
            if isinstance(cause, UserError):
                raise UserError(_first_line(cause)) from None
            raise UnitFailedError(f"worker {worker.index} could not load the teacher: {_one_line(cause)}") from None
        except LOST:
            self._ping_again(worker)
            return
        if self.stats.first_ready_seconds is None:
            self.stats.first_ready_seconds = time.perf_counter() - self._started
        self.stats.workers.append({"worker": worker.index, **info})
        if self._on_ready is not None:
            self._on_ready({"worker": worker.index, **info})
        self._idle.append(worker)

    def _ping_again(self, worker: _Worker) -> None:
        """Wait for Ray to restart a lost actor (it may never come back if no node has room)."""
        worker.losses += 1
        if worker.losses <= ACTOR_MAX_RESTARTS:
            self._pings[worker.handle.ready.remote()] = worker

    def _retry(self, unit: WorkUnit, worker: _Worker, reason: str) -> None:
        tries = self._tries.get(unit.index, 0) + 1
        self._tries[unit.index] = tries
        if tries > self.cluster.max_retries:
            raise UnitFailedError(f"unit {unit.name} failed {tries} times; last: {reason}")
        self.stats.retries += 1
        self._avoid[unit.index] = worker.index
        self._queue.appendleft(unit)


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
