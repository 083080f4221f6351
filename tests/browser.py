"""Headless Chromium for the console's tests: Debian's ``chromium`` driven through its
``chromedriver`` by selenium, at a desktop or a phone's size, saving screenshots for the README.

``open_browser`` yields a driver and, on leaving, quits it and waits until every process it
started (chromedriver, the browser and its helpers) is gone: none outlives the test. A missing
browser fails the test naming the packages (``make test`` installs them), never skips it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM: Final = "/usr/bin/chromium"
CHROMEDRIVER: Final = "/usr/bin/chromedriver"
DESKTOP: Final = (1280, 800)
PHONE: Final = (390, 844)
PAGE_LOAD_TIMEOUT_S: Final = 20
# Where the screenshots go: tests/.screenshots (ignored by git), or the folder named by
# PROTEGE_SCREENSHOTS — `make screenshots` points it at docs/console, which the README shows.
SCREENSHOTS: Final = Path(
    os.environ.get("PROTEGE_SCREENSHOTS") or Path(__file__).resolve().parent / ".screenshots"
)
_FLAGS: Final = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",  # screenshots without scroll bars; layout is unchanged
    f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
)


def _require_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the console's browser tests need Debian's "
            "chromium and chromium-driver (`make test` installs them, or "
            "`apt-get install chromium chromium-driver`)",
            pytrace=False,
        )


@contextmanager
def open_browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium at the desktop size; quit, with every process it started, on exit."""
    _require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in _FLAGS:
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        resize(driver, *DESKTOP)
        yield driver
    finally:
        started = _descendants(service)
        driver.quit()
        _gone, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:
            proc.kill()
        assert not alive, f"browser processes outlived driver.quit(): {alive}"


def _descendants(service: Service) -> list[psutil.Process]:
    """chromedriver and everything under it (the browser, its renderers and helpers)."""
    process = getattr(service, "process", None)
    if process is None:
        return []
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


def resize(driver: webdriver.Chrome, width: int, height: int) -> None:
    """Make the page's viewport exactly ``width`` by ``height`` CSS pixels; below 600 wide it is
    a phone's (touch, the page's ``<meta name="viewport">`` honoured), as a real one renders."""
    mobile = width < 600
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1,
         "mobile": mobile},
    )  # fmt: skip
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": mobile})


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save what the viewport shows as ``<SCREENSHOTS>/<name>.png`` (overwriting)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot saved to {path}"
    return path


def wait_css(driver: webdriver.Chrome, css: str, timeout: float = 10) -> WebElement:
    """The first element matching ``css`` once it is present."""
    wait = WebDriverWait(driver, timeout)
    element: WebElement = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)),
        f"no element {css!r} on {driver.current_url}",
    )
    return element


def fill(form: WebElement, name: str, value: str) -> None:
    """Set a form field by name, whether it is a select, a text input or a textarea."""
    field_ = form.find_element(By.NAME, name)
    if field_.tag_name == "select":
        Select(field_).select_by_value(value)
    else:
        field_.clear()
        field_.send_keys(value)


def submit(driver: webdriver.Chrome, button_id: str) -> None:
    """Press the button and wait until the page it leads to replaced this one."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, PAGE_LOAD_TIMEOUT_S).until(gone(old), f"#{button_id} led nowhere")


def gone(element: WebElement) -> Any:
    """A wait condition: ``element`` left the document. Chromium says so either as a stale
    element or, caught mid-navigation, as an inspector error about a node of no document."""

    def check(_driver: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:  # StaleElementReferenceException is one
            return True
        return False

    return check


def text_of(driver: webdriver.Chrome, css: str) -> str:
    """The visible text of the first element matching ``css``, once it is present."""
    return wait_css(driver, css).text


def row_ids(driver: webdriver.Chrome, css: str) -> list[str]:
    """The ``data-id`` of each row matching ``css``, in page order."""
    rows = driver.find_elements(By.CSS_SELECTOR, css)
    return [row.get_attribute("data-id") or "" for row in rows]


def javascript_links(driver: webdriver.Chrome) -> list[WebElement]:
    """Links whose target is script (``javascript:``, any case)."""
    return driver.find_elements(By.CSS_SELECTOR, 'a[href^="javascript:" i]')


def alert_text(driver: webdriver.Chrome) -> str | None:
    """The text of an open alert (a script ran that should not have); None when none is open."""
    try:
        return driver.switch_to.alert.text
    except NoAlertPresentException:
        return None


def layout_widths(driver: webdriver.Chrome) -> tuple[int, int]:
    """``(viewport, document)`` widths in CSS pixels: the layout viewport (a phone's own width
    only when the page asks for ``width=device-width``) and the document's scroll width, wider
    than the viewport when something sticks out (a wide table scrolling inside its own
    container does not)."""
    widths: list[int] = driver.execute_script(
        "const root = document.documentElement; return [root.clientWidth, root.scrollWidth]"
    )
    return widths[0], widths[1]
