"""genre-serve's page in a real browser: Debian's chromium through its chromedriver (Selenium), headless,
with nothing downloaded at run time (the browser's own background connections switched off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.optional import have_module, require

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=960,600",
]


def chromium(profile: Path) -> Any:
    """A headless Chromium session (a Selenium WebDriver); fails under CI=true where chromium is missing."""
    require(
        CHROMIUM.is_file() and CHROMEDRIVER.is_file() and have_module("selenium"),
        "the page test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def upload(driver: Any, url: str, poster: Path, timeout: float = 120) -> dict[str, Any]:
    """Open the page, pick ``poster`` in its file input, wait for the answer; what the page shows:
    ``genre``, ``probabilities`` (as printed), ``heatmap`` (the img's src), ``error``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: "loading" not in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(poster))
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "genre").text or d.find_element(By.ID, "error").text
    )
    WebDriverWait(driver, timeout).until(  # the heatmap has loaded (or there is none: an error)
        lambda d: d.execute_script("const i = document.getElementById('heatmap'); return !i.src || i.complete")
    )
    rows = driver.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
    return {
        "model": driver.find_element(By.ID, "model").text,
        "genre": driver.find_element(By.ID, "genre").text,
        "probabilities": {
            r.get_attribute("data-genre"): r.find_element(By.CLASS_NAME, "probability").text for r in rows
        },
        "chosen": [r.get_attribute("data-genre") for r in rows if "chosen" in r.get_attribute("class")],
        "heatmap": driver.find_element(By.ID, "heatmap").get_attribute("src") or "",
        "heatmap_width": driver.execute_script("return document.getElementById('heatmap').naturalWidth"),
        "error": driver.find_element(By.ID, "error").text,
    }
