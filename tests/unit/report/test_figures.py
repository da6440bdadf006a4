"""The report's figures (sgdtune/report/figures.py) on sections made by hand: how a figure shows batch
size. Whole pages in headless Chromium: tests/unit/report/test_report.py."""


def test_batch_size_is_a_colour_scale_not_a_legend_entry_per_trial():
    from sgdtune.report.figures import fig_grad_noise, fig_learning_curves

    sizes = [8 * 2 ** (i % 8) for i in range(20)]
    gn = {"critical_batch_size": {"value": 100.0, "source": "test"},
          "curves": [{"number": i, "batch_size": b, "epoch": [1, 2, 3], "grad_noise_scale": [50.0, 80.0, 90.0 + i]}
                     for i, b in enumerate(sizes)],
          "final": {"number": list(range(20)), "batch_size": sizes, "grad_noise_scale": [90.0 + i for i in range(20)],
                    "grad_noise_scale_se": [1.0] * 20, "lower_bound": [False] * 20}}
    fig = fig_grad_noise(gn)
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert len(legend) == 2  # the final values and the critical batch size; the 20 curves read off the colour bar
    bars = [t.marker.colorbar for t in fig.data if t.marker and t.marker.showscale]
    assert len(bars) == 1 and bars[0].title.text == "B" and list(bars[0].ticktext) == [str(b) for b in sorted(set(
        sizes))]
    lc = {"trials": [{"number": i, "batch_size": b, "lr": 0.01, "epoch": [1, 2], "val_acc": [0.5, 0.6],
                      "updates": [10, 20]} for i, b in enumerate(sizes[:8])]}
    fig = fig_learning_curves(lc)
    assert fig.layout.showlegend is False
    assert sum(bool(t.marker.showscale) for t in fig.data) == 1
