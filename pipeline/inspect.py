"""`t3d-inspect DIR`: what a trajectory dataset holds and what it costs on disk.

    t3d-inspect runs/trajectories                 # a readable report
    t3d-inspect runs/trajectories --json          # the same numbers as JSON
    t3d-inspect runs/trajectories --plot traj.png # one trajectory + reveal-order statistics

Everything is computed from the manifest and a polars scan of the committed shards, so
it stays cheap on large datasets; the reveal-order statistics use at most
`ORDER_SAMPLE_ROWS` rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from t3d.storage_schemas import Dataset, DatasetError

ORDER_SAMPLE_ROWS = 4096


def summarize(dataset: Dataset) -> dict[str, Any]:
    """Every number the report shows, as a JSON-ready dict."""
    manifest = dataset.manifest
    run = manifest.collect_config
    config = run.get("config", {})
    frame = dataset.scan().select(
        pl.len().alias("rows"),
        pl.col("prompt_index").n_unique().alias("prompts"),
        pl.col("response_length").sum().alias("response_tokens"),
        pl.col("response_length").mean().alias("mean_response_length"),
        pl.col("num_steps").mean().alias("mean_steps"),
        pl.col("num_steps").min().alias("min_steps"),
        pl.col("num_steps").max().alias("max_steps"),
        pl.col("correct").mean().alias("correct_rate"),
    ).collect().row(0, named=True)
    reasons = dataset.scan().group_by("finish_reason").len().collect()
    tokens = frame["response_tokens"] or 0
    return {
        "path": str(dataset.path),
        "schema_version": manifest.schema_version,
        "created": manifest.created,
        "teacher": manifest.teacher,
        "shards": len(dataset.shards),
        "shards_planned": run.get("units"),
        "rows": frame["rows"],
        "prompts": frame["prompts"],
        "rollouts_per_prompt": config.get("rollout", {}).get("rollouts_per_prompt"),
        "response_tokens": tokens,
        "mean_response_length": frame["mean_response_length"],
        "steps": {"mean": frame["mean_steps"], "min": frame["min_steps"], "max": frame["max_steps"]},
        "tokens_per_step": tokens / (frame["mean_steps"] * frame["rows"]) if frame["rows"] and frame["mean_steps"] else None,
        "finish_reasons": dict(zip(reasons["finish_reason"].to_list(), reasons["len"].to_list())),
        "correct_rate": frame["correct_rate"],
        "skipped": manifest.skipped,
        "bytes": _bytes(dataset),
        "bytes_per_response_token": dataset.bytes_per_response_token(),
        "sampler": config.get("rollout", {}).get("sampler", {}),
        "record_states": config.get("rollout", {}).get("record_states"),
        "seed": config.get("seed"),
    }


def _bytes(dataset: Dataset) -> dict[str, int]:
    totals: dict[str, int] = {}
    for name in dataset.shards:
        for part, size in dataset.shard_info(name).bytes.items():
            totals[part] = totals.get(part, 0) + size
    return dict(sorted(totals.items()))


def format_report(s: dict[str, Any]) -> str:
    """The summary as aligned text lines."""
    teacher = s["teacher"]
    planned = f" of {s['shards_planned']}" if s["shards_planned"] is not None else ""
    lines = [
        f"dataset     {s['path']} (schema v{s['schema_version']}, created {s['created']})",
        f"teacher     {teacher.get('name')} ({teacher.get('family')}, fingerprint {teacher.get('fingerprint')})",
        f"shards      {s['shards']}{planned}",
        f"rows        {s['rows']:,} ({s['prompts']:,} prompts x {s['rollouts_per_prompt']} rollouts)",
        f"tokens      {s['response_tokens']:,} response tokens, {_num(s['mean_response_length'])} per row",
        f"steps       mean {_num(s['steps']['mean'])}, min {s['steps']['min']}, max {s['steps']['max']}; "
        f"{_num(s['tokens_per_step'])} tokens per step",
        "finish      " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["finish_reasons"].items())),
    ]
    if s["correct_rate"] is not None:
        lines.append(f"correct     {100 * s['correct_rate']:.1f}%")
    if s["skipped"]:
        lines.append("skipped     " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    lines.append("bytes/token " + ", ".join(f"{k} {v:.1f}" for k, v in s["bytes_per_response_token"].items())
                 + f" (total {sum(s['bytes_per_response_token'].values()):.1f} B per response token)")
    lines.append("on disk     " + ", ".join(f"{k} {_size(v)}" for k, v in s["bytes"].items()))
    sampler = ", ".join(f"{k}={v}" for k, v in s["sampler"].items())
    lines.append(f"sampler     {sampler}; states {s['record_states']}; seed {s['seed']}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --- reveal order ----------------------------------------------------------------------


def reveal_order(dataset: Dataset, rows: int = ORDER_SAMPLE_ROWS) -> np.ndarray:
    """(B, R) share of tokens at position j of their block revealed r steps after the block's first reveal.

    Rows come from the first `rows` rows of the dataset; padding after EOS is left out.
    """
    frame = dataset.scan().select("reveal_step", "block_size").head(rows).collect()
    if frame.height == 0:
        return np.zeros((1, 1))
    block = int(frame["block_size"][0])
    steps = np.stack(frame["reveal_step"].to_numpy()).astype(np.int64)  # (N, L)
    blocks = steps.reshape(len(steps), -1, block)  # (N, L / B, B)
    valid = blocks >= 0
    first = np.where(valid, blocks, np.iinfo(np.int64).max).min(axis=2, keepdims=True)  # (N, L / B, 1)
    relative = np.where(valid, blocks - first, -1)  # (N, L / B, B)
    counts = np.zeros((block, max(int(relative.max()) + 1, 1)))
    for j in range(block):
        r = relative[:, :, j][valid[:, :, j]]
        counts[j] = np.bincount(r, minlength=counts.shape[1])
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def plot(dataset: Dataset, path: str | Path, row: int = 0) -> Path:
    """Draw row `row`'s trajectory (position x step) and the dataset's reveal-order heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = dataset.scan().select("sample_id", "reveal_step", "response_length", "block_size").slice(row, 1).collect()
    if first.height == 0:
        raise DatasetError(f"{dataset.path} has no row {row} to plot")
    reveal = np.asarray(first["reveal_step"][0].to_list())  # (L,)
    steps = max(int(reveal.max()) + 1, 1)
    grid = np.where((reveal[None, :] >= 0) & (reveal[None, :] < np.arange(1, steps + 1)[:, None]), reveal[None, :], np.nan)  # (S, L)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    image = left.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", origin="upper")
    left.set(title=f"trajectory {first['sample_id'][0]}: revealed after each step", xlabel="response position", ylabel="decoding step")
    block = int(first["block_size"][0])
    for edge in range(block, len(reveal), block):
        left.axvline(edge - 0.5, color="white", lw=0.8)
    fig.colorbar(image, ax=left, label="step the token was revealed")
    order = reveal_order(dataset)
    heat = right.imshow(order, aspect="auto", cmap="magma", interpolation="nearest", origin="upper")
    right.set(title="reveal order in a block (all rows)", xlabel="steps after the block's first reveal", ylabel="position in block")
    right.set_xticks(range(order.shape[1]))
    right.set_yticks(range(order.shape[0]))
    fig.colorbar(heat, ax=right, label="share of tokens")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- CLI -------------------------------------------------------------------------------


