"""`save_plot` with many students: every model keeps its own colour, the legend sits beside the axes."""

from types import SimpleNamespace

import matplotlib.figure
import matplotlib.image

from t3d.trainer.eval_report import save_plot


def report(n_models: int) -> SimpleNamespace:
    models = {f"m{i}": {} for i in range(n_models)}
    records = [SimpleNamespace(model=m, strategy="static", tokens_per_step=t, quality=0.2 + 0.04 * i, agreement=None)
               for i, m in enumerate(models) for t in (1, 2, 4)]  # fmt: skip
    records += [SimpleNamespace(model=m, strategy="threshold", tokens_per_step=1.1, quality=0.9, agreement=None) for m in models]
    return SimpleNamespace(models=models, records=records, quality_metric="quality", prompt_source="builtin:test")


def drawn(monkeypatch, n_models: int, path) -> dict:
    """save_plot's figure as it is saved: the axes' and the legend's extents, labels, line colours."""
    seen, original = {}, matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen.update(axes=ax.get_window_extent(), legend=legend.get_window_extent(),
                    labels=[t.get_text() for t in legend.get_texts()],
                    colours={tuple(line.get_color()) for line in ax.get_lines() if line.get_linestyle() == "-"})  # fmt: skip
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    assert matplotlib.image.imread(save_plot(report(n_models), path)).shape[2] == 4
    return seen


def test_many_models_put_the_legend_beside_the_axes(tmp_path, monkeypatch):
    seen = drawn(monkeypatch, 17, tmp_path / "many.png")
    assert seen["legend"].x0 > seen["axes"].x1  # beside the axes, not over the lines
    assert seen["labels"] == [f"m{i}" for i in range(17)] + ["threshold (hollow, the model's colour)"]
    assert len(seen["colours"]) == 17  # no two models share a colour


def test_few_models_keep_the_legend_inside(tmp_path, monkeypatch):
    seen = drawn(monkeypatch, 3, tmp_path / "few.png")
    assert seen["axes"].contains(*seen["legend"].p1) and len(seen["colours"]) == 3
