"""Fixtures shared by every test folder: one Ray per test session.

Ray is started at most once per session (2 CPUs, no dashboard) by the first test that
asks for `ray_session`, and everything it writes goes under a private temp dir. A test
that needs a Ray cluster of its own (several nodes) builds one with
`ray.cluster_utils.Cluster`, which also writes under the same temp dir (RAY_TMPDIR).

Token authentication: Ray 2.60 turns it on for every new local cluster and, unless a
token exists, writes one to ~/.ray/auth_token. The fixture points RAY_AUTH_TOKEN_PATH at
a token in its temp dir instead, so nothing is written to $HOME. `ray.init()` then sets
RAY_AUTH_MODE=token in this process's environment; a subprocess started with that
environment (a CLI run with `--address`) therefore finds both the mode and the token.
Without them, `ray.init(address=...)` in a subprocess fails with an authentication
error: an explicit address never turns token auth on by itself.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads starve each other on a small shared machine; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import secrets
import shutil
import tempfile
from dataclasses import dataclass

import pytest

RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")


@dataclass(frozen=True)
class RaySession:
    address: str  # GCS address, for `ray.init(address=...)` / `--address`
    temp_dir: str  # Ray's session files; also a place for extra clusters


@pytest.fixture(scope="session")
def ray_session():
    """Start (once) a local Ray with 2 CPUs and no dashboard; shut it down after the session."""
    import ray

    if ray.is_initialized():  # started by someone else in this process: share it
        yield RaySession(address=ray.get_runtime_context().gcs_address, temp_dir=tempfile.gettempdir())
        return
    # Short path under /tmp: Ray's unix socket paths must stay under ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="t3d-ray-", dir="/tmp")
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ["RAY_TMPDIR"] = temp_dir  # also where extra clusters and subprocess drivers write
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        token = os.path.join(temp_dir, "auth_token")
        with open(token, "w") as fh:
            fh.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = token
    context = ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield RaySession(address=context.address_info["gcs_address"], temp_dir=temp_dir)
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


REALCKPT = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "realckpt"


@pytest.fixture(scope="session")
def realckpt():
    """../shared/realckpt (the families' published files and the fixture builder), or a skip."""
    if not (REALCKPT / "build_fixtures.py").is_file():
        pytest.skip(f"real-checkpoint fixtures need {REALCKPT} (the shared/ folder beside the repo)")
    return REALCKPT


@pytest.fixture(scope="session")
def real_fixtures(realckpt, tmp_path_factory):
    """Tiny random-weight SDAR / LLaDA / Dream checkpoints laid out like a hub download (small vocab).

    Built once per session by ../shared/realckpt/build_fixtures.py (~5 s): `<name>/` holds the
    upstream files as published, `<name>-compat/` the same code with import shims that run here.
    """
    import subprocess
    import sys

    builder = realckpt / "build_fixtures.py"
    out = tmp_path_factory.mktemp("realckpt")
    subprocess.run([sys.executable, str(builder), "--out", str(out), "--small-vocab"], check=True, capture_output=True)
    return out
