"""report.html in a real browser: a short run's page opens in headless Chromium with no console error, shows one
section per stage that ran, renders to a screenshot, and a real click on a plot shows it large in the page's viewer
(Esc or a click closes it), with no navigation to a `data:` URL, which Chromium blocks.

Needs selenium (the `dev` extra) and Debian's chromium and chromium-driver (`.ci/run` installs them as root);
skipped with the reason when any is missing. Selenium's own driver download cannot work offline, so the driver is
pointed at the system one.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from recipe import Recipe
from tests import tiny

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
By = pytest.importorskip("selenium.webdriver.common.by").By
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)

STAGES = ["inspect", "baseline", "overfit"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run of the tiny task through the first three stages, on small budgets (a few seconds)."""
    path = tmp_path_factory.mktemp("browser_run")
    config = {
        "train": {"lr": 1e-2},
        "inspect": {"label_noise": False},
        "baseline": {"steps": 60, "seed_steps": 5},
        "overfit": {"steps": 200, "lr_steps": 40},
    }
    result = Recipe(
        tiny.classification(), run_dir=path, stages=STAGES, device="cpu", config=config, progress=False, quiet=True
    ).run()
    assert result.ok and list(result.stages) == STAGES, [(c.stage, c.name, c.message) for c in result.failures]
    return result.run_dir


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_opens_without_console_errors(run_dir, browser):
    browser.get((run_dir / "report.html").as_uri())
    assert browser.title == "recipe report"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, json.dumps(errors, indent=1)


def test_report_has_a_section_per_stage(run_dir, browser):
    browser.get((run_dir / "report.html").as_uri())
    sections = [h.get_attribute("id") for h in browser.find_elements(By.CSS_SELECTOR, "h2[id]")]
    assert sections == STAGES
    cards = [c.text.split()[0] for c in browser.find_elements(By.CSS_SELECTOR, ".summary .card")]
    assert cards == STAGES
    images = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)


def test_report_screenshot(run_dir, browser, tmp_path):
    browser.get((run_dir / "report.html").as_uri())
    path = tmp_path / "report.png"
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 800 and height >= 800, (width, height)
    assert len(data) > 20_000  # a blank page compresses to a few kilobytes


def _shown(browser, element) -> bool:
    return element.is_displayed() and browser.execute_script("return arguments[0].closest('dialog').open", element)


def test_a_click_on_a_plot_shows_it_large_and_esc_or_a_click_closes_it(run_dir, browser):
    browser.get((run_dir / "report.html").as_uri())
    thumbnail = browser.find_elements(By.CSS_SELECTOR, ".plots img")[0]
    viewer = browser.find_element(By.CSS_SELECTOR, "dialog.viewer img")
    assert not viewer.is_displayed()
    browser.execute_script("arguments[0].scrollIntoView()", thumbnail)
    thumbnail.click()
    assert _shown(browser, viewer)
    assert browser.current_url == (run_dir / "report.html").as_uri()  # no navigation, to data: or elsewhere
    natural = browser.execute_script("return arguments[0].naturalWidth", viewer)
    assert natural > thumbnail.size["width"] and viewer.size["width"] > thumbnail.size["width"], (
        natural,
        viewer.size,
        thumbnail.size,
    )
    assert viewer.get_attribute("src") == thumbnail.get_attribute("src")
    caption = browser.find_element(By.CSS_SELECTOR, "dialog.viewer p").text
    assert caption == thumbnail.get_attribute("alt") and caption.endswith(".png")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not viewer.is_displayed()
    thumbnail.click()  # open again, then close with a click on the picture
    assert _shown(browser, viewer)
    viewer.click()
    assert not viewer.is_displayed()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, json.dumps(errors, indent=1)
