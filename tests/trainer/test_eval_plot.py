"""The eval picture and table, checked on their data: x order as asked, the teacher's line, bars, n, styles, legend,
and the tokens-per-forward panel and AUP."""

from dataclasses import replace

import matplotlib.image
import numpy as np
import pytest

from t3d.dllm import SamplerConfig
from t3d.trainer.eval_decode import EvalConfig, EvalRecord, EvalReport, full_steps, setting_label
from t3d.trainer.eval_report import aup_summary, plot_figure, render_legend, render_table, report_dict, save_plot

STEPS = (4, 2, 1)  # as the flags ask: --steps-per-block 4,2,1


def record(model: str, setting: SamplerConfig, quality: float, **extra) -> EvalRecord:
    spb = setting.steps_per_block if setting.strategy == "static" else None
    fields = dict(
        model=model, setting=setting_label(setting), strategy=setting.strategy, block_size=setting.block_size,
        steps_per_block=spb, threshold=None, temperature=1.0, max_new_tokens=16, is_full_steps=setting == full_steps(setting),
        tokens_per_step=setting.block_size / (spb or 2), measured_tokens_per_step=1.0, prompts=10, samples_per_prompt=3,
        responses=30, quality_metric="validity", quality=quality, pass_at_k=None, distinct=1.0, distinct_valid=1.0,
        entropy=0.0, true_distinct=None, distinct_ratio=None, truth_extra=None, log_likelihood=None, eos_rate=1.0,
        response_tokens=4.0, nfe_per_response=4.0, batched_nfe=4, tokens=120, seconds=1.0, seconds_spread=0.0,
        timing_repeats=1, tokens_per_second=120.0, quality_interval=(quality - 0.1, min(1.0, quality + 0.05)),
        tokens_per_forward=setting.block_size / (spb or 2),
    )  # fmt: skip
    return EvalRecord(**(fields | extra))


def report(n_models: int = 2, steps=STEPS, threshold: bool = False, equal: bool = False) -> EvalReport:
    settings = [SamplerConfig(block_size=4, steps_per_block=s) for s in steps]
    settings += [SamplerConfig(block_size=4, strategy="threshold")] if threshold else []
    models = ["teacher"] + [f"m{i}" for i in range(1, n_models)]
    out = EvalReport(records=[], models={m: {} for m in models}, teacher="teacher", prompt_source="builtin:test",
                     quality_metric="validity", config=EvalConfig(), settings=settings)  # fmt: skip
    for i, m in enumerate(models):
        planned = list(dict.fromkeys(([full_steps(settings[0])] if m == "teacher" else []) + settings))
        for s in planned:
            quality = 0.9 if s.steps_per_block == 4 else (0.5 if equal else 0.3 + 0.02 * i + 0.05 * (s.steps_per_block or 0))
            out.records.append(record(m, s, quality))
            out.keys.append((m, s))
    return out


def model_lines(fig) -> dict:
    """Each labelled data line of the axes: label -> (x, y)."""
    ax = fig.axes[0]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}  # fmt: skip


def test_x_is_steps_per_block_in_the_order_asked():
    for steps in ((4, 2, 1), (1, 2, 4)):
        fig = plot_figure(report(steps=steps))
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in steps]
        assert "steps per block" in ax.get_xlabel()
        xs, ys = model_lines(fig)["m1"]
        assert xs == sorted(xs), "points follow the ticks left to right"
        expected = [0.9 if s == 4 else 0.32 + 0.05 * s for s in steps]
        assert ys == pytest.approx(expected), "each point sits over its own steps per block"


def test_the_teacher_at_full_steps_is_a_line_across_the_axes():
    fig = plot_figure(report(steps=(2, 1)))  # full steps not asked: the anchor is only the line
    lines = model_lines(fig)
    teacher_line = next(label for label in lines if label.startswith("teacher at full steps"))
    xs, ys = lines[teacher_line]
    assert ys == [0.9, 0.9] and "0.90" in teacher_line
    assert len(lines["teacher"][0]) == 2, "the teacher's own line has only the asked settings"


def test_equal_lines_stay_visible_with_bars_labels_and_n():
    fig = plot_figure(report(n_models=3, equal=True))
    ax = fig.axes[0]
    lines = model_lines(fig)
    styles = {(line.get_marker(), line.get_linestyle()) for line in ax.get_lines() if line.get_label() in ("teacher", "m1", "m2")}
    assert len(styles) == 3, "every model has its own marker and line style"
    assert lines["m1"][1] == lines["m2"][1] and lines["m1"][0] != lines["m2"][0], "equal values drawn side by side"
    assert len(ax.collections) >= 3, "error bars (one set per model)"
    assert sum(t.get_text() == "0.50" for t in ax.texts) == 2 * 3, "every point labelled with its value"
    assert "n = 10 prompts x 3 samples" in ax.get_title()


def test_other_strategies_sit_right_of_the_steps(tmp_path):
    fig = plot_figure(report(threshold=True))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[:3] == ["4", "2", "1"] and ticks[3].startswith("threshold")
    xs, _ = model_lines(fig)["m1"]
    assert max(xs) < 2.5, "the line joins steps per block only; the threshold point stands alone"
    assert matplotlib.image.imread(save_plot(report(threshold=True), tmp_path / "eval.png")).shape[2] == 4


