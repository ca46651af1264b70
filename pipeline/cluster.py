"""Getting a Ray to run on: a private local one, or a cluster joined by address.

Kept apart from `pool` because it must run before Ray is imported: Ray reads its
authentication mode once, at import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from t3d.dllm.cli import check_ray_address
from t3d.dllm.errors import UserError
from t3d.pipeline.config import ClusterConfig


@contextlib.contextmanager
def ray_connection(address: str | None) -> Iterator[float]:
    """Join `address`, or start a private local Ray (stopped afterwards); yields the seconds it took.

    A Ray already initialised in this process (a test session, a notebook) is used as is.
    """
    if address is not None:
        check_ray_address(address)
        enable_token_auth_if_available()
    import ray

    if ray.is_initialized():
        yield 0.0
        return
    tic = time.perf_counter()
    try:
        if address is None:
            choose_private_auth()
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = " (with token authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)" if address else ""
        where = address or "a private local instance"
        raise UserError(f"cannot start or join Ray at {where}: {str(err).splitlines()[0]}{hint}") from None
    try:
        yield time.perf_counter() - tic
    finally:
        ray.shutdown()


def choose_private_auth() -> None:
    """Token auth for the private local Ray, chosen explicitly, so Ray does not warn on every command.

    With RAY_AUTH_MODE unset, Ray 2.5x+ turns token auth on for a new local cluster and
    logs a warning a user cannot act on (the cluster is ours, started and stopped here).
    Choosing the same mode explicitly keeps the cluster just as protected and silences it;
    a mode the user set is kept. Joining a cluster by address never comes here.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray read the mode at import: make it read it again


def enable_token_auth_if_available() -> None:
    """Send a token when one is at hand and the user has not chosen an auth mode.

    Ray 2.5x+ turns token auth on for new clusters, but `ray.init(address=...)` sends a
    token only when RAY_AUTH_MODE=token is set; without it, joining such a cluster fails
    even though the token sits in ~/.ray/auth_token. A cluster with auth off accepts a
    token too, so sending one is harmless.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(token_file).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:  # imported already (library use): make Ray re-read its config
            from ray._raylet import Config

            Config.initialize("")


def gpus_per_worker(cluster: ClusterConfig) -> float:
    """The configured value, else 1 when the Ray cluster has GPUs and 0 when it has none."""
    import ray

    if cluster.gpus_per_worker is not None:
        return cluster.gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def resource_warning(cluster: ClusterConfig, num_gpus: float) -> str | None:
    """A line to print when the cluster, as it is now, cannot host every worker at once."""
    import ray

    have = ray.cluster_resources()
    want = {"CPU": cluster.cpus_per_worker, "GPU": num_gpus}
    fits = min(int(have.get(k, 0) // v) for k, v in want.items() if v > 0) if any(want.values()) else cluster.num_workers
    if fits >= cluster.num_workers:
        return None
    return (
        f"the Ray cluster has {have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU: {fits} of "
        f"{cluster.num_workers} workers ({cluster.cpus_per_worker:g} CPU, {num_gpus:g} GPU each) fit; the rest wait "
        f"for room (the run fails after --worker-timeout {cluster.worker_timeout:g} s with none running)"
    )
