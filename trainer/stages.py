"""`t3d-distill` and `t3d-eval` as stages a scheduler runs (t3d-run): options, config, `run`, progress.

The public entry of stage 2 for a scheduler, beside the commands' own (`distill.main`,
`eval_cli.main`): a scheduler builds each config from option values with the stage's
`tree`, runs it with `task` (the command's own `run`, on a Ray worker, its output into a
log), and asks the stage what its outputs already say; it never reaches into the
trainer's config, checkpoint or tracking modules itself. Imports stay inside the
methods, so a scheduler's `--help` loads neither torch nor the commands' modules.
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Any

from t3d.dllm.options import OptionTree


class _TrainerStage:
    def check_trackers(self, report_to: str) -> None:
        """The libraries of these trackers (a comma list) import: checked before a scheduler runs anything."""
        from t3d.trainer.tracking import TrackingConfig, check_available

        check_available(TrackingConfig(report_to=report_to))


class DistillStage(_TrainerStage):
    """`DistillConfig` from option values (a preset under them), `run` in a Ray task, the checkpoints' progress."""

    name = "distill"

    @cached_property
    def tree(self) -> OptionTree:
        from t3d.trainer.config import TREE

        return TREE

    def config(self, values: dict[str, Any]) -> Any:
        """As t3d-distill builds it: defaults < the preset's values < these."""
        from t3d.trainer.config import build_config

        return build_config(values)

    def preset(self, model: str, preset: str | None) -> str:
        """The preset a run from `model` trains with: the one named, else the model's default; `auto` resolved by its size."""
        from t3d.trainer.config import AUTO, default_preset, size_preset

        chosen = default_preset(model)
        chosen = chosen if preset is None else preset
        return size_preset(model)[0] if chosen == AUTO else chosen

    def progress(self, cfg: Any) -> tuple[int, Any, bool] | None:
        """(step, config) of the latest checkpoint under cfg's output and whether the student is exported; None: none yet."""
        from t3d.trainer import checkpoint as ckpt

        out = Path(cfg.train.out)
        latest = ckpt.latest_checkpoint(out)
        if latest is None:
            return None
        step = int(ckpt.load_trainer_state(latest)["step"])
        return step, ckpt.load_checkpoint_config(latest), (out / ckpt.STUDENT).is_dir()

    def changes(self, old: Any, new: Any) -> list[str]:
        """`section.field: old -> new` for every setting that differs between two configs."""
        from t3d.trainer.config import describe_changes

        return describe_changes(old, new)

    def record(self, cfg: Any) -> dict[str, Any]:
        """The config as nested plain values (one table per section): what a run record keeps and `task` receives."""
        from t3d.trainer.config import to_dict

        return to_dict(cfg)

    def loss_parts(self, cfg: Any) -> tuple[str, ...]:
        """The names of cfg's objective's loss parts (the metrics a finished run reports of its last step)."""
        from t3d.trainer.objectives import loss_parts

        return loss_parts(cfg.loss.kind)

    @staticmethod
    def task(config: dict[str, Any], log_path: str, threads: int) -> dict[str, Any]:
        """On a Ray worker: t3d-distill's own `run` on the config, its output into the stage log."""
        import torch

        from t3d.trainer.config import from_dict
        from t3d.trainer.distill import run

        if threads > 0:
            torch.set_num_threads(threads)
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"pid {os.getpid()} on {socket.gethostname()}")
            run(from_dict(config))
        return {"pid": os.getpid()}


class EvalStage(_TrainerStage):
    """`EvalCommandConfig` from option values and back, and t3d-eval's run in a Ray task, which returns the table."""

    name = "eval"

    @cached_property
    def tree(self) -> OptionTree:
        from t3d.trainer.eval_cli import TREE

        return TREE

    def config(self, values: dict[str, Any]) -> Any:
        return self.tree.build(values)

    def values(self, cfg: Any) -> dict[str, Any]:
        """Flat option values of a config: what a run record keeps and `task` receives."""
        return self.tree.values(cfg)

    @staticmethod
    def task(values: dict[str, Any], log_path: str, threads: int) -> dict[str, Any]:
        """On a Ray worker: t3d-eval's own run on the config; returns the table and its legend."""
        import torch

        from t3d.trainer.eval_cli import TREE, run_config
        from t3d.trainer.evaluate import render_legend, render_table

        if threads > 0:
            torch.set_num_threads(threads)
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            report = run_config(TREE.build(values))
        return {"table": render_table(report), "legend": render_legend(report)}


def tracker_names(report_to: str) -> tuple[str, ...]:
    """The trackers a comma list names (an unknown one: one line naming those known)."""
    from t3d.trainer.tracking import backend_names

    return backend_names(report_to)


DISTILL, EVAL = DistillStage(), EvalStage()


def distill_shown_defaults(model: str, preset: str | None = None) -> tuple[dict[str, str], str]:
    """What t3d-run's `--help` shows as the distill table's defaults for a run of `model` (and `preset`), with the
    epilog naming the preset in force: t3d-distill's rule (`t3d.trainer.distill.shown_defaults`)."""
    from t3d.trainer.distill import shown_defaults

    argv = ["--model", model, *(["--preset", preset] if preset else [])]
    return shown_defaults(argv, what="The distill table's defaults", command="t3d-run --distill.model PATH --help")
