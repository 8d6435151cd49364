"""bin/correlate's figures as a paper would need them: readable log ticks, labelled colour bars, values in the
heatmap cells, human names, no empty panels, line colours visible on white, error bars over seeds, and the
equal-ratio curves. Checked on the matplotlib Figure objects (what is drawn), not on the PNG bytes."""

import math

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from lrbs_tf.analysis import correlate
from lrbs_tf.analysis.plots import paper as correlate_plots, ratio as ratio_plots, style as plot_style
from tests.runfolders import write_grid, write_run

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

QUICK_BS = (32, 48, 64, 80, 96)
QUICK_LRS = (0.06, 0.09, 0.12, 0.15, 0.18)  # BS/LR 178-1600, the quick study's span


def law(bs: int, lr: float) -> float:
    return 0.9 - 0.03 * math.log(bs / lr)


def _analysis(tmp_path, seeds=(0,), sharpness=None, diverged=False):
    rng = np.random.default_rng(0)
    for s in seeds:
        write_grid(tmp_path / "runs", lambda b, l: law(b, l) + rng.normal(0, 0.003), batch_sizes=QUICK_BS,
                   lrs=QUICK_LRS, seed=s, sharpness=sharpness)
    if diverged:
        write_run(tmp_path / "runs", 0.1, status="diverged", batch_size=32, lr=0.5)
    return correlate.analyse(tmp_path / "runs")


def _tick_labels(axis) -> list[str]:
    lo, hi = axis.get_view_interval()
    return [axis.get_major_formatter()(v) for v in axis.get_majorticklocs() if lo <= v <= hi]


def _is_empty(ax) -> bool:
    return not (ax.lines or ax.collections or ax.images or ax.texts or ax.get_legend() or ax.containers)


