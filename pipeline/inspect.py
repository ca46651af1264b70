"""`t3d-inspect DIR`: what a trajectory dataset holds and what it costs on disk.

    t3d-inspect runs/trajectories                 # a readable report and a picture (runs/trajectories-inspect.png)
    t3d-inspect runs/trajectories --row 12        # row 12 decoded step by step, in reveal order
    t3d-inspect runs/trajectories --json          # the same numbers as JSON
    t3d-inspect runs/trajectories --plot traj.png # the picture elsewhere (--no-plot: none)
    t3d-inspect runs/trajectories --verify        # also check every shard's checksums and rows, and say so

Everything is computed from the manifest and a polars scan of the committed shards, so
it stays cheap on large datasets; the reveal-order statistics use at most
`ORDER_SAMPLE_ROWS` rows. Blocks are drawn the way the teacher's family decodes them
(`Family.absolute_blocks`: SDAR counts blocks from the first prompt token, so a prompt's
tail shares the first decoded block), read from the manifest's teacher identity.
"""

from __future__ import annotations

import json
import os
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


# --- block alignment and tokenizer, from the manifest's teacher -------------------------


def block_alignment(dataset: Dataset) -> tuple[bool, str]:
    """(absolute blocks?, how they are counted) from the teacher's family object, never from its name.

    A family the registry does not know (a custom remote-code model) is drawn with blocks
    starting at the response, and the note says so.
    """
    from t3d.dllm.errors import UserError
    from t3d.dllm.families import get_family

    name = dataset.manifest.teacher.get("family")
    try:
        family = get_family(name)
    except (UserError, TypeError, KeyError):
        return False, f"family {name!r} unknown here: blocks drawn from the first response token"
    if family.absolute_blocks:
        return True, f"{family.name}: blocks at absolute positions from the first prompt token (the prompt's tail shares block 1)"
    return False, f"{family.name}: blocks from the first response token"


def tails(prompt_lengths: np.ndarray, block: int, absolute: bool) -> np.ndarray:
    """(N,) prompt tokens sharing the first decoded block: P mod B with absolute blocks, else 0."""
    return prompt_lengths % block if absolute else np.zeros_like(prompt_lengths)


def load_tokenizer_of(dataset: Dataset) -> tuple[Any, str | None]:
    """(the teacher's tokenizer, None) or (None, why not): from the teacher directory the manifest names."""
    from t3d.dllm.errors import UserError
    from t3d.dllm.loading import load_tokenizer, resolve_model_path

    path = dataset.manifest.teacher.get("path")
    if not path:
        return None, "the manifest names no teacher directory"
    directory = resolve_model_path(path)
    if not directory.is_dir():
        return None, f"the teacher directory {directory} is not on this machine"
    try:
        tokenizer = load_tokenizer(directory, trust_remote_code=False)
    except UserError as err:
        return None, str(err)
    return (tokenizer, None) if tokenizer is not None else (None, f"{directory} has no tokenizer")


# --- reveal order ----------------------------------------------------------------------


def reveal_order(dataset: Dataset, rows: int = ORDER_SAMPLE_ROWS, absolute: bool | None = None) -> np.ndarray:
    """(B, R) share of tokens at position j of their block revealed r steps after the block's first reveal.

    Blocks are the family's own (`block_alignment`; `absolute` overrides it): with absolute
    blocks, row n's response position i sits at block position (i + tail_n) mod B. Rows
    come from the first `rows` rows of the dataset; padding after EOS is left out.
    """
    if absolute is None:
        absolute = block_alignment(dataset)[0]
    frame = dataset.scan().select("reveal_step", "block_size", pl.col("prompt_ids").list.len().alias("prompt_len")).head(rows).collect()
    if frame.height == 0:
        return np.zeros((1, 1))
    block = int(frame["block_size"][0])
    steps = np.stack(frame["reveal_step"].to_numpy()).astype(np.int64)  # (N, L)
    n, length = steps.shape
    shift = tails(frame["prompt_len"].to_numpy().astype(np.int64), block, absolute)  # (N,)
    placed = np.full((n, length + block), -1, dtype=np.int64)  # (N, L + B): room for the tail in front
    cols = np.arange(length)[None, :] + shift[:, None]  # (N, L)
    placed[np.arange(n)[:, None], cols] = steps
    blocks = placed.reshape(n, -1, block)  # (N, L / B + 1, B)
    valid = blocks >= 0
    first = np.where(valid, blocks, np.iinfo(np.int64).max).min(axis=2, keepdims=True)  # (N, blocks, 1)
    relative = np.where(valid, blocks - first, -1)  # (N, blocks, B)
    counts = np.zeros((block, max(int(relative.max()) + 1, 1)))
    for j in range(block):
        r = relative[:, :, j][valid[:, :, j]]
        counts[j] = np.bincount(r, minlength=counts.shape[1])
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def _row(dataset: Dataset, row: int) -> dict[str, Any]:
    columns = ("sample_id", "prompt", "prompt_ids", "response_ids", "response_text", "reveal_step", "block_size", "steps_per_block")
    frame = dataset.scan().select(*columns).slice(row, 1).collect()
    if frame.height == 0:
        raise DatasetError(f"{dataset.path} has no row {row} (it has {dataset.num_rows} rows, counted from 0)")
    return frame.row(0, named=True)


