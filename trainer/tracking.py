"""Experiment tracking: what t3d-distill writes to metrics.jsonl and t3d-eval to its JSON, sent on to
TensorBoard, Weights & Biases or MLflow (`--report-to tensorboard,wandb`), as TRL and accelerate do.

One class per backend in `BACKENDS`, picked by name. Only rank 0 reports. Metric names are
the JSONL's keys (`loss`, `ddo`, `path`, `lr`, `grad_norm`, ...) at the optimizer step; eval
results are `model/setting/field` with the JSON record's field names. Each library reads the
user's own environment (WANDB_MODE, WANDB_DIR, WANDB_PROJECT, MLFLOW_TRACKING_URI, ...).
A backend whose library is missing is a one-line error naming the package, raised by
`check_available` when the command starts: before any model loads and before anything is
written.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from t3d.dllm.errors import UserError

NONE = "none"
DEFAULT_PROJECT = "t3d"


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where metrics go besides the JSON files."""

    report_to: str = NONE
    """Experiment trackers to send metrics to (rank 0 only): comma list of tensorboard, wandb, mlflow, or none."""
    run_name: str | None = None
    """Run name in W&B / MLflow; default: the output directory's name (distill: --out; eval: --json's directory, else runs/eval)."""
    project: str | None = None
    """W&B project and MLflow experiment; default: $WANDB_PROJECT / $MLFLOW_EXPERIMENT_NAME, else t3d."""
    logging_dir: str | None = None
    """TensorBoard event directory; default: tensorboard/ in the output directory."""

    def __post_init__(self) -> None:
        backend_names(self.report_to)  # an unknown name fails here, with the known ones

    @property
    def backends(self) -> tuple[str, ...]:
        return backend_names(self.report_to)


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Send the numeric entries of `metrics` at `step`."""
        ...

    def close(self) -> None: ...


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record; `step` is the x-axis, not a metric."""
    out = {}
    for key, value in metrics.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Event files through torch's own `SummaryWriter` (needs the `tensorboard` package).

    A resumed run (start_step > 0) purges the events a crashed run wrote after its checkpoint,
    as metrics.jsonl drops its lines: the curve has one point per step.
    """

    def __init__(self, cfg: TrackingConfig, out: Path, config: Mapping[str, Any], start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = start_step + 1 if start_step else None  # steps are logged from start_step + 1 on
        self.writer = SummaryWriter(log_dir=str(cfg.logging_dir or out / "tensorboard"), purge_step=purge)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run (online, offline or disabled as WANDB_MODE says); the config goes to its config panel.

    A resumed run is a new W&B run (its steps start where the checkpoint was).
    """

    def __init__(self, cfg: TrackingConfig, out: Path, config: Mapping[str, Any], start_step: int = 0) -> None:
        import wandb

        project = cfg.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.run = wandb.init(project=project, name=cfg.run_name or out.name, config=dict(config))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


_MLFLOW_UNSAFE = re.compile(r"[^\w\-. /:]")  # MLflow allows letters, digits, _ - . space / : in names


class MlflowTracker:
    """An MLflow run through its fluent API, at MLFLOW_TRACKING_URI; the config is logged as config.json.

    A resumed run is a new MLflow run (its steps start where the checkpoint was).
    """

    def __init__(self, cfg: TrackingConfig, out: Path, config: Mapping[str, Any], start_step: int = 0) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(cfg.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT)
        self.run = mlflow.start_run(run_name=cfg.run_name or out.name)
        mlflow.log_dict(json.loads(json.dumps(config, default=str)), "config.json")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.mlflow.log_metrics({_MLFLOW_UNSAFE.sub("_", k): v for k, v in _scalars(metrics).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _mlflow_store() -> None:
    """MLflow 3's default store is a SQLite database, which mlflow-skinny cannot open (no SQLAlchemy)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            raise UserError(
                f"--report-to mlflow: the tracking store {uri} needs SQLAlchemy, which mlflow-skinny lacks: pip install "
                "mlflow, or set MLFLOW_TRACKING_URI (a server's http://HOST:5000, or file:./mlruns with MLFLOW_ALLOW_FILE_STORE=true)"
            ) from None


@dataclass(frozen=True)
class Backend:
    """One tracker: the module that must import, the package that provides it, the class, and a check of
    the user's setup that can run before any model loads."""

    module: str
    package: str
    tracker: type
    check: Callable[[], None] | None = None


BACKENDS: dict[str, Backend] = {
    "tensorboard": Backend("tensorboard", "tensorboard", TensorBoardTracker),
    "wandb": Backend("wandb", "wandb", WandbTracker),
    "mlflow": Backend("mlflow", "mlflow (or mlflow-skinny)", MlflowTracker, _mlflow_store),
}


def backend_names(text: str) -> tuple[str, ...]:
    """`tensorboard,wandb` -> ("tensorboard", "wandb"); `none` or "" -> (); an unknown name is a one-line error."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    unknown = [n for n in names if n not in BACKENDS and n != NONE]
    if unknown:
        raise UserError(f"--report-to {unknown[0]!r} is not a tracker (known: {', '.join(BACKENDS)}, none)")
    if NONE in names and len(names) > 1:
        raise UserError(f"--report-to {text!r}: `none` cannot be combined with a tracker")
    return tuple(dict.fromkeys(n for n in names if n != NONE))


def check_available(cfg: TrackingConfig) -> None:
    """Every asked-for backend's library imports; else one line naming the package to install."""
    for name in cfg.backends:
        backend = BACKENDS[name]
        try:
            importlib.import_module(backend.module)
        except ImportError:
            raise UserError(
                f"--report-to {name} needs the {backend.package} package: pip install {backend.package.split()[0]} "
                "(or pip install 't3d[tracking]')"
            ) from None
        if backend.check is not None:
            backend.check()


def record_metrics(records: Iterable[Mapping[str, Any]], keys: tuple[str, ...] = ("model", "setting")) -> dict[str, float]:
    """Table rows (t3d-eval's JSON records) -> one metrics dict: `model/setting/field` for each numeric field,
    `model/setting/field/k` inside a nested dict (pass@k)."""
    out: dict[str, float] = {}
    for record in records:
        prefix = "/".join(str(record[k]) for k in keys)
        for field, value in record.items():
            nested = value if isinstance(value, Mapping) else {None: value}
            for sub, number in _scalars({str(k): v for k, v in nested.items()}).items():
                out[f"{prefix}/{field}" + ("" if sub == "None" else f"/{sub}")] = number
    return out


class Trackers:
    """The run's open trackers (none when not asked for, or off rank 0): log to all, close all."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(
    cfg: TrackingConfig, out: str | Path, config: Mapping[str, Any], enabled: bool = True, start_step: int = 0
) -> Trackers:  # fmt: skip
    """Start a run in each backend of `cfg` (only when `enabled`: rank 0); `config` is recorded with it.

    start_step: the step a resumed run continues from (0 for a fresh one).
    """
    if not enabled:
        return Trackers([])
    check_available(cfg)
    out = Path(out).resolve()
    trackers = []
    for name in cfg.backends:
        try:
            trackers.append(BACKENDS[name].tracker(cfg, out, config, start_step))
        except Exception as err:  # the library's own setup error (login, store, permissions): one line
            Trackers(trackers).close()
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"--report-to {name}: could not start a run ({type(err).__name__}: {reason})") from None
    return Trackers(trackers)
