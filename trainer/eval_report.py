"""Outputs of an evaluation: the table and its legend, the JSON, the samples file and the plot."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from t3d.dllm.reveal import get_strategy
from t3d.trainer import metrics
from t3d.trainer.eval_decode import EvalRecord, EvalReport, setting_label

JSON_SCHEMA_VERSION = 1


# --- outputs: table, JSON, samples, plot -------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _interval(pair: tuple[float, float] | None, spec: str) -> str:
    return "-" if pair is None else f"[{pair[0]:{spec}},{pair[1]:{spec}}]"


def _speedup(r: EvalRecord) -> str:
    return _fmt(r.speedup, ".2f") + ("?" if r.speedup is not None and r.speed_noisy else "")


def render_table(report: EvalReport) -> str:
    """A compact fixed-width table, one row per (model, setting); `render_legend` explains the columns."""
    metric = report.quality_metric or "quality"
    header = ["model", "setting", "tok/step", metric, "95% CI", "n", "agree", "distinct", "NFE", "tok/s", "spread", "speedup",
              "gap", "gap 95% CI"]  # fmt: skip
    body = [
        [
            r.model, r.setting, _fmt(r.tokens_per_step, ".2f"), _fmt(r.quality, ".3f"), _interval(r.quality_interval, ".2f"),
            f"{r.prompts}x{r.samples_per_prompt}", _fmt(r.agreement, ".3f"), _fmt(r.distinct, ".2f"),
            _fmt(r.nfe_per_response, ".1f"), _fmt(r.tokens_per_second, ".0f"),
            _fmt(r.seconds_spread if r.timing_repeats > 1 else None, ".0%"), _speedup(r), _fmt(r.gap_closure, ".3f"),
            _interval(r.gap_closure_interval, ".2f"),
        ]
        for r in report.records
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    def line(row: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    lines = [line(row) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def legend(report: EvalReport) -> dict[str, str]:
    """What each column of the table means, for this report (its metric, teacher, seeds and timing)."""
    metric = report.quality_metric or "quality"
    teacher = report.teacher
    anchor = f"{teacher}'s response at full steps, one token per step, for the same prompt and seed" if teacher else "none: no teacher"
    repeats = report.config.timing_repeats
    noisy = f"fewer than {metrics.MIN_TIMING_REPEATS} timed passes (--timing-repeats) or passes over {metrics.NOISY_SPREAD:.0%} apart"
    return {
        "tok/step": "tokens revealed per denoising step: block size / steps per block (measured for the threshold strategy)",
        metric: {
            "validity": "share of responses the built-in task accepts as valid",
            "accuracy": "share of responses whose answer matches the reference",
            "pass@1": "share of responses that pass the prompt's code tests",
        }.get(metric, "share of responses the scorer accepts") + " (unjudged responses left out)",
        "95% CI": f"bootstrap 95 % interval of {metric}: prompts resampled with replacement "
        f"({metrics.BOOTSTRAP_RESAMPLES} resamples, seed {report.config.seed}); wide means too few prompts to tell settings apart",
        "n": "prompts x samples per prompt behind each row",
        "agree": f"share of responses token-for-token identical to the anchor ({anchor}). "
        + (
            "At temperature > 0 each step samples its tokens: a model with other weights, or fewer steps, draws other tokens "
            "from the same seed even when its answers are as good, so a trained student can agree 0.000 at full steps. "
            f"It is not a failure: read {metric} and gap instead."
            if any(s.temperature > 0 for s in report.settings)
            else "Greedy decoding: how often the model reproduces the teacher's full-step response exactly."
        ),
        "distinct": "different responses per prompt, mean over prompts (at most the samples per prompt; 1 = every sample alike)",
        "NFE": "network evaluations (denoising steps) per response",
        "tok/s": f"response tokens per second of sampler wall clock: median of {repeats} timed pass(es)"
        + (" after an untimed warm-up" if report.config.warmup else " (no warm-up: the first call's start-up is timed)"),
        "spread": "(slowest - fastest) / median of the timed passes; - with one pass (nothing to compare)",
        "speedup": f"tok/s over the anchor's (else the model's own full-step run); ? marks noise: {noisy}",
        "gap": f"gap closure: ({metric} - teacher's at the same setting) / (teacher's at full steps - teacher's at the same "
        "setting); 0 = no better than the teacher at these steps, 1 = as good as the teacher at full steps; "
        "- for the teacher, without a teacher, or where the teacher loses nothing at these steps",
        "gap 95% CI": "bootstrap 95 % interval of gap, the student and both teacher runs resampled on the same prompts",
    }


def render_legend(report: EvalReport, columns: int = 110) -> str:
    """The legend printed under the table: one entry per column, wrapped at `columns`."""
    import textwrap

    entries = legend(report)
    width = max(map(len, entries))
    indent = " " * (width + 4)
    return "\n".join(
        textwrap.fill(text, columns, initial_indent=f"  {name.ljust(width)}  ", subsequent_indent=indent)
        for name, text in entries.items()
    )


def _finite(value: Any) -> Any:
    """Non-finite floats become None so the JSON stays strict (no NaN / Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    """Where the numbers were measured (tokens per second mean nothing without it)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report_dict(report: EvalReport) -> dict[str, Any]:
    """The whole report as plain JSON-ready data."""
    return _finite(
        {
            "schema_version": JSON_SCHEMA_VERSION,
            "teacher": report.teacher,
            "prompts": {"source": report.prompt_source, "quality_metric": report.quality_metric, "grading": report.prompt_grading},
            "config": asdict(report.config),
            "settings": [{"label": setting_label(s), **asdict(s)} for s in report.settings],
            "models": report.models,
            "machine": machine(),
            "intervals": {"method": "percentile bootstrap, prompts resampled with replacement", "level": metrics.BOOTSTRAP_LEVEL,
                          "resamples": metrics.BOOTSTRAP_RESAMPLES, "seed": report.config.seed},
            "speed_noise": {"min_timing_repeats": metrics.MIN_TIMING_REPEATS, "max_spread": metrics.NOISY_SPREAD},
            "legend": legend(report),
            "records": [asdict(r) for r in report.records],
        }
    )


def write_json(report: EvalReport, path: str | Path) -> Path:
    """Write `report_dict(report)` to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n")
    return path


def write_samples(report: EvalReport, path: str | Path) -> Path:
    """Every kept response as one JSON line (needs EvalConfig.keep_samples)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in report.samples:
            fh.write(json.dumps(_finite(row), allow_nan=False) + "\n")
    return path


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":")


def _categories(report: EvalReport) -> list[tuple[Any, str]]:
    """x positions in the order the settings were asked: (key, tick label) per static steps-per-block, then other strategies."""
    blocks = {s.block_size for s in report.settings}
    cats: dict[Any, str] = {}
    for s in report.settings:
        if get_strategy(s.strategy).scheduled:
            cats.setdefault((s.block_size, s.steps_per_block), str(s.steps_per_block) if len(blocks) == 1 else f"B{s.block_size}:{s.steps_per_block}")
    for s in report.settings:
        if not get_strategy(s.strategy).scheduled:
            cats.setdefault(setting_label(s), f"{s.strategy}\n{get_strategy(s.strategy).describe(s)}")
    return list(cats.items())


def _key(r: Any) -> Any:
    return (r.block_size, r.steps_per_block) if get_strategy(r.strategy).scheduled else r.setting


def plot_figure(report: EvalReport) -> Any:
    """The eval picture as a matplotlib Figure (Agg canvas, no pyplot state): what `save_plot` writes.

    Quality (agreement when the prompts have no task metric) against steps per block, in
    the order the settings were asked (fewer steps, faster decoding, to the right when
    asked as 4,2,1); other strategies sit at the right end as hollow markers, not joined
    to the line. One line per model, each with
    its own marker and line style and a small sideways offset, so equal lines stay
    visible; error bars are the bootstrap 95 % intervals; each point carries its value
    (up to 6 models). The teacher's full-step quality is a dashed horizontal line with its
    interval shaded. Past 6 models the legend goes beside the axes.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_metric = report.quality_metric is not None
    metric = report.quality_metric or "agreement"
    value = (lambda r: r.quality) if has_metric else (lambda r: r.agreement)
    count = len(report.models)
    many = count > 6
    fig = Figure(figsize=(9.2 if many else 7.2, 4.8 + 0.1 * max(0, count - 16)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cats = _categories(report)
    where = {key: x for x, (key, _) in enumerate(cats)}
    palette = colormaps["tab20"] if count > 10 else colormaps["tab10"]
    width = min(0.08, 0.36 / max(count, 1))
    for index, label in enumerate(report.models):
        rows = sorted((r for r in report.records if r.model == label and value(r) is not None and _key(r) in where),
                      key=lambda r: where[_key(r)])  # fmt: skip
        if not rows:
            continue
        dx = (index - (count - 1) / 2) * width
        xs = [where[_key(r)] + dx for r in rows]
        ys = [value(r) for r in rows]
        bars = [r.quality_interval if has_metric else None for r in rows]
        low = [max(0.0, y - b[0]) if b else 0.0 for y, b in zip(ys, bars)]
        high = [max(0.0, b[1] - y) if b else 0.0 for y, b in zip(ys, bars)]
        style = dict(color=palette(index % palette.N), marker=MARKERS[index % len(MARKERS)], markersize=6)
        static = [get_strategy(r.strategy).scheduled for r in rows]  # the line joins steps per block; others stand alone
        ax.plot([x for x, st in zip(xs, static) if st], [y for y, st in zip(ys, static) if st],
                linestyle=LINESTYLES[index % len(LINESTYLES)], label=label, **style)  # fmt: skip
        if not all(static):
            ax.plot([x for x, st in zip(xs, static) if not st], [y for y, st in zip(ys, static) if not st], linestyle="none",
                    mfc="none", **style)  # fmt: skip
        if any(bars):
            ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor=style["color"], capsize=3, elinewidth=0.9)
        if not many:  # labels alternate sides and rise with the model's index, so equal values stay readable
            side = 1 if index % 2 else -1
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f}", (x, y), xytext=(7 * side, 3 + 8 * (index // 2)), textcoords="offset points",
                            fontsize=7, color=style["color"], ha="left" if side > 0 else "right")  # fmt: skip
    _teacher_line(ax, report, value, has_metric)
    ax.set_xticks(range(len(cats)), [tick for _, tick in cats])
    ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.set_ylim(-0.03, 1.08)  # every plotted metric is a rate
    ax.set_xlabel(f"steps per block (block of {'/'.join(str(b) for b in sorted({s.block_size for s in report.settings}))} tokens), as asked")
    ax.set_ylabel(metric)
    source = str(report.prompt_source)
    source = source if len(source) <= 60 else "..." + source[-57:]  # a long path would run off the figure
    ax.set_title(f"{metric} vs steps per block: {source}\nn = {_n(report)} per point; "
                 + ("bars: bootstrap 95 % interval over prompts" if has_metric else "no task metric: agreement with the teacher"),
                 fontsize="medium")  # fmt: skip
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + count // 24)
    else:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _n(report: EvalReport) -> str:
    first = report.records[0] if report.records else None
    return f"{first.prompts} prompts x {first.samples_per_prompt} samples" if first else "0"


def _teacher_line(ax: Any, report: EvalReport, value: Any, has_metric: bool) -> None:
    """The teacher at full steps as a dashed line across the axes, its interval shaded."""
    anchors = [r for r in report.records if r.model == report.teacher and r.is_full_steps and value(r) is not None]
    for r in anchors[:1]:
        y = value(r)
        ax.axhline(y, color="0.2", linestyle=(0, (5, 3)), linewidth=1.1,
                   label=f"{r.model} at full steps ({r.steps_per_block} steps per block): {y:.2f}")  # fmt: skip
        if has_metric and r.quality_interval:
            ax.axhspan(*r.quality_interval, color="0.2", alpha=0.07, linewidth=0)


def save_plot(report: EvalReport, path: str | Path) -> Path:
    """Write `plot_figure(report)` as a PNG at `path` (parents created)."""
    fig = plot_figure(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