def inspect_dataset(directory: str, as_json: bool = False, plot_path: str | None = None, verify: bool = False) -> dict[str, Any]:
    """The body of `t3d-inspect`: print the report (or JSON), optionally draw the plot."""
    dataset = Dataset.open(directory, verify=verify)
    summary = summarize(dataset)
    if plot_path:
        summary["plot"] = str(plot(dataset, plot_path))
    print(json.dumps(summary, indent=1) if as_json else format_report(summary))
    if plot_path and not as_json:
        print(f"plot        {summary['plot']}")
    return summary


def main() -> None:
    """Entry point of `t3d-inspect`."""
    build_app()()


def build_app():
    """The typer app of `t3d-inspect` (tests invoke it in-process)."""
    import typer

    from t3d.dllm.cli import register_user_error, run_cli

    register_user_error(DatasetError)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command(help="Shards, rows, tokens, bytes per response token, steps, finish reasons, teacher and sampler of a dataset.")
    def command(
        directory: str = typer.Argument(..., metavar="DIR", help="Dataset directory (holds manifest.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
        plot_path: str | None = typer.Option(None, "--plot", metavar="FILE.png", help="Draw one trajectory and the reveal-order statistics."),
        verify: bool = typer.Option(False, "--verify", help="Also check every shard's checksums."),
    ) -> None:
        run_cli(lambda: inspect_dataset(directory, as_json, plot_path, verify))

    return app


if __name__ == "__main__":
    main()
