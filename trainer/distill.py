"""`t3d-distill`: distil a few-step student from a trajectory dataset (DDO + path loss).

Thin on purpose: parse the options, fill `DistillConfig` (defaults < preset < --config
file < flags), run the loop in this process or on Ray Train workers, report. Every
option is a field of `DistillConfig` (`t3d.trainer.config.TREE`): its help is the field's
docstring, its default the field's default, or the value of the preset in force, which
`--help` works out from the --model / --preset / --config given with it.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from t3d.dllm.cli import flag_value, load_config_file, register_user_error, run_cli
from t3d.dllm.errors import UserError
from t3d.dllm.options import config_parameter, with_signature
from t3d.dllm.outdir import Output, claim
from t3d.storage_schemas import DatasetError
from t3d.trainer.config import AUTO, TREE, DistillConfig, default_preset, load_config, preset_values, presets, size_preset
from t3d.trainer.objectives import loss_parts
from t3d.trainer.memory_plan import check_run
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


def preset_in_force(argv: list[str]) -> tuple[str, str]:
    """(preset, why) of a run with these arguments: what `--help` shows the defaults of."""
    config = flag_value(argv, "--config")
    file = TREE.flatten(load_config_file(config), config) if config else {}
    model = flag_value(argv, "--model") or str(file.get("model", "builtin"))
    name = flag_value(argv, "--preset") or file.get("preset")
    why = "--preset" if name else f"the default for --model {model}"
    name = name or default_preset(model)
    if name == AUTO:
        name, size = size_preset(model)
        why = f"auto: {size}"
    return name, why


def shown_defaults(
    argv: list[str], what: str = "Defaults", command: str = "t3d-distill --model PATH --help"
) -> tuple[dict[str, str], str]:  # fmt: skip
    """(option -> `value, preset NAME` for what the preset in force sets, the epilog naming it), for `--help`;
    `what` names the options in the epilog, `command` how to see another model's."""
    try:
        name, why = preset_in_force(argv)
        values = preset_values(name)
    except UserError as err:  # the help still shows; the run will say the same
        return {}, f"{what} shown: the dataclass defaults (the preset in force is unknown: {err})."
    shown = {key: f"{str(v).lower() if isinstance(v, bool) else v}, preset {name}" for key, v in values.items()}
    return shown, (f"{what} shown: preset {name} ({why}) over the dataclass defaults. Presets: builtin for --model "
                   "builtin; auto for any other model: paper-2b below 3B parameters, paper-4b below 6B, else paper-8b "
                   "(the official T3D recipe, lr scaled to the size); paper: the official configuration; none. "
                   f"`{command}` shows that model's.")  # fmt: skip


SHOWN, EPILOG = shown_defaults(sys.argv[1:]) if "--help" in sys.argv[1:] else ({}, None)
PARAMETERS = [config_parameter(), _preset_parameter(),
              *TREE.parameters(skip={"preset"}, panel=lambda opt: opt.path[0].capitalize(), shown=SHOWN)]  # fmt: skip
app.command(name="distill", help="Distil a few-step student from teacher trajectories with T3D (DDO + path loss).",
            epilog=EPILOG)(with_signature(_command, PARAMETERS))  # fmt: skip


def run(cfg: DistillConfig) -> None:
    """One process, or Ray Train workers when --num-workers > 1."""
    check_available(cfg.tracking)  # a missing tracker library stops the run before any model loads
    if cfg.model.block_size:  # against the checkpoint's config.json, before its weights load
        check_training_block(cfg.model.path, cfg.model.block_size, family=cfg.model.family, force=cfg.model.force_block_size)
    check_run(cfg)  # the memory plan, from config.json, safetensors headers and the data's lengths: refused if it cannot fit
    with claim("t3d-distill", Output(path=Path(cfg.train.out), option="--out")):  # the driver's: workers take none
        if cfg.dist.num_workers > 1:
            from t3d.trainer.ray_train import run_distributed

            result = run_distributed(cfg)
        else:
            from t3d.trainer.loop import train

            result = train(cfg)
    parts = loss_parts(cfg.loss.kind)
    final = {k: round(v, 4) for k, v in result.metrics.items() if k in parts}
    print(f"done: {result.step} steps; last step {final}; student in {result.student}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
