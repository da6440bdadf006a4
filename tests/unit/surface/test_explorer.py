"""Tests for sgdtune.surface: reference paths in Python and the page in headless Chromium."""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from sgdtune.cli import surface_main
from sgdtune.surface import explorer as S

try:  # tests/ on sys.path (rootdir-relative imports) ...
    from browser import chromium, open_page, png_stats  # noqa: F401  (chromium is a fixture)
except ImportError:  # ... or tests/ is a package
    from tests.browser import chromium, open_page, png_stats  # noqa: F401


@pytest.fixture(scope="module")
def small() -> S.SurfaceData:
    return S.make_data(300, seed=3)


# --- Python reference ---------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 64, 299, 300])
def test_path_lengths_equal_update_counts(small: S.SurfaceData, batch_size: int) -> None:
    epochs, w0 = 3, (-1.0, 2.0)
    path = S.minibatch_path(small, w0, 0.1, epochs, batch_size, seed=1)
    assert path.shape == (epochs * math.ceil(300 / batch_size) + 1, 2)
    assert tuple(path[0]) == w0
    assert S.full_batch_path(small, w0, 0.1, epochs).shape == (epochs + 1, 2)


def test_minibatch_with_b_equal_n_is_full_batch(small: S.SurfaceData) -> None:
    # Same algorithm, different formula (per-example sums vs X^T X / n): checks the statistics.
    w0 = S.default_start(small)
    full = S.full_batch_path(small, w0, 0.4, 20)
    mini = S.minibatch_path(small, w0, 0.4, 20, small.n, seed=9)
    np.testing.assert_allclose(mini, full, rtol=0, atol=1e-12)


def test_sufficient_stats_sum_in_index_order(small: S.SurfaceData) -> None:
    # The page sums with a plain for-loop; Python must round identically.
    s11 = 0.0
    for v in (small.x1 * small.x1).tolist():
        s11 += v
    assert S.sufficient_stats(small).a11 == s11 / small.n


def test_full_batch_loss_decreases_at_stable_lr_and_diverges_above_limit(small: S.SurfaceData) -> None:
    limit, w0 = S.lr_limit(small), S.default_start(small)
    losses = S.path_losses(small, S.full_batch_path(small, w0, 0.9 * limit, 60))
    assert np.all(np.diff(losses) < 0), "full-batch loss must fall every step below the limit"
    assert losses[-1] - S.loss(small, S.optimum(small)) < 0.05 * (losses[0] - losses[-1])
    unstable = S.path_losses(small, S.full_batch_path(small, w0, 1.1 * limit, 60))
    assert unstable[-1] > unstable[0], "above 2/lambda_max full batch must diverge"


def test_minibatch_reproducible_with_seed_and_differs_with_another(small: S.SurfaceData) -> None:
    w0 = S.default_start(small)
    a = S.minibatch_path(small, w0, 0.2, 4, 16, seed=5)
    b = S.minibatch_path(small, w0, 0.2, 4, 16, seed=5)
    c = S.minibatch_path(small, w0, 0.2, 4, 16, seed=6)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_mulberry32_matches_the_reference_javascript() -> None:
    # First outputs (u32) of the canonical JS mulberry32, computed with node.
    expected = {
        0: [1144304738, 1416247, 958946056, 627933444],
        42: [2581720956, 1925393290, 3661312704, 2876485805],
        4294967295: [3850105811, 813802916, 3073704848, 4054706436],
    }
    for seed, values in expected.items():
        rng = S.Mulberry32(seed)
        assert [rng.next_u32() for _ in values] == values


def test_shuffle_is_a_permutation() -> None:
    perm = list(range(1000))
    S.shuffle_in_place(perm, S.Mulberry32(1))
    assert sorted(perm) == list(range(1000)) and perm != list(range(1000))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "sgdtune.surface", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--n", "0"], ["argument --n", "100..50000", "'0'"]),
        (["--n", "50001"], ["argument --n", "100..50000", "'50001'"]),
        (["--n", "many"], ["argument --n", "100..50000", "'many'"]),
        (["--seed", "-1"], ["argument --seed", "0..4294967295", "'-1'"]),
        (["--out", "page.txt"], ["argument --out", ".html", "'page.txt'"]),
    ],
)
def test_cli_bad_input_exits_2_naming_field_allowed_and_given(args: list[str], expected: list[str]) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2
    for text in expected:
        assert text in proc.stderr


def test_cli_help_shows_examples() -> None:
    proc = _cli("--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--seed" in proc.stdout


def test_written_page_is_self_contained(tmp_path: Path) -> None:
    out = tmp_path / "surface.html"
    assert surface_main(["--out", str(out), "--n", "500", "--seed", "4"]) == 0
    html = out.read_text("utf-8")
    assert S.CONFIG_MARKER not in html and '"n":500' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"https?://", html), "no absolute URL at all: nothing to fetch"
    assert "<script src" not in html and "@import" not in html


# --- the page in headless Chromium ---------------------------------------------------------


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    return S.write_page(tmp_path_factory.mktemp("surface") / "surface.html", S.make_data(2000, 0))


def _wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel).textContent === text", arg=[selector, text], timeout=5000
    )


@pytest.mark.browser
def test_page_loads_without_errors_or_requests_and_is_drawn(chromium, page_file: Path, tmp_path: Path) -> None:
    with open_page(chromium, page_file) as visit:
        assert visit.page.evaluate("typeof window.sgdtuneSurface") == "object"
        assert visit.console_errors == []
        assert visit.external_requests == []
        assert visit.requests == [page_file.resolve().as_uri()], "the page itself is the only request"
        png = visit.screenshot(tmp_path / "surface.png")
    width, height, colours = png_stats(png)
    assert width >= 1200 and height >= 700
    assert colours > 2000, f"screenshot looks blank: {colours} distinct colours"


