"""The demo page of src.demo, driven in headless Chromium as a person uses it: a digits PNG chosen in its file input,
the top classes and the overlay awaited, a screenshot taken (docs/images/demo.png):

    .venv/bin/python scripts/demo_screenshot.py --ckpt outputs/quickstart/runs/<time>/checkpoints/last.ckpt

Chromium (Debian's `chromium` package) is driven through the Chrome DevTools Protocol over a pipe
(--remote-debugging-pipe: JSON messages ending in a NUL byte on its file descriptors 3 and 4), so no websocket
client is needed. tests/serving/test_demo.py uses demo_in_browser()."""

import argparse
import base64
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from scripts.tensorboard_view import CHROMIUM_FLAGS, find_chromium
from src.serving.process import server_process

ROOT = Path(__file__).resolve().parents[1]


class DevTools:
    """A headless Chromium and one page of it, commanded through the DevTools Protocol over a pipe."""

    def __init__(self, size: tuple[int, int] = (900, 560)):
        browser = find_chromium()
        if browser is None:
            raise SystemExit("error: no chromium on PATH: apt-get install chromium")
        self.profile = tempfile.TemporaryDirectory()  # a fresh profile: nothing from an earlier session
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def as_fds_3_and_4():  # the browser reads commands on 3 and writes answers on 4
            low_in, low_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
            os.dup2(low_in, 3)
            os.dup2(low_out, 4)

        self.process = subprocess.Popen(
            [browser, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send(
            "Page.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False
        )

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        """The result of one command (events in between are dropped); RuntimeError for a protocol error."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"no answer to {method} within {timeout} s")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        """The first truthy value of `expression`, polled in the page."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed false for {timeout} s")
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        os.close(self._in)
        os.close(self._out)
        self.profile.cleanup()


def demo_in_browser(url: str, image: Path, screenshot: Path) -> dict:
    """Opens the demo page at `url`, chooses `image` in its file input, waits for the answer and saves a PNG of the
    page to `screenshot`: {"state", "top" (labels shown, first the most probable), "bars", "overlay_width"}."""
    browser = DevTools()
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=url)
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        browser.send(
            "DOM.setFileInputFiles", nodeId=node, files=[str(image.resolve())]
        )  # fires its change event
        state = browser.wait_for(
            "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
        )
        overlay_width = browser.wait_for(
            "(() => { const i = document.getElementById('overlay'); return i.complete && i.naturalWidth; })()"
        ) if state == "done" else 0  # fmt: skip
        shown = browser.evaluate(
            "({top: [...document.querySelectorAll('#top li .label')].map((e) => e.textContent),"
            " bars: [...document.querySelectorAll('#top li .bar')].map((e) => e.style.width),"
            " status: document.getElementById('status').textContent})"
        )
        png = browser.send("Page.captureScreenshot", format="png")["data"]
        screenshot.write_bytes(base64.b64decode(png))
    finally:
        browser.close()
    return {"state": state, "overlay_width": overlay_width, **shown}


def digit_png(out: Path, index: int = 0) -> int:
    """scikit-learn's digit `index` as the PNG data=digits trains on (scripts/digits_to_images.py): its label."""
    digits = load_digits()
    Image.fromarray(np.round(digits.images[index] * (255 / 16)).astype(np.uint8)).save(out)
    return int(digits.target[index])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a digits checkpoint")
    parser.add_argument("--index", type=int, default=0, help="which of scikit-learn's 1797 digits to upload")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "demo.png")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, server_process("src.demo", f"ckpt_path={args.ckpt}") as url:
        image = Path(folder) / f"digit_{args.index}.png"
        label = digit_png(image, args.index)
        shown = demo_in_browser(url, image, args.out)
    print(f"wrote {args.out}: digit {label}, the page shows {shown}")


if __name__ == "__main__":
    main()
