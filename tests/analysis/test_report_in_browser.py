"""The reports in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium.

Every image loads, no console error is logged, the tables, figures and interactive plots are there, and hovering a
point of the interactive plot shows its grid point, its interval and its thumbnail. Skipped when Chromium is not
installed (``apt install chromium chromium-driver``). Screenshots go to ``$SUITE_SCREENSHOTS`` if set (the committed
ones in results/screenshots/ were taken that way), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from suite.analysis.tracking import point_name
from suite.cli import main

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402  (only once selenium is known to be there)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
COMMITTED = {
    "claims": ROOT / "results" / "claims" / "report" / "index.html",
    "ablation": ROOT / "results" / "ablation" / "report" / "index.html",
    "toy-full": ROOT / "results" / "toy-full" / "report" / "index.html",
    "toy": ROOT / "results" / "toy" / "report" / "index.html",  # the default sweep's, once `suite sweep` has run
}
FLAGS = (  # headless, and no calls to Google's services (refused on a closed network, they log errors)
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None, reason="needs Chromium: apt install chromium chromium-driver"
    ),
]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("SUITE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(driver, page: Path) -> dict:
    """Load ``page`` and wait for its interactive plots; return what the checks need."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.interactive')].every(e => e.children.length > 0)"
        )
    )
    return driver.execute_script(
        """return {
            images: [...document.images].map(i => [i.alt.slice(0, 60), i.complete, i.naturalWidth]),
            tables: document.querySelectorAll('table').length,
            rows: document.querySelectorAll('tr').length,
            figures: document.querySelectorAll('figure').length,
            interactive: document.querySelectorAll('.interactive').length,
            title: document.title,
        }"""
    )


def check_page(driver, page: Path, shot: Path) -> dict:
    found = open_page(driver, page)
    assert found["images"], page
    broken = [alt for alt, complete, width in found["images"] if not complete or width == 0]
    assert not broken, f"{page}: images that did not load: {broken}"
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"{page}: console errors: {errors}"
    assert found["tables"] > 0 and found["rows"] > found["tables"] and found["figures"] > 0, found
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(entry => entry.name)")
    external = [name for name in fetched if not name.startswith(("data:", "file:"))]
    assert not external, f"{page}: fetched from elsewhere (not one offline file): {external}"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    return found


def hover_first_point(driver) -> dict:
    """Move the mouse onto the first point of the first interactive plot; return the tooltip Bokeh shows."""
    canvas = driver.execute_script(
        "const view = Bokeh.index.roots[0]; view.el.scrollIntoView(); return view.canvas_view.el;"
    )
    where = driver.execute_script(
        """const view = Bokeh.index.roots[0];
        const points = [...view.renderer_views.values()].find(
            v => v.model.type === 'GlyphRenderer' && v.model.glyph.type === 'Scatter');
        const data = points.model.data_source.data;
        const box = view.canvas_view.el.getBoundingClientRect();
        return {x: view.frame.x_scale.compute(data.x[0]), y: view.frame.y_scale.compute(data.y[0]),
                width: box.width, height: box.height, preset: data.preset[0], sampler: data.sampler[0],
                steps: data.steps[0], guidance: data.guidance[0]};"""
    )
    offset = (round(where["x"] - where["width"] / 2), round(where["y"] - where["height"] / 2))
    ActionChains(driver).move_to_element_with_offset(canvas, *offset).perform()
    tooltip = WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            """const found = [];
            const walk = root => root.querySelectorAll('*').forEach(e => {
                if (e.shadowRoot) walk(e.shadowRoot);
                if (e.classList.contains('bk-tooltip-content')) found.push(e);
            });
            walk(document);
            const tip = found.find(e => e.innerText.trim());
            return tip ? {text: tip.innerText, images: [...tip.querySelectorAll('img')].map(i => i.naturalWidth)}
                       : null;"""
        )
    )
    return {**where, **tooltip}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("browser") / "toy-quick"
    assert main(["sweep", str(ROOT / "experiments" / "toy-quick.yaml"), "--out", str(run), "--quiet"]) == 0
    return run


def test_a_new_report_loads_and_its_plots_answer_the_mouse(browser, quick_run, screenshots):
    found = check_page(browser, quick_run / "report" / "index.html", screenshots / "toy-quick-report.png")
    assert found["interactive"] == 2
    shown = browser.execute_script("return document.body.innerText")
    printed = re.findall(r"\*\*[A-Za-z][^*]*\*\*|`[^`\s]+`", shown)
    assert not printed  # the report's inline markdown (**bold**, `code`) is rendered, not printed
    tip = hover_first_point(browser)
    browser.save_screenshot(str(screenshots / "toy-quick-hover.png"))
    metrics = pd.read_parquet(quick_run / "metrics.parquet")
    row = metrics[
        (metrics.preset == tip["preset"])
        & (metrics.sampler == tip["sampler"])
        & (metrics.num_inference_steps == tip["steps"])
        & (metrics.guidance_scale.map(lambda value: f"{value:g}") == tip["guidance"])
    ].iloc[0]
    assert tip["preset"] in tip["text"] and f"{tip['steps']} steps, guidance {tip['guidance']}" in tip["text"]
    assert f"fid: {row.fid:.3f} [{row.fid_ci95_low:.3f}, {row.fid_ci95_high:.3f}]" in tip["text"], point_name(row)
    assert tip["images"] and all(width > 0 for width in tip["images"])  # the grid point's thumbnail


@pytest.mark.parametrize("name", list(COMMITTED))
def test_the_committed_reports_load(browser, screenshots, name):
    page = COMMITTED[name]
    if not page.is_file():
        pytest.skip(f"{page} is built by `suite sweep` (the default sweep), not committed")
    check_page(browser, page, screenshots / f"{name}-report.png")
