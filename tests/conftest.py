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


# ---- the families' own code (the `-compat` fixtures), the reference t3d is compared against ----


def _rope_fix(net, config: dict) -> None:
    """transformers 5 leaves remote code's RoPE inv_freq uninitialised: give it its analytic value."""
    import torch

    heads = config.get("num_attention_heads") or config.get("n_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size") or config["d_model"]) // heads
    true = 1.0 / float(config["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    for module in net.modules():
        if hasattr(module, "inv_freq"):
            module.inv_freq = true
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = true


def upstream_net(model_dir, compat_dir=None, work=None):
    """`model_dir` loaded by the family's own code, fp32, eval mode.

    A `-compat` fixture runs as it is. A student in its teacher's format carries the
    published .py files, which do not import here: then pass `compat_dir` and `work`, and a
    copy of it with the `-compat` variant's .py files (import shims only) is what runs.
    """
    import json

    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    if compat_dir is not None:
        work.mkdir(parents=True, exist_ok=True)
        for file in model_dir.iterdir():
            if file.is_file():  # not a LoRA student's adapter/ folder
                shutil.copy2(file, work / file.name)
        for file in compat_dir.glob("*.py"):
            shutil.copy2(file, work / file.name)
        model_dir = work
    config = json.loads((model_dir / "config.json").read_text())
    cls = AutoModelForCausalLM if "AutoModelForCausalLM" in config.get("auto_map", {}) else AutoModel
    net = cls.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32, local_files_only=True).eval()
    _rope_fix(net, config)
    return net


def upstream_logits(model, net, ids, block_size: int = 4):
    """The family's own forward on one unpadded row (1, T) -> (T, V), row i predicting token i.

    How each family's code is called is read from t3d's family object (its capabilities), so a
    block-causal family gets its own 0/1 keep-mask (True = attend) at absolute blocks.
    """
    import torch

    length = ids.shape[1]
    kwargs = {}
    if model.family.block_causal:
        blocks = torch.arange(length) // block_size
        kwargs = {"attention_mask": (blocks[None, :] <= blocks[:, None])[None, None],
                  "position_ids": torch.arange(length)[None]}  # fmt: skip
    with torch.no_grad():
        logits = net(input_ids=ids, **kwargs).logits[0]
    return model.family.align(logits[None])[0]


def student_parity(model, net, lengths=(5, 8, 11), seed: int = 0) -> float:
    """Max |t3d logits - the family's own logits| over a few random rows of these lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in lengths:
        ids = torch.randint(0, min(model.vocab_size, 300), (1, n), generator=g)
        with torch.no_grad():
            ours = model.logits(ids, prompt_len=n, block_size=4)[0]
        theirs = upstream_logits(model, net, ids)
        first = 1 if model.family.shifted else 0  # a shifted family has no predictor for token 0
        worst = max(worst, float((ours[first:] - theirs[first:]).abs().max()))
    return worst


@pytest.fixture(scope="session")
def upstream():
    """The helpers above, for test modules."""
    import types

    return types.SimpleNamespace(net=upstream_net, logits=upstream_logits, parity=student_parity)


def _assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def one_line_error():
    """Check a CliRunner result: exit 2, one `error: ...` line on stderr holding every given word, no traceback."""
    return _assert_one_line_error


@pytest.fixture
def sandboxes_in_pairs(monkeypatch):
    """The code scorer's sandbox runs, patched so the first two samples must be in flight together (a barrier that
    breaks after 30 s otherwise); yields the name of the thread of each run, in order."""
    import threading

    from t3d.dllm.scoring import code_tests

    meet, calls, real = threading.Barrier(2, timeout=30), [], code_tests.run_python

    def side_by_side(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            meet.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(code_tests, "run_python", side_by_side)
    return calls

