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
from t3d.trainer import aup, metrics
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
    header = ["model", "setting", "tok/step", metric, "95% CI", "n", "agree", "distinct", "NFE", "tok/fwd", "tok/s", "spread",
              "speedup", "gap", "gap 95% CI", "AUP"]  # fmt: skip
    scores = (aup_summary(report) or {}).get("models", {})
    body = [
        [
            r.model, r.setting, _fmt(r.tokens_per_step, ".2f"), _fmt(r.quality, ".3f"), _interval(r.quality_interval, ".2f"),
            f"{r.prompts}x{r.samples_per_prompt}", _fmt(r.agreement, ".3f"), _fmt(r.distinct, ".2f"),
            _fmt(r.nfe_per_response, ".1f"), _fmt(r.tokens_per_forward, ".2f"), _fmt(r.tokens_per_second, ".0f"),
            _fmt(r.seconds_spread if r.timing_repeats > 1 else None, ".0%"), _speedup(r), _fmt(r.gap_closure, ".3f"),
            _interval(r.gap_closure_interval, ".2f"), _fmt((scores.get(r.model) or {}).get("aup"), ".1f"),
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
        "tok/step": "tokens revealed per denoising step: block size / steps per block (measured for the threshold strategy: the "
        "kept response's tokens / steps, those revealed after the stop left out; tok/fwd counts every reveal)",
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
        "tok/fwd": "tokens per forward, counted while decoding: tokens the sampler revealed / denoising forwards (B / steps per "
        "block exactly for a fixed schedule; what an adaptive strategy reached). Forwards are the steps that compute logits, as "
        "d3LLM and Fast-dLLM count NFE; the exact cache's prefill and commit forwards are not counted. Tokens revealed after a "
        "row's stop id count; the kept response's tokens per forward is the JSON's measured_tokens_per_step",
        "tok/s": f"response tokens per second of sampler wall clock: median of {repeats} timed pass(es)"
        + (" after an untimed warm-up" if report.config.warmup else " (no warm-up: the first call's start-up is timed)"),
        "spread": "(slowest - fastest) / median of the timed passes; - with one pass (nothing to compare)",
        "speedup": f"tok/s over the anchor's (else the model's own full-step run); ? marks noise: {noisy}",
        "gap": f"gap closure: ({metric} - teacher's at the same setting) / (teacher's at full steps - teacher's at the same "
        "setting); 0 = no better than the teacher at these steps, 1 = as good as the teacher at full steps; "
        "- for the teacher, without a teacher, or where the teacher loses nothing at these steps",
        "gap 95% CI": "bootstrap 95 % interval of gap, the student and both teacher runs resampled on the same prompts",
        "AUP": _aup_legend(report, metric),
    }


def _aup_legend(report: EvalReport, metric: str) -> str:
    summary = aup_summary(report)
    if summary is None:
        return "accuracy under parallelism: - without a task metric"
    return (
        f"accuracy under parallelism (d3LLM), one per model over all its rows: rho_1 y_1 + the trapezoids of y W(y) against "
        f"tok/fwd, y = {metric} in %, W(y) = min(exp(-{aup.ALPHA:g} (1 - y / y_max)), 1), y_max = the best {metric} in this "
        f"table ({summary['y_max']:.1f} %); rows more than {aup.Y_MIN_OFFSET:g} points below the model's lowest-tok/fwd row are "
        "left out (the JSON's aup lists them). Higher is better; a model at 100 % throughout scores 100 x its highest tok/fwd; "
        "compare models decoded at the same settings. The JSON's aup_kept_tokens scores the kept response's tokens per forward "
        "instead (measured_tokens_per_step: answer tokens / NFE, what Fast-dLLM's and d3LLM's eval scripts divide)"
    )


def aup_summary(report: EvalReport, x: str = "tokens_per_forward") -> dict[str, Any] | None:
    """AUP of every model on its records' (x, quality in %) points (`t3d.trainer.aup`); None without a task metric.

    y_max is the best quality of any record in the report, as d3LLM takes the task's best
    over all methods. x: the record field read as tokens per forward (`measured_tokens_per_step`
    scores the kept response's tokens instead of every revealed one).
    """
    if report.quality_metric is None:
        return None
    points = {
        label: [(getattr(r, x), 100.0 * r.quality) for r in report.records
                if r.model == label and r.quality is not None and getattr(r, x)]  # d3LLM's rho is positive
        for label in report.models
    }  # fmt: skip
    ys = [y for pts in points.values() for _, y in pts]
    if not ys:
        return None
    y_max = max(ys)
    models: dict[str, Any] = {}
    for label, pts in points.items():
        dropped = aup.aup_points(pts)[1] if pts else []
        models[label] = {"aup": aup.aup(pts, y_max), "points": len(pts), "dropped": [list(p) for p in dropped]} if pts else None
    return {
        "definition": "d3LLM (hao-ai-lab/d3LLM AUP_leaderboard/aup_utils.py): points sorted by tokens per forward, those "
        "below the first's accuracy - y_min_offset left out, AUP = rho_1 y_1 + sum 1/2 (rho_i - rho_i-1) (y_i W(y_i) "
        "+ y_i-1 W(y_i-1)), W(y) = min(exp(-alpha (1 - y / y_max)), 1)",
        "x": x, "y": f"{report.quality_metric} in percent",
        "alpha": aup.ALPHA, "y_min_offset": aup.Y_MIN_OFFSET, "y_max": y_max, "models": models,
    }  # fmt: skip


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
            "aup": aup_summary(report),
            "aup_kept_tokens": aup_summary(report, x="measured_tokens_per_step"),
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

    A second panel below puts the same quality against tokens per forward, the plane
    AUP measures, with each model's AUP in its legend entry.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_metric = report.quality_metric is not None
    metric = report.quality_metric or "agreement"
    value = (lambda r: r.quality) if has_metric else (lambda r: r.agreement)
    count = len(report.models)
    many = count > 6
    fig = Figure(figsize=(9.2 if many else 7.2, 2 * (4.8 + 0.1 * max(0, count - 16))), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 1, 1)
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
    _legend(ax, many, count)
    _parallelism_panel(fig.add_subplot(2, 1, 2), report, value, metric, palette)
    if fig.axes[1].get_legend_handles_labels()[0]:  # records without tokens per forward (built by hand) draw none
        _legend(fig.axes[1], many, count)
    fig.tight_layout()
    return fig


def _legend(ax: Any, many: bool, count: int) -> None:
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + count // 24)
    else:
        ax.legend(fontsize="small", loc="best")


def _parallelism_panel(ax: Any, report: EvalReport, value: Any, metric: str, palette: Any) -> None:
    """Quality against tokens per forward: one line per model through its settings in order of tokens per forward,
    marked and coloured as in the panel above, its AUP in the legend."""
    scores = (aup_summary(report) or {}).get("models", {})
    for index, label in enumerate(report.models):
        rows = [r for r in report.records if r.model == label and value(r) is not None and r.tokens_per_forward is not None]
        rows.sort(key=lambda r: r.tokens_per_forward)
        if not rows:
            continue
        score = scores.get(label)
        style = dict(color=palette(index % palette.N), marker=MARKERS[index % len(MARKERS)], markersize=6)
        xs, ys = [r.tokens_per_forward for r in rows], [value(r) for r in rows]
        name = f"{label}: AUP {score['aup']:.1f}" if score else label
        ax.plot(xs, ys, linestyle=LINESTYLES[index % len(LINESTYLES)], label=name, **style)
        dropped = {tuple(p) for p in score["dropped"]} if score else set()
        left_out = [(x, y) for x, y, r in zip(xs, ys, rows) if (r.tokens_per_forward, 100.0 * (r.quality or 0.0)) in dropped]
        if left_out:  # hollow: more than 5 points below the model's first, so outside its AUP
            ax.plot(*zip(*left_out), linestyle="none", mfc="white", **style)
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("tokens per forward (tokens revealed / denoising forwards, counted while decoding)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs tokens per forward; AUP (d3LLM) on {metric} in %, hollow points left out of it" if scores
                 else f"{metric} vs tokens per forward", fontsize="medium")  # fmt: skip
    ax.grid(True, alpha=0.3)


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
