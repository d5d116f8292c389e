"""genre-serve's page in a real headless browser (Debian's chromium via Selenium): a person picks a
poster, the page shows the genre bars and the heatmap the server computed; a bad file shows its reason.

``GENRE_SERVE_SCREENSHOT=<path.png>`` also saves the page as it looked (the manual's screenshot,
docs/images/serve_page.png, on the Prediction and serving page)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genre_lightning.data.demo import draw_poster
from tests.helpers.browser import chromium, upload
from tests.helpers.configs import TEST_BACKBONE
from tests.helpers.server import post_image, start_server

pytestmark = pytest.mark.slow


def test_a_person_picks_a_poster_and_sees_the_genre_bars_and_the_heatmap(tiny_run: Path, tmp_path: Path):
    ckpt = json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]
    poster = tmp_path / "synthetic poster.jpg"  # a synthetic demo poster, never a real one (studios' copyright)
    draw_poster("Horror", np.random.default_rng(3), (192, 288)).save(poster, quality=92)
    broken = tmp_path / "page.jpg"
    broken.write_text("<!doctype html><html>Access denied</html>")
    server = start_server(ckpt, tmp_path)
    driver = chromium(tmp_path / "profile")
    try:
        shown = upload(driver, f"{server.url}/", poster)
        if os.environ.get("GENRE_SERVE_SCREENSHOT"):
            driver.save_screenshot(os.environ["GENRE_SERVE_SCREENSHOT"])
        driver.save_screenshot(str(tmp_path / "page.png"))
        failed = upload(driver, f"{server.url}/", broken)
        status, expected = post_image(f"{server.url}/predict?explain=true", poster.read_bytes())  # what it must show
    finally:
        driver.quit()
        assert server.stop() == 0
    print(f"\npage: {shown['model']}; genre {shown['genre']}; bars {shown['probabilities']}; "
          f"heatmap {shown['heatmap_width']} px wide; bad file: {failed['error']!r}")  # fmt: skip
    assert status == 200
    assert shown["genre"] == expected["genre"] and shown["chosen"] == expected["genres"]
    assert shown["probabilities"] == {g: f"{p:.3f}" for g, p in expected["probabilities"].items()}
    assert shown["heatmap"] == f"data:image/png;base64,{expected['explanation']['png_base64']}"
    assert shown["heatmap_width"] == 256 and TEST_BACKBONE in shown["model"]
    assert failed["error"] == "422: not an image: PIL cannot identify the format" and failed["genre"] == ""
    with Image.open(tmp_path / "page.png") as page:
        assert page.size[0] >= 800 and np.asarray(page.convert("L")).std() > 10  # a drawn page, not a blank one
