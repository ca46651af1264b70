"""`t3d-distill`: distil a few-step student from a trajectory dataset (DDO + path loss).

Thin on purpose: parse the options, fill `DistillConfig` (defaults < preset < --config
file < flags), run the loop in this process or on Ray Train workers, report. Every
option is a field of `DistillConfig` (`t3d.trainer.config.TREE`): its help is the field's
docstring, its default the field's default.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer

from t3d.dllm.cli import register_user_error, run_cli
from t3d.dllm.options import config_parameter, with_signature
from t3d.dllm.outdir import Output, claim
from t3d.storage_schemas import DatasetError
from t3d.trainer.config import TREE, DistillConfig, load_config, presets
from t3d.trainer.tracking import check_available
from t3d.dllm.block_checks import check_training_block

register_user_error(DatasetError)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _preset_parameter() -> inspect.Parameter:
    """--preset: its default depends on --model, so it is shown in words, not as the field's."""
    info = typer.Option(None, "--preset", metavar="NAME", show_default=False, help=f"{TREE.by_name['preset'].help} Known: {', '.join(presets())}.")
    return inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[str])


def _command(**values: Any) -> None:
    config = values.pop("config")
    run_cli(lambda: run(load_config(config, values)))


PARAMETERS = [config_parameter(), _preset_parameter(), *TREE.parameters(skip={"preset"}, panel=lambda opt: opt.path[0].capitalize())]
app.command(name="distill", help="Distil a few-step student from teacher trajectories with T3D (DDO + path loss).")(
    with_signature(_command, PARAMETERS)
)


def run(cfg: DistillConfig) -> None:
    """One process, or Ray Train workers when --num-workers > 1."""
    check_available(cfg.tracking)  # a missing tracker library stops the run before any model loads
    if cfg.model.block_size:  # against the checkpoint's config.json, before its weights load
        check_training_block(cfg.model.path, cfg.model.block_size, family=cfg.model.family, force=cfg.model.force_block_size)
    with claim("t3d-distill", Output(path=Path(cfg.train.out), option="--out")):  # the driver's: workers take none
        if cfg.dist.num_workers > 1:
            from t3d.trainer.ray_train import run_distributed

            result = run_distributed(cfg)
        else:
            from t3d.trainer.loop import train

            result = train(cfg)
    final = {k: round(v, 4) for k, v in result.metrics.items() if k in ("loss", "ddo", "path", "ce", "fkl")}
    print(f"done: {result.step} steps; last step {final}; student in {result.student}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
