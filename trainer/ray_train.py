"""`--num-workers N > 1`: the same loop on N Ray Train workers, with DDP or FSDP2 (`--strategy`).

Ray Train's `TorchTrainer` starts the workers and the process group (gloo on CPU, NCCL
on GPU); each worker then runs `loop.train` with its rank, so the data split (every
N-th row of the epoch order), the loss normalisation (counts summed over workers) and
the checkpoints (rank 0 writes into --out) are the loop's own. --out must be a path
every worker can reach (one machine, or a shared filesystem on a cluster).

Each worker also leaves `workers/rank-R.json` (rows read, a digest of its final
weights) and `workers/rank-R-rows.npy` (the (shard, zarr_index) of every row it read):
the audit trail that shows the workers read disjoint data and ended in agreement.
A worker's user-facing error (bad data, NaN loss) is written to `workers/error.txt`
so the driver can report it as one line instead of a remote traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3d.dllm.cli import check_ray_address
from t3d.dllm.errors import UserError
from t3d.trainer import sharding
from t3d.trainer.config import DistillConfig, from_dict, to_dict
from t3d.trainer.build import Dist
from t3d.trainer.loop import RunResult

WORKERS = "workers"
ERROR_FILE = "error.txt"


def weights_digest(net: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the state dict's names and bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    state = net if isinstance(net, dict) else net.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_worker_report(out: Path, dist: Dist, result: RunResult, digest: str) -> None:
    folder = out / WORKERS
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"rank-{dist.rank}-rows.npy", result.rows)
    report = {"rank": dist.rank, "world": dist.world, "step": result.step, "rows_read": len(result.rows),
              "weights_sha256": digest}  # fmt: skip
    (folder / f"rank-{dist.rank}.json").write_text(json.dumps(report, indent=2) + "\n")


def _worker(config: dict[str, Any]) -> None:
    """Body of one Ray Train worker: the ordinary loop with this worker's rank."""
    import ray.train

    from t3d.trainer import loop

    cfg = from_dict(config["config"])
    context = ray.train.get_context()
    dist = Dist(rank=context.get_world_rank(), world=context.get_world_size())
    torch.set_num_threads(cfg.dist.cpus_per_worker)
    out = Path(cfg.train.out)
    try:
        result = loop.train(cfg, dist)
    except UserError as err:
        (out / WORKERS).mkdir(parents=True, exist_ok=True)
        (out / WORKERS / ERROR_FILE).write_text(str(err).splitlines()[0] + "\n")
        raise
    net = result.model.net
    state = sharding.full_state(net, everywhere=True) if sharding.is_sharded(net) else net  # FSDP: every worker gathers
    _write_worker_report(out, dist, result, weights_digest(state))


def _use_gpu(cfg: DistillConfig) -> bool:
    import ray

    if cfg.dist.gpus_per_worker == 0 or cfg.train.device == "cpu":
        return False
    return cfg.dist.gpus_per_worker == 1 or ray.cluster_resources().get("GPU", 0) >= 1


def _connect(cfg: DistillConfig) -> None:
    """Join --address, start a local Ray, or use the Ray this process already runs."""
    import ray

    check_ray_address(cfg.dist.address)  # even beside a Ray this process already runs: the address was asked for
    if ray.is_initialized():
        return
    try:
        dashboard = False if cfg.dist.address is None else None  # a private Ray needs no dashboard
        ray.init(address=cfg.dist.address, logging_level="WARNING", include_dashboard=dashboard)
    except ConnectionError as err:
        raise UserError(f"cannot join the Ray cluster at {cfg.dist.address}: {str(err).splitlines()[0]}") from None


def preflight(cfg: DistillConfig) -> None:
    """The cheap checks, on the driver, before any worker starts: a bad --data or --model
    then fails in a second with one line instead of after a cluster spin-up."""
    from t3d.dllm import loading
    from t3d.trainer.data import open_dataset
    from t3d.trainer.build import check_compatible

    dataset, _ = open_dataset(dataclasses.replace(cfg.data, verify=False), log=lambda *a: None)
    info = loading.describe_checkpoint(cfg.model.path, cfg.model.family, cfg.model.trust_remote_code)
    student = {"name": info.path.name, "vocab_size": info.vocab_size, "mask_id": info.mask_id, "family": info.family.name}
    check_compatible(dataset.manifest.teacher, student, cfg.data.path)


def absolute_paths(cfg: DistillConfig) -> DistillConfig:
    """Workers do not run in the driver's directory: send them absolute paths."""
    model = cfg.model.path if cfg.model.path == "builtin" else str(Path(cfg.model.path).expanduser().resolve())
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).expanduser().resolve())),
        model=dataclasses.replace(cfg.model, path=model),
        train=dataclasses.replace(cfg.train, out=str(Path(cfg.train.out).expanduser().resolve())),
    )


def run_distributed(cfg: DistillConfig) -> RunResult:
    """Train on `cfg.dist.num_workers` Ray Train workers; returns rank 0's result."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = absolute_paths(cfg)
    preflight(cfg)
    _connect(cfg)
    out = Path(cfg.train.out).resolve()
    (out / WORKERS).mkdir(parents=True, exist_ok=True)
    (out / WORKERS / ERROR_FILE).unlink(missing_ok=True)
    use_gpu = _use_gpu(cfg)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": to_dict(cfg)},
        scaling_config=ScalingConfig(
            num_workers=cfg.dist.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.dist.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"t3d-distill-{uuid.uuid4().hex[:8]}", storage_path=str(out / "ray")),
    )
    try:
        trainer.fit()
    except Exception as err:  # a worker failed: say why in one line when it was the user's input
        error = out / WORKERS / ERROR_FILE
        if error.is_file():
            raise UserError(error.read_text().strip()) from None
        raise RuntimeError(f"Ray Train run failed: {str(err).strip().splitlines()[0]}") from err
    return _rank0_result(out)


def _rank0_result(out: Path) -> RunResult:
    report = json.loads((out / WORKERS / "rank-0.json").read_text())
    metrics = {}
    metrics_file = out / "metrics.jsonl"
    if metrics_file.is_file():
        lines = metrics_file.read_text().splitlines()
        metrics = json.loads(lines[-1]) if lines else {}
    rows = np.load(out / WORKERS / "rank-0-rows.npy")
    return RunResult(student=out / "student", step=report["step"], rows=rows, metrics=metrics, model=None)