# --- one row, step by step -----------------------------------------------------------------

MASK_GLYPH = "\u25af"  # ▯: not a character tokens decode to, unlike `_`


def row_steps(dataset: Dataset, row: int, tokenizer: Any = None, why: str | None = None) -> list[str]:
    """Row `row` decoded step by step: at each step the tokens it revealed (position: text) and the response so far.

    Masked positions show as MASK_GLYPH, `|` marks block edges (the family's own alignment);
    control characters are escaped as Python writes them.
    Without a tokenizer the tokens are ids, and the first line says why.
    """
    r = _row(dataset, row)
    absolute, how = block_alignment(dataset)
    block = int(r["block_size"])
    ids = np.asarray(r["response_ids"])  # (L,)
    reveal = np.asarray(r["reveal_step"])  # (L,)
    tail = int(tails(np.asarray([len(r["prompt_ids"])]), block, absolute)[0])
    piece = (lambda t: repr(tokenizer.decode([int(t)]))) if tokenizer is not None else (lambda t: f"#{int(t)}")
    sep = _separator(tokenizer, ids[reveal >= 0])
    lines = [f"row {row}  {r['sample_id']}  block {block}, {r['steps_per_block']} steps per block; {how}"]
    if tokenizer is None:
        lines.append(f"(token ids, no text: {why})")
    lines.append(f"prompt    {_clip(r['prompt'])!r} ({len(r['prompt_ids'])} tokens" + (f", last {tail} in block 1)" if tail else ")"))
    decoded = np.flatnonzero(reveal >= 0)
    for step in sorted(set(reveal[decoded].tolist())):
        here = np.flatnonzero(reveal == step)
        shown = reveal[: decoded.max() + 1 if decoded.size else 0]
        revealed = ", ".join(f"{i}:{piece(ids[i])}" for i in here)
        blk = (int(here[0]) + tail) // block + 1
        lines.append(f"step {step:>3}  block {blk:>2}  +{len(here)}  {revealed}")
        lines.append(f"           {_state(ids, shown, step, block, tail, tokenizer, sep)}")
    lines.append(f"response  {_clip(r['response_text'], 400)!r}")
    return lines


def _separator(tokenizer: Any, ids: np.ndarray) -> str:
    """"" when pieces decoded apart join back into the text (BPE pieces carry their spaces), else " " (word-level)."""
    if tokenizer is None or len(ids) < 2:
        return " "
    a, b = int(ids[0]), int(ids[1])
    return "" if tokenizer.decode([a, b]) == tokenizer.decode([a]) + tokenizer.decode([b]) else " "


def _state(ids: np.ndarray, reveal: np.ndarray, step: int, block: int, tail: int, tokenizer: Any, sep: str = " ") -> str:
    """The response after `step`: revealed runs decoded as text, masks as MASK_GLYPH, `|` between blocks."""
    parts: list[str] = []
    for start in range(-tail, len(reveal), block):  # block edges in response positions
        cols = range(max(start, 0), min(start + block, len(reveal)))
        known = [int(ids[i]) if 0 <= reveal[i] <= step else None for i in cols]
        parts.append(_text(known, tokenizer, sep))
    return " | ".join(p for p in parts if p)


def _text(tokens: list[int | None], tokenizer: Any, sep: str) -> str:
    """Revealed runs decoded together (so BPE text reads naturally), one MASK_GLYPH per masked token."""
    out, run = [], []
    for t in [*tokens, None]:
        if t is not None:
            run.append(t)
            continue
        if run:
            out.append(repr(tokenizer.decode(run))[1:-1] if tokenizer is not None else " ".join(f"#{x}" for x in run))
            run = []
        out.append(MASK_GLYPH)
    return sep.join(out[:-1])


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


# --- the picture ---------------------------------------------------------------------------