def _luminance(colour) -> float:
    r, g, b, _ = to_rgba(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize("lo, hi, expected", [
    (178, 1600, [200, 500, 1000]),              # the quick study: decades alone label only '1000'
    (0.4, 12, [0.5, 1, 2, 5, 10]),
    (160, 2560, [200, 500, 1000, 2000]),
    (1, 1e9, [1, 100, 1e4, 1e6, 1e8]),          # many decades thinned to at most 7 labels
    (0.005, 0.2, [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]),
])
def test_log_ticks_label_at_least_three_values_in_plain_numbers(lo, hi, expected):
    assert plot_style.log_ticks(lo, hi) == pytest.approx(expected)
    assert [plot_style.tick_label(v) for v in plot_style.log_ticks(178, 1600)] == ["200", "500", "1000"]


def test_figure1_ticks_error_bars_and_diverged_runs(tmp_path):
    a = _analysis(tmp_path, seeds=(0, 1, 2), diverged=True)
    fig = correlate_plots.figure_ratio(a)
    (ax,) = fig.axes
    assert _tick_labels(ax.xaxis) == ["200", "500", "1000"]
    assert len(ax.containers) == 1 and len(ax.containers[0].lines[0].get_xdata()) == 25  # 25 cell means
    labels = ax.get_legend_handles_labels()[1]
    assert "runs: cell mean ± 1 s.d. over seeds" in labels and "diverged (1)" in labels


def test_figure2_names_its_few_lines_in_legends_in_visible_colours(tmp_path):
    fig = correlate_plots.figure_curves(_analysis(tmp_path))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(fig.axes) == 2 and len(panels) == 2 and all(len(ax.lines) == 5 for ax in panels)  # no colour bar
    # viridis and plasma end in yellows of luminance ~0.9; the cut maps stay below 0.75.
    assert max(_luminance(line.get_color()) for ax in panels for line in ax.lines) < 0.75
    by_lr, by_bs = (ax.get_legend() for ax in panels)
    assert by_lr.get_title().get_text() == "learning rate" and by_bs.get_title().get_text() == "batch size"
    assert [t.get_text() for t in by_lr.get_texts()] == [f"{v:g}" for v in QUICK_LRS]
    assert [t.get_text() for t in by_bs.get_texts()] == [f"{v:g}" for v in QUICK_BS]
    assert len({line.get_color() for line in panels[0].lines}) == 5  # five distinct colours


def test_figure2_keeps_a_labelled_colour_bar_for_many_lines(tmp_path):
    write_grid(tmp_path / "runs", law, batch_sizes=tuple(range(16, 16 * 13, 16)), lrs=(0.01, 0.02))
    fig = correlate_plots.figure_curves(correlate.analyse(tmp_path / "runs"))
    bars = [ax for ax in fig.axes if not ax.lines]
    assert [ax.get_ylabel() for ax in bars] == ["batch size"]  # 12 batch sizes: a bar; 2 learning rates: a legend


def test_no_text_in_any_figure_is_smaller_than_the_minimum(tmp_path):
    from matplotlib.text import Text

    from lrbs_tf.analysis.plots import style

    a = _analysis(tmp_path, seeds=(0, 1), sharpness={"lambda_max": 2.0, "trace": 5.0}, diverged=True)
    figures = [correlate_plots.figure_ratio(a), correlate_plots.figure_curves(a), correlate_plots.figure_heatmap(a),
               correlate_plots.figure_sharpness(a), ratio_plots.figure_equal_ratio(a)]
    for fig in figures:
        fig.canvas.draw()  # ticks and legends exist once drawn
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
        assert sizes and min(sizes) >= style.MIN_FONT


def test_figure1_withholds_the_p_value_when_runs_fail_the_premise(tmp_path):
    write_grid(tmp_path / "ok", law, batch_sizes=QUICK_BS, lrs=QUICK_LRS)
    a = correlate.analyse(tmp_path / "ok")
    title = correlate_plots.figure_ratio(a).axes[0].get_title()
    primary = a.tables["table3"][a.tables["table3"]["primary"].astype(bool)].iloc[0]
    assert f"p={primary['spearman_p']:.1e} (column_permutation), n=25" in title
    write_grid(tmp_path / "bad", law, batch_sizes=QUICK_BS, lrs=QUICK_LRS, final_train_accuracy=0.5)
    title = correlate_plots.figure_ratio(correlate.analyse(tmp_path / "bad")).axes[0].get_title()
    assert "p=" not in title and "no p: 25 of 25 runs below premise" in title


def test_heatmap_writes_each_cells_value_in_a_readable_colour(tmp_path):
    a = _analysis(tmp_path, seeds=(0, 1))
    fig = correlate_plots.figure_heatmap(a)
    ax, bar = fig.axes
    assert bar.get_ylabel() == "best test accuracy (%), mean over seeds"
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    means = a.done.groupby(["batch_size", "lr"])["best_test_accuracy"].agg(["mean", "std"])
    assert len(texts) == 25
    for (i, bs), (j, lr) in ((p, q) for p in enumerate(QUICK_BS) for q in enumerate(QUICK_LRS)):
        m, sd = means.loc[(bs, lr)]
        text = texts[(i, j)]
        assert text.get_text() == f"{100 * m:.1f}\n±{100 * sd:.1f}"
        cell = ax.images[0].cmap(ax.images[0].norm(100 * m))
        assert text.get_color() == ("black" if _luminance(cell) > 0.5 else "white")


@pytest.mark.parametrize("quantities, panels", [(("lambda_max", "trace", "frobenius_norm"), 3),
                                                (("lambda_max", "trace", "frobenius_norm", "grad_cov_trace",
                                                  "eps_sharpness"), 5)])
def test_figure4_has_human_titles_and_no_empty_panel(tmp_path, quantities, panels):
    a = _analysis(tmp_path, sharpness={q: 1.0 + i for i, q in enumerate(quantities)})
    fig = correlate_plots.figure_sharpness(a)
    assert not [ax for ax in fig.axes if _is_empty(ax)]
    data = [ax for ax in fig.axes if ax.collections]
    assert len(data) == panels
    assert data[0].get_title().splitlines()[0] == "largest Hessian eigenvalue"
    assert all("_" not in ax.get_title() and "_" not in ax.get_ylabel() for ax in data)
    assert all(len(_tick_labels(ax.xaxis)) >= 3 for ax in data)
    if panels == 5:  # 2 x 3: the sixth slot holds the legend instead of standing empty
        assert len(fig.axes) == 6 and fig.axes[-1].get_legend() is not None


def test_figure5_overlays_the_runs_of_every_shared_ratio(tmp_path):
    a = _analysis(tmp_path, seeds=(0, 1))
    panels = ratio_plots.chosen_panels(a)
    # The quick grid shares 5 ratios (533.3 by 5 cells): one panel each, as the caption says.
    assert len(a.equal_ratios) == 5
    assert [r for _, r, _, _ in panels] == sorted(a.equal_ratios["ratio"])
    fig = ratio_plots.figure_equal_ratio(a)
    assert not [ax for ax in fig.axes if _is_empty(ax)]
    assert fig._suptitle is None  # nothing cut, nothing to say
    tops = [ax for ax in fig.axes if ax.get_ylabel() == "test accuracy (%)"]
    assert len(tops) == 5
    for ax, (_, r, runs, total) in zip(tops, panels):
        assert total == runs.groupby(["batch_size", "lr"]).ngroups  # at most 5 cells per ratio: all drawn
        assert len(ax.lines) == len(runs)  # one line per run (seed) of the ratio's cells
        assert ax.get_title().endswith(f"BS/LR = {r:.4g}: {runs.groupby(['batch_size', 'lr']).ngroups} cells, "
                                       f"{len(runs)} runs")


def test_no_equal_ratio_figure_without_a_shared_ratio(tmp_path):
    write_grid(tmp_path / "runs", law, batch_sizes=(16, 48), lrs=(0.01, 0.07))
    a = correlate.analyse(tmp_path / "runs")
    assert ratio_plots.figure_equal_ratio(a) is None
    out = correlate.run(tmp_path / "runs", tmp_path / "out")
    assert "fig5_equal_ratio_curves" not in out.figures
    assert not (tmp_path / "out" / "fig5_equal_ratio_curves.png").exists()


def test_figure5_draws_at_most_six_cells_per_panel_and_says_how_many_it_left_out(tmp_path):
    from tests.runfolders import PAPER_BATCH_SIZES, PAPER_LRS

    write_grid(tmp_path / "runs", law, batch_sizes=PAPER_BATCH_SIZES, lrs=PAPER_LRS, epochs=2)
    a = correlate.analyse(tmp_path / "runs")
    panels = ratio_plots.chosen_panels(a)
    # BS/LR 1600 is held by all 20 cells (16, 0.01) ... (320, 0.2): 6 of them, spread over the batch sizes.
    label, r, runs, total = next(p for p in panels if p[1] == 1600.0)
    assert total == 20 and sorted(runs["batch_size"]) == [16, 80, 144, 192, 256, 320]
    fig = ratio_plots.figure_equal_ratio(a)
    assert any(ax.get_title().endswith("BS/LR = 1600: 6 of 20 cells, 6 runs") for ax in fig.axes)
    assert len(panels) == ratio_plots.MAX_PANELS < len(a.equal_ratios)  # cut, and the figure says so
    assert fig._suptitle.get_text().startswith(f"{ratio_plots.MAX_PANELS} of {len(a.equal_ratios)} shared BS/LR")
