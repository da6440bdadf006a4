"""docs/mlflow-compare.png: the MLflow UI as `sgdtune ui` opens it on a quick study.

    python docs/mlflow_screenshot.py [OUT.png] [--trials 8]

Runs experiments/quick.toml in a temporary folder, starts `python -m sgdtune.ui` there on
a free loopback port, opens the printed URL in headless Chromium (tests/browser.py: no
request leaves loopback), waits for the runs table, and saves the view. Nothing is left
behind: the servers are stopped, the folder removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import launch, open_page  # noqa: E402

UP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the MLflow UI on a quick study.")
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs/mlflow-compare.png"))
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    work = Path(tempfile.mkdtemp(prefix="sgdtune-shot-"))
    try:
        shutil.copytree(ROOT / "experiments", work / "experiments")
        subprocess.run([sys.executable, "-m", "sgdtune.study", "experiments/quick.toml", "--no-progress",
                        "--n-trials", str(args.trials)], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        ui = subprocess.Popen([sys.executable, "-m", "sgdtune.ui", "--port", str(free_port())], cwd=work, env=env,
                              stdout=subprocess.PIPE, text=True)
        try:
            url = None
            for line in ui.stdout:
                if line.startswith("  quick: "):
                    url = line.split(": ", 1)[1].strip()
                if line.startswith("Ctrl-C stops"):
                    break
            if url is None:
                raise RuntimeError(f"sgdtune ui printed no URL (exit status {ui.poll()})")
            shoot(url, Path(args.out))
        finally:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        with open_page(browser, url, 1500, 700, timeout_ms=60_000) as visit:
            page = visit.page
            page.locator(".ag-header-cell[col-id='metrics.`final_val_acc`']").wait_for(timeout=UP_TIMEOUT_S * 1000)
            close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
            if close.count():  # MLflow 3.17 opens a chat panel beside the table: not what this shows
                close.click()
            page.wait_for_timeout(1500)
            visit.screenshot(out, full_page=False)
            if visit.external_requests:
                raise RuntimeError(f"requests left loopback: {visit.external_requests}")
        browser.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
