"""A sweep's TensorBoard HParams view as a PNG, from a real run, so the picture in docs/results.md stays true:

    .venv/bin/python scripts/tensorboard_view.py    # docs/results.md's sweep (in outputs/quickstart/) -> docs/
    .venv/bin/python scripts/tensorboard_view.py --logdir outputs/quickstart/multiruns/<time> --out hparams.png

Starts `tensorboard --logdir` on a free loopback port and photographs it with headless Chromium (Debian's
`chromium` package: `apt-get install chromium`). The tests use serve() and the JSON API helpers below."""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# docs/results.md's TensorBoard section shows this sweep
SWEEP = ["experiment=quickstart", "trainer.max_epochs=3", "optimizer.lr=1e-3,3e-3"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@contextmanager
def serve(logdir: Path, runs: int = 1, timeout: float = 180) -> Iterator[str]:
    """`tensorboard --logdir` on a free loopback port (TensorBoard picks it: --port 0) until the block ends; yields
    its URL once its HParams view has `runs` rows (it loads the runs under `logdir` in the background)."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([*command, "--port", "0"], stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            url, rows = None, None
            while url is None or (rows := _rows(url)) < runs:
                if time.monotonic() > deadline or server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"TensorBoard did not serve {logdir} within {timeout} s (HParams rows: {rows}, of "
                        f"{runs}; -1: no answer):\n{log.read()}"
                    )
                time.sleep(0.5)
                log.seek(0)
                found = re.search(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+)/", log.read())
                url = found and found.group(1)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def _rows(url: str) -> int:
    """The HParams view's number of rows, or -1 while it does not answer."""
    try:
        return len(session_groups(url))
    except OSError:  # not listening yet, or no experiment loaded yet (an HTTP error)
        return -1


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def hparams_experiment(url: str) -> dict:
    """The HParams view's columns: {"hparamInfos": [{"name", "type", "differs"}...], "metricInfos": [...]}."""
    return _post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})


def session_groups(url: str) -> list[dict]:
    """The HParams view's rows (one per run): [{"name", "hparams": {...}, "metricValues": [...]}...]."""
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    body = {"experimentName": "", "allowedStatuses": statuses, "startIndex": 0, "sliceSize": 1000}
    return _post(f"{url}/data/plugin/hparams/session_groups", body)["sessionGroups"]


def find_chromium() -> str | None:
    """Debian's package, or the Chrome that GitHub's Ubuntu runners carry (Ubuntu's chromium is a snap stub)."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def screenshot(url: str, out: Path, size: str = "2600,560", scale: float = 0.7, timeout: float = 120) -> None:
    """Headless Chromium's picture of the HParams view (after 15 s of page time: the view loads its data); `size`
    in CSS pixels, the PNG is `scale` times that. TensorBoard 2.21 sizes the table to the whole window, not to
    the space beside its filter pane, so its last column stays out of sight (the page scrolls it sideways)."""
    browser = find_chromium()
    if browser is None:
        raise SystemExit("error: no chromium on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing from an earlier session
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}", f"--force-device-scale-factor={scale}",
             "--virtual-time-budget=15000", f"--screenshot={out.resolve()}", f"{url}/?darkMode=false#hparams"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip


def run_sweep() -> Path:
    """docs/results.md's sweep, into outputs/ like any other: returns its multirun dir."""
    command = [sys.executable, "-m", "src.train", "-m", *SWEEP, "~callbacks.rich_progress_bar"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return sorted((ROOT / "outputs" / "quickstart" / "multiruns").iterdir())[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", type=Path, help="a sweep or any folder of runs (default: run the sweep)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tensorboard_hparams.png")
    args = parser.parse_args(argv)
    logdir = args.logdir or run_sweep()
    with serve(logdir, runs=2 if args.logdir is None else 1) as url:
        screenshot(url, args.out)
    print(f"wrote {args.out} (TensorBoard on {logdir})")


if __name__ == "__main__":
    main()