def test_many_models_put_the_legend_beside_the_axes(tmp_path):
    fig = plot_figure(report(n_models=17))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1
    colours = {tuple(line.get_color()) for line in ax.get_lines() if not line.get_label().startswith(("_", "teacher at"))}
    assert len(colours) == 17, "no two models share a colour"


def test_table_shows_n_intervals_noise_and_a_legend_for_every_column():
    rep = report()
    rep.records = [replace(r, speedup=2.0, speed_noisy=r.model == "m1", gap_closure=0.25, gap_closure_interval=(-0.1, 0.6))
                   for r in rep.records]  # fmt: skip
    table = render_table(rep).splitlines()
    header = [cell for cell in table[0].split("  ") if cell.strip()]
    assert [h.strip() for h in header] == ["model", "setting", "tok/step", "validity", "95% CI", "n", "agree", "distinct",
                                           "NFE", "tok/fwd", "tok/s", "spread", "speedup", "gap", "gap 95% CI",
                                           "AUP"]  # fmt: skip
    row = table[2 + 3]  # after the teacher's three rows: m1 at spb=4
    assert row.startswith("m1") and "10x3" in row and "[0.80,0.95]" in row and "[-0.10,0.60]" in row
    assert "2.00?" in row and "2.00?" not in table[2], "a noisy speed-up is marked, a steady one is not"
    assert " - " in row, "spread is - with one timed pass, not 0 %"
    text = render_legend(rep)
    for column in header[2:]:
        assert f"  {column.strip()} " in text, column
    words = " ".join(text.split())
    assert "temperature > 0" in words and "not a failure" in words, "why agree can be 0 for a good student"


def test_aup_of_each_model_against_the_best_quality_in_the_report():
    rep = report(n_models=2, threshold=True, equal=True)  # 0.9 at spb=4 (and threshold), 0.5 elsewhere
    summary = aup_summary(rep)
    assert summary["y_max"] == pytest.approx(90.0) and summary["x"] == "tokens_per_forward"
    m1 = summary["models"]["m1"]  # points (1, 90), (2, 50), (4, 50) and the threshold's (2, 90); 50 < 90 - 5 is left out
    assert m1["aup"] == pytest.approx(1.0 * 90.0 + 0.5 * (2.0 - 1.0) * (90.0 + 90.0)) and m1["points"] == 4  # W(90) = 1
    assert sorted(map(tuple, m1["dropped"])) == [(2.0, 50.0), (4.0, 50.0)]
    rep.records = [replace(r, quality=0.9) if r.model == "m1" else r for r in rep.records]  # m1 flat at 90
    assert aup_summary(rep)["models"]["m1"]["aup"] == pytest.approx(90.0 + 0.5 * 1.0 * 180.0 + 0 + 0.5 * 2.0 * 180.0)
    rep = replace(rep, quality_metric=None)
    assert aup_summary(rep) is None, "no task metric, no accuracy to put under parallelism"


def test_table_legend_and_plot_carry_tokens_per_forward_and_aup():
    rep = report(n_models=2, threshold=True, equal=True)
    table = render_table(rep).splitlines()
    header = [cell.strip() for cell in table[0].split("  ") if cell.strip()]
    m1_rows = [line.split() for line in table[2:] if line.startswith("m1")]
    assert [row[header.index("tok/fwd") + 2] for row in m1_rows] == ["1.00", "2.00", "4.00", "2.00"]  # label takes 3 cells
    assert all(row[-1] == "180.0" for row in m1_rows), "the model's AUP on each of its rows"
    legend = " ".join(render_legend(rep).split())
    assert "d3LLM" in legend and "y_max = the best validity in this table (90.0 %)" in legend
    fig = plot_figure(rep)
    panel = fig.axes[1]
    assert "tokens per forward" in panel.get_xlabel()
    lines = {line.get_label(): line for line in panel.get_lines()}
    xs, ys = lines["m1: AUP 180.0"].get_data()
    assert list(xs) == [1.0, 2.0, 2.0, 4.0] and list(ys) == pytest.approx([0.9, 0.5, 0.9, 0.5]), "sorted by tokens per forward"
    hollow = [line for line in panel.get_lines() if line.get_label().startswith("_") and line.get_markerfacecolor() == "white"]
    assert len(hollow) == 2 and all(list(line.get_data()[0]) == [2.0, 4.0] for line in hollow), "the points AUP left out"
    assert [t.get_text() for t in panel.get_legend().get_texts()] == ["teacher: AUP 180.0", "m1: AUP 180.0"]


def test_json_carries_aup_and_every_record_its_count(tmp_path):
    rep = report(n_models=2)
    data = report_dict(rep)
    assert set(data["aup"]["models"]) == {"teacher", "m1"} and data["aup"]["y_min_offset"] == 5.0
    assert all("tokens_per_forward" in r and "revealed_tokens" in r and "forwards" in r for r in data["records"])
    assert np.isfinite([s["aup"] for s in data["aup"]["models"].values()]).all()
    kept = data["aup_kept_tokens"]  # every record's kept tokens per step is 1.0 here: each curve is its first point
    assert kept["x"] == "measured_tokens_per_step" and kept["models"]["m1"]["aup"] == pytest.approx(1.0 * 90.0)
