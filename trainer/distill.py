"""`t3d-distill`: distil a few-step student from a trajectory dataset (DDO + path loss).

Thin on purpose: parse the options, fill `DistillConfig` (defaults < --config file <
flags), run the loop in this process or on Ray Train workers, report. The help of every
option is the docstring of its config field.
"""

from __future__ import annotations

from typing import Optional

import typer

from t3d.dllm.cli import register_user_error, run_cli
from t3d.storage_schemas import DatasetError
from t3d.trainer.config import DistillConfig, load_config, option_help, presets

register_user_error(DatasetError)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _opt(option: str, *names: str):
    """A typer option whose default (None = not given) and help come from the config."""
    flag = "--" + option.replace("_", "-")
    return typer.Option(None, *(names or (flag,)), help=option_help(option), show_default=False)


def _switch(option: str):
    flag = option.replace("_", "-")
    return _opt(option, f"--{flag}/--no-{flag}")


@app.command()
def distill(
    data: Optional[str] = _opt("data"),
    model: Optional[str] = _opt("model"),
    out: Optional[str] = _opt("out"),
    config: Optional[str] = typer.Option(
        None, "--config", help="TOML or YAML file of option values (flags override it).", show_default=False
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", show_default=False,
        help=f"Named recipe under the config file and flags: {', '.join(presets())} "
        "(trainer/presets/; default: builtin for --model builtin, else none).",
    ),
    max_steps: Optional[int] = _opt("max_steps"),
    batch_size: Optional[int] = _opt("batch_size"),
    grad_accum: Optional[int] = _opt("grad_accum"),
    lr: Optional[float] = _opt("lr"),
    loss: Optional[str] = _opt("loss"),
    alpha: Optional[float] = _opt("alpha"),
    beta: Optional[float] = _opt("beta"),
    lambda_path: Optional[float] = _opt("lambda_path"),
    path_k_steps: Optional[int] = _opt("path_k_steps"),
    round_every: Optional[int] = _opt("round_every"),
    state_order: Optional[str] = _opt("state_order"),
    num_workers: Optional[int] = _opt("num_workers"),
    strategy: Optional[str] = _opt("strategy"),
    address: Optional[str] = _opt("address"),
    resume: Optional[bool] = _switch("resume"),
    seed: Optional[int] = _opt("seed"),
    save_every: Optional[int] = _opt("save_every"),
    filter: Optional[str] = _opt("filter"),
    max_prompt_len: Optional[int] = _opt("max_prompt_len"),
    max_response_len: Optional[int] = _opt("max_response_len"),
    skip_bad_shards: Optional[bool] = _switch("skip_bad_shards"),
    verify: Optional[bool] = _switch("verify"),
    shuffle_shards: Optional[int] = _opt("shuffle_shards"),
    family: Optional[str] = _opt("family"),
    dtype: Optional[str] = _opt("dtype"),
    trust_remote_code: Optional[bool] = _switch("trust_remote_code"),
    gradient_checkpointing: Optional[bool] = _switch("gradient_checkpointing"),
    block_size: Optional[int] = _opt("block_size"),
    random_ratio: Optional[float] = _opt("random_ratio"),
    supervise_padding: Optional[bool] = _switch("supervise_padding"),
    random_count: Optional[str] = _opt("random_count"),
    path_mode: Optional[str] = _opt("path_mode"),
    padding_shows: Optional[str] = _opt("padding_shows"),
    fixed_states: Optional[bool] = _switch("fixed_states"),
    min_lr_ratio: Optional[float] = _opt("min_lr_ratio"),
    decay_all: Optional[bool] = _switch("decay_all"),
    global_batch: Optional[int] = _opt("global_batch"),
    epochs: Optional[float] = _opt("epochs"),
    fake_temperature: Optional[float] = _opt("fake_temperature"),
    weight_decay: Optional[float] = _opt("weight_decay"),
    beta1: Optional[float] = _opt("beta1"),
    beta2: Optional[float] = _opt("beta2"),
    warmup_steps: Optional[int] = _opt("warmup_steps"),
    grad_clip: Optional[float] = _opt("grad_clip"),
    keep_checkpoints: Optional[int] = _opt("keep_checkpoints"),
    device: Optional[str] = _opt("device"),
    bf16: Optional[bool] = _switch("bf16"),
    progress: Optional[bool] = _switch("progress"),
    cpus_per_worker: Optional[int] = _opt("cpus_per_worker"),
    gpus_per_worker: Optional[int] = _opt("gpus_per_worker"),
) -> None:
    """Distil a few-step student from teacher trajectories with T3D (DDO + path loss)."""
    flags = {name: value for name, value in locals().items() if name != "config"}
    run_cli(lambda: run(load_config(config, flags)))


def run(cfg: DistillConfig) -> None:
    """One process, or Ray Train workers when --num-workers > 1."""
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
