"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for tests that
must see a page as a person would: Plotly figures drawn, no JavaScript errors, real pixels."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Collects uncaught errors from the first script on; read back after the page has drawn.
ERROR_HOOK = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
window.addEventListener('unhandledrejection', function (e) { window.__errors.push(String(e.reason)); });
"""


@contextmanager
def chromium(width: int = 1300, height: int = 1000) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tuner-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_plots(driver, n_expected: int, timeout: float = 60) -> int:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.querySelectorAll('.plotly-graph-div .main-svg').length") >= n_expected)
    return driver.execute_script("return document.querySelectorAll('.plotly-graph-div').length")


def js_errors(driver) -> list[str]:
    errors = list(driver.execute_script("return window.__errors || []"))
    errors += [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return errors


def non_blank(png: Path) -> tuple[int, float]:
    """(distinct colours, fraction of non-white pixels) of a screenshot."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    small = img.resize((img.width // 4, img.height // 4))
    pixels = list(small.get_flattened_data()) if hasattr(small, "get_flattened_data") else list(small.getdata())
    distinct = len(set(pixels))
    nonwhite = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    return distinct, nonwhite