@pytest.mark.browser
def test_batch_slider_changes_minibatch_path_and_update_count(chromium, page_file: Path) -> None:
    with open_page(chromium, page_file) as visit:
        page = visit.page
        state = page.evaluate("sgdtuneSurface.state")
        assert state["batch"] == 32 and state["epochs"] == 50
        assert page.text_content("#mini-updates") == f"{50 * math.ceil(2000 / 32):,}"
        before = page.evaluate("Array.from(sgdtuneSurface.paths.mini)")
        page.focus("#batch")
        page.keyboard.press("Home")  # leftmost slider position: B = 1
        _wait_text(page, "#mini-updates", f"{50 * 2000:,}")
        assert page.text_content("#mini-ipe") == "2,000"
        after = page.evaluate("Array.from(sgdtuneSurface.paths.mini)")
        assert len(after) == 2 * (50 * 2000 + 1) and len(before) == 2 * (50 * 63 + 1)
        assert after[2:4] != before[2:4], "the first update must differ between B = 32 and B = 1"
        assert after == page.evaluate("Array.from(sgdtuneSurface.paths.sgd)"), "B = 1 is pure SGD"
        page.keyboard.press("End")  # rightmost: B = n, one update per epoch
        _wait_text(page, "#mini-updates", "50")
        assert page.evaluate("sgdtuneSurface.paths.mini.length") == 2 * 51
        # A click on the map moves the common start point of all three paths.
        box = page.locator("#map").bounding_box()
        page.mouse.click(box["x"] + 150, box["y"] + 480)
        page.wait_for_function(f"sgdtuneSurface.paths.full[0][0] !== {state['start'][0]!r}", timeout=5000)
        start = page.evaluate("sgdtuneSurface.state.start")
        assert page.evaluate("sgdtuneSurface.paths.full[0]") == start
        assert page.evaluate("Array.from(sgdtuneSurface.paths.sgd.slice(0, 2))") == start
        assert visit.console_errors == []


@pytest.mark.browser
def test_page_paths_equal_python(chromium, page_file: Path) -> None:
    data = S.make_data(2000, 0)
    with open_page(chromium, page_file) as visit:
        page = visit.page
        stats = page.evaluate("sgdtuneSurface.stats")
        assert stats == {k: getattr(S.sufficient_stats(data), k) for k in stats}
        rng = S.Mulberry32(7)
        assert page.evaluate("(() => { const r = sgdtuneSurface.mulberry32(7); return [r(), r(), r()]; })()") == [
            rng.random() for _ in range(3)
        ]
        for settings in ({}, {"lr": 0.9, "epochs": 80, "start": [-1.0, 3.5]}):
            if settings:
                page.evaluate("s => sgdtuneSurface.set(s)", settings)
            st = page.evaluate("sgdtuneSurface.state")
            full_js = np.array(page.evaluate("sgdtuneSurface.paths.full"))
            full_py = S.full_batch_path(data, tuple(st["start"]), st["lr"], st["epochs"])
            assert full_js.shape == full_py.shape == (st["epochs"] + 1, 2)
            assert np.abs(full_js - full_py).max() <= 1e-9
        # Bonus: mini-batch and pure SGD agree too (same PRNG, shuffle and arithmetic order).
        page.evaluate("sgdtuneSurface.set({batch: 50, epochs: 5, lr: 0.25, seed: 11})")
        st = page.evaluate("sgdtuneSurface.state")
        for name, batch in (("mini", 50), ("sgd", 1)):
            js = np.array(page.evaluate(f"Array.from(sgdtuneSurface.paths.{name})")).reshape(-1, 2)
            py = S.minibatch_path(data, tuple(st["start"]), st["lr"], 5, batch, 11)
            assert js.shape == py.shape
            assert np.abs(js - py).max() <= 1e-9
        assert visit.console_errors == []


@pytest.mark.browser
def test_recompute_n10000_50_epochs_b1_under_200ms(chromium, tmp_path: Path) -> None:
    page_path = S.write_page(tmp_path / "surface10k.html", S.make_data(10_000, 0))
    with open_page(chromium, page_path) as visit:
        page = visit.page
        page.evaluate("sgdtuneSurface.set({batch: 1, epochs: 50})")
        assert page.evaluate("sgdtuneSurface.counts.sgd.updates") == 500_000
        assert page.evaluate("sgdtuneSurface.counts.mini.updates") == 500_000
        page.evaluate("sgdtuneSurface.recompute()")  # second warm-up: optimised JIT code, buffers allocated
        times = [page.evaluate("sgdtuneSurface.recompute()") for _ in range(3)]
        median = statistics.median(times)
        timing = page.evaluate("sgdtuneSurface.timing")  # split of the last call
        print(f"recompute n=10000, 50 epochs, B=1: {[round(t, 1) for t in times]} ms, median {median:.1f} ms; "
              f"last: paths {timing['computeMs']:.1f} ms + drawing {timing['drawMs']:.1f} ms")
        assert median < 200, f"recompute took {median:.1f} ms (median of {times})"
        assert visit.console_errors == []


@pytest.mark.browser
def test_browser_helper_catches_external_requests(chromium, tmp_path: Path) -> None:
    # The "no network request" assertions above must be able to fail.
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!doctype html><link rel="icon" href="data:,"><img src="https://example.com/x.png">'
                     '<script>console.error("boom")</script>', "utf-8")
    with open_page(chromium, leaky) as visit:
        pass
    assert visit.external_requests == ["https://example.com/x.png"]
    assert "boom" in visit.console_errors