def plot(dataset: Dataset, path: str | Path, row: int = 0) -> Path:
    """Draw row `row`'s trajectory (position x step) and the dataset's reveal-order heatmap, in the family's blocks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = _row(dataset, row)
    absolute, how = block_alignment(dataset)
    block = int(r["block_size"])
    reveal = np.asarray(r["reveal_step"])  # (L,)
    tail = int(tails(np.asarray([len(r["prompt_ids"])]), block, absolute)[0])
    steps = max(int(reveal.max()) + 1, 1)
    grid = np.where((reveal[None, :] >= 0) & (reveal[None, :] < np.arange(1, steps + 1)[:, None]), reveal[None, :], np.nan)  # (S, L)
    fig = Figure(figsize=(12.5, 4.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    image = left.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", origin="upper")
    left.set(title=f"row {row} ({r['sample_id']}): tokens shown after each step", ylabel="decoding step",
             xlabel="response position (dashed: block edges)")  # fmt: skip
    for edge in range(block - tail, len(reveal), block):
        left.axvline(edge - 0.5, color="0.35", lw=1.2, linestyle=(0, (3, 2)))
    padding = np.flatnonzero(reveal < 0)
    if padding.size:  # never decoded: after the stop token, or the columns an absolute block leaves over
        left.axvspan(padding.min() - 0.5, len(reveal) - 0.5, color="0.85", zorder=0, label="padding (never decoded)")
        left.legend(loc="upper right", fontsize="small")
    fig.colorbar(image, ax=left, label="step the token was revealed")
    order = reveal_order(dataset, absolute=absolute)
    heat = right.imshow(order, aspect="auto", cmap="magma", interpolation="nearest", origin="upper", vmin=0)
    right.set(title="reveal order within a block (all rows)", xlabel="steps after the block's first reveal", ylabel="position in block")
    right.set_xticks(range(order.shape[1]))
    right.set_yticks(range(order.shape[0]))
    for (j, k), share in np.ndenumerate(order):
        if share >= 0.005:
            right.text(k, j, f"{share:.0%}", ha="center", va="center", fontsize=7, color="white" if share < 0.6 else "black")
    fig.colorbar(heat, ax=right, label="share of the position's tokens")
    fig.suptitle(f"{dataset.path.name}: block {block}, {r['steps_per_block']} steps per block; {how}", fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def default_plot_path(directory: str | Path) -> Path:
    """`DIR-inspect.png` beside the dataset (never inside it), else in the working directory when that is read-only."""
    directory = Path(directory).resolve()
    beside = directory.parent / f"{directory.name}-inspect.png"
    return beside if os.access(directory.parent, os.W_OK) else Path.cwd() / beside.name


# --- verification --------------------------------------------------------------------------


def verify_report(dataset: Dataset, summary: dict[str, Any]) -> str:
    """What `--verify` checked, after `Dataset.open(verify=True)` passed: checksums, and rows against the manifest."""
    listed = sum(info.rows for info in (dataset.manifest.shards[name] for name in dataset.shards))
    if listed != summary["rows"]:
        raise DatasetError(f"{dataset.path}: the manifest lists {listed} rows but the shards hold {summary['rows']}")
    size = sum(summary["bytes"].values())
    return (f"verified    {len(dataset.shards)} shards: sha256 of {len(dataset.shards)} Parquet files and {len(dataset.shards)} "
            f"Zarr trees ({_size(size)}) match the manifest; {summary['rows']:,} rows, as listed; schema v{summary['schema_version']}")  # fmt: skip


# --- CLI -------------------------------------------------------------------------------


def inspect_dataset(
    directory: str, as_json: bool = False, plot_path: str | None = None, verify: bool = False, row: int | None = None,
    draw: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The body of `t3d-inspect`: print the report (or JSON), draw the picture, show a row, say what was verified."""
    dataset = Dataset.open(directory, verify=verify)
    summary = summarize(dataset)
    summary["alignment"] = block_alignment(dataset)[1]
    if verify:
        summary["verified"] = verify_report(dataset, summary)
    if draw and summary["rows"]:
        summary["plot"] = str(plot(dataset, plot_path or default_plot_path(directory), row or 0))
    if row is not None:
        summary["row"] = row_steps(dataset, row, *load_tokenizer_of(dataset))
    if as_json:
        print(json.dumps(summary, indent=1))
        return summary
    print(format_report(summary))
    for key in ("verified", "plot"):
        if key in summary:
            print(summary[key] if key == "verified" else f"plot        {summary['plot']} (row {row or 0} and the reveal order)")
    if row is not None:
        print("\n" + "\n".join(summary["row"]))
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

    @app.command(help="Shards, rows, tokens, bytes per response token, steps, finish reasons, teacher and sampler of a dataset; a picture of one trajectory and the reveal order.")
    def command(
        directory: str = typer.Argument(..., metavar="DIR", help="Dataset directory (holds manifest.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
        plot_path: str | None = typer.Option(None, "--plot", metavar="FILE.png", help="Where to draw the picture (default: DIR-inspect.png beside the dataset)."),
        no_plot: bool = typer.Option(False, "--no-plot", help="Draw no picture."),
        row: int | None = typer.Option(None, "--row", metavar="N", help="Show row N decoded step by step in reveal order (and draw that row)."),
        verify: bool = typer.Option(False, "--verify", help="Also check every shard's checksums and rows against the manifest, and say what was checked."),
    ) -> None:  # fmt: skip
        run_cli(lambda: inspect_dataset(directory, as_json, plot_path, verify, row, draw=not no_plot))

    return app


if __name__ == "__main__":
    main()
