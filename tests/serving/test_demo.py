"""src.demo's page in a real headless Chromium (scripts/demo_screenshot.py drives it through the DevTools
Protocol): a digits PNG chosen in the file input gives the model's top class, five bars and a loaded overlay."""

import os

import numpy as np
import pytest
from PIL import Image

from scripts.demo_screenshot import demo_in_browser, digit_png
from scripts.tensorboard_view import find_chromium
from src.data.files import open_image
from src.inference.classifiers import load_classifier
from src.serving.process import server_process

# CI installs Chromium (.ci/run): there a missing browser fails the test instead of skipping it
needs_chromium = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"),
    reason="needs headless Chromium to drive the demo page: apt-get install chromium",
)


@pytest.mark.slow  # starts src.demo in a process of its own, and a browser
@needs_chromium
def test_the_demo_page_in_a_browser_shows_the_top_classes_and_the_overlay(tiny_checkpoint, tmp_path):
    image = tmp_path / "digit.png"
    digit_png(image, index=0)
    probabilities = load_classifier(tiny_checkpoint, "cpu")([open_image(image)])[0]
    ranked = [str(i) for i in np.argsort(-probabilities, kind="stable")[:5]]

    with server_process("src.demo", f"ckpt_path={tiny_checkpoint}", f"paths.log_dir={tmp_path}") as url:
        shown = demo_in_browser(url, image, tmp_path / "demo.png")

    assert shown["state"] == "done", shown
    assert shown["top"] == ranked and len(shown["bars"]) == 5
    assert shown["overlay_width"] == 16  # the model's input size (digits at 16 px): the overlay loaded
    with Image.open(tmp_path / "demo.png") as screenshot:
        assert screenshot.size == (900, 560)
        # not a blank page: the overlay's colours and the bars are in the picture
        assert len(set(screenshot.convert("RGB").getdata())) > 50
