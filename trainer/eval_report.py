"""Outputs of an evaluation: the table, the JSON, the samples file and the plot."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from t3d.trainer.eval_decode import EvalReport, setting_label

JSON_SCHEMA_VERSION = 1


# --- outputs: table, JSON, samples, plot -------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: EvalReport) -> str:
    """A compact fixed-width table, one row per (model, setting)."""
    metric = report.quality_metric or "quality"
    header = ["model", "setting", "tok/step", metric, "agree", "distinct", "NFE", "tok/s", "spread", "speedup", "gap"]
    body = [
        [
            r.model, r.setting, _fmt(r.tokens_per_step, ".2f"), _fmt(r.quality, ".3f"), _fmt(r.agreement, ".3f"),
            _fmt(r.distinct, ".2f"), _fmt(r.nfe_per_response, ".1f"), _fmt(r.tokens_per_second, ".0f"),
            _fmt(r.seconds_spread, ".0%"), _fmt(r.speedup, ".2f"), _fmt(r.gap_closure, ".3f"),
        ]
        for r in report.records
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    def line(row: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    lines = [line(row) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
            "prompts": {"source": report.prompt_source, "quality_metric": report.quality_metric},
            "config": asdict(report.config),
            "settings": [{"label": setting_label(s), **asdict(s)} for s in report.settings],
            "models": report.models,
            "machine": machine(),
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


def save_plot(report: EvalReport, path: str | Path) -> Path:
    """Quality (agreement when there is no task metric) against tokens per step, one line per model.

    Static settings are joined by a line; other strategies are single hollow markers in
    the model's colour, with one legend entry per strategy. Past 6 models the legend
    goes beside the axes. Uses the Agg canvas directly, so no display and no pyplot state.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    metric = report.quality_metric or "agreement"
    value = (lambda r: r.quality) if report.quality_metric else (lambda r: r.agreement)
    many = len(report.models) > 6
    fig = Figure(figsize=(8.8 if many else 6.4, 4.2 + 0.1 * max(0, len(report.models) - 16)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = colormaps["tab20"] if len(report.models) > 10 else colormaps["tab10"]
    strategies: dict[str, Line2D] = {}
    for index, label in enumerate(report.models):
        color = palette(index % palette.N)
        rows = [r for r in report.records if r.model == label and value(r) is not None]
        static = sorted((r for r in rows if r.strategy == "static"), key=lambda r: r.tokens_per_step)
        ax.plot([r.tokens_per_step for r in static], [value(r) for r in static], "o-", color=color, label=label)
        for r in rows:
            if r.strategy != "static":
                ax.plot([r.tokens_per_step], [value(r)], "D", mfc="none", color=color)
                strategies.setdefault(r.strategy, Line2D([], [], marker="D", mfc="none", color="0.4", linestyle="none",
                                                         label=f"{r.strategy} (hollow, the model's colour)"))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_ylim(-0.03, 1.03)  # every plotted metric is a rate
    ax.set_xlabel("tokens per step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs tokens per step ({report.prompt_source})")
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + list(strategies.values())
    if many:
        ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(handles) // 24)
    else:
        ax.legend(handles=handles, fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
