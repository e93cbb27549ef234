"""report.html and the app in a real browser: Debian's chromium and chromium-driver, headless,
driven by selenium. Each test saves a screenshot in its temporary folder (report.png,
comparison.png, app.png). Without chromium these tests fail (they never skip): .ci/run installs it."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2000",
)
TINY = REPO / "configs" / "tiny-random.yaml"
LOCAL = ("127.0.0.1", "localhost", "::1")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    pytest.fail(f"{names[0]} not found: the browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run installs them).")


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail('selenium is not installed: pip install -e ".[test]"')
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _network_requests(driver) -> list[str]:
    """Every http(s)/ws(s) URL the page asked for (file:, data:, blob: and the browser's own chrome: pages aside)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", {}).get("url") or message["params"].get("url", "")
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                urls.append(url)
    return urls


def _wait(condition, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _all_images_loaded(driver) -> list:
    """Scroll every image into view (they load lazily) and return those that did not load."""
    from selenium.webdriver.common.by import By

    for image in driver.find_elements(By.TAG_NAME, "img"):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
    driver.execute_script("window.scrollTo(0, 0);")
    _wait(lambda: driver.execute_script("return Array.from(document.images).every(i => i.complete)"), 30, "the images to load")
    return driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src'))")


def _visible_cards(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden).map(c => c.id)")


def _picture(path: Path, seed: int, size=(64, 48)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    array = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 40 * seed)], axis=-1).astype(np.uint8)
    Image.fromarray(array).save(path)
    return array


# ------------------------------------------------------------------------------ the report


@pytest.fixture
def tiny_run(tmp_path, one_thread):
    """scripts/refine.py with the tiny random models over three images, one of them corrupt."""
    import importlib.util

    inputs = tmp_path / "in"
    for seed, name in enumerate(("cube.png", "cat.png")):
        _picture(inputs / name, seed)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (inputs / "prompts.csv").write_text("name,prompt\ncube.png,a red cube on a blue table\ncat.png,a cat wearing a hat\nbroken.png,a dog\n")
    spec = importlib.util.spec_from_file_location("refine_script", REPO / "scripts" / "refine.py")
    refine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refine)
    args = ["--input", inputs, "--output", tmp_path / "out", "--prompts", inputs / "prompts.csv", "--config", TINY, "--metrics", "psnr", "--no-progress"]
    assert refine.main([str(a) for a in args]) == 1  # broken.png fails
    return tmp_path / "out"


def test_the_report_of_a_tiny_run_in_a_browser(tiny_run, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from grefine.run.runner import read_results

    rows = read_results(tiny_run / "results.csv")
    browser.get((tiny_run / "report.html").as_uri())
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert sorted(unquote(card.get_attribute("id")) for card in cards) == sorted(rows) == ["broken.png", "cat.png", "cube.png"]
    assert _all_images_loaded(browser) == []
    unshowable = browser.find_elements(By.CSS_SELECTOR, ".unshowable")  # the corrupt input: a link to it, not a broken image
    assert [note.find_element(By.XPATH, "ancestor::article").get_attribute("id") for note in unshowable] == ["broken.png"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cube\\.png img")) == 8  # before, after, 4 maps, 2 under the overlays
    assert "noun-unmatched" in browser.page_source or "matched" in browser.find_element(By.ID, "cube.png").text

    # the slider: dragged to the left, the before image shows less
    box = browser.find_element(By.CSS_SELECTOR, "#cube\\.png .compare")
    clip = lambda: browser.execute_script("return getComputedStyle(arguments[0].querySelector('img.before')).clipPath", box)  # noqa: E731
    start = clip()
    slider = box.find_element(By.CSS_SELECTOR, "input.slider")
    width = slider.size["width"]
    ActionChains(browser).move_to_element(slider).click_and_hold().move_by_offset(-int(width * 0.3), 0).release().perform()
    position = float(browser.execute_script("return arguments[0].style.getPropertyValue('--pos')", box).rstrip("%"))
    assert 10 < position < 30 and clip() != start

    # filters: failures only; then the images whose psnr got worse; sorting by the change of psnr
    Select(browser.find_element(By.ID, "filter-tag")).select_by_value("failed")
    assert _visible_cards(browser) == ["broken.png"]
    Select(browser.find_element(By.ID, "filter-tag")).select_by_value("all")
    Select(browser.find_element(By.ID, "filter-delta")).select_by_value("psnr")
    Select(browser.find_element(By.ID, "filter-change")).select_by_value("worsened")
    worse = sorted(name for name, row in rows.items() if not row["error"] and float(row["psnr_after"]) < float(row["psnr_before"]))
    assert sorted(_visible_cards(browser)) == worse and worse
    Select(browser.find_element(By.ID, "filter-change")).select_by_value("any")
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("d:psnr")
    Select(browser.find_element(By.ID, "sort-order")).select_by_value("desc")
    order = [c.get_attribute("id") for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]
    deltas = {name: float(row["psnr_after"]) - float(row["psnr_before"]) for name, row in rows.items() if not row["error"]}
    assert order == sorted(deltas, key=lambda name: -deltas[name]) + ["broken.png"]  # no change of psnr: last
    assert browser.find_element(By.ID, "shown").text == "3 of 3 shown"

    browser.save_screenshot(str(tmp_path / "report.png"))
    assert _console_errors(browser) == []
    assert _network_requests(browser) == []  # a local file: nothing fetched


def test_a_benchmarks_comparison_in_a_browser(browser, tmp_path):
    import grefine
    from grefine.run.runner import run_folder
    from tests.test_report import _Invert

    inputs = tmp_path / "in"
    for seed in range(3):
        _picture(inputs / f"img{seed}.png", seed)
        (inputs / f"img{seed}.txt").write_text(f"prompt {seed}")
    for method in ("identity", "invert"):
        run_folder(_Invert(), inputs, tmp_path / "bench" / "db" / method, progress=False)
    grefine.report(tmp_path / "bench")
    browser.get((tmp_path / "bench" / "db" / "report.html").as_uri())
    from selenium.webdriver.common.by import By

    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 3 and all(len(card.find_elements(By.CSS_SELECTOR, ".compare")) == 2 for card in cards)
    assert _all_images_loaded(browser) == []
    browser.save_screenshot(str(tmp_path / "comparison.png"))
    assert _console_errors(browser) == [] and _network_requests(browser) == []


def test_a_large_report_opens_in_pages(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from grefine.run.report import PAGE_SIZE, write_report
    from grefine.run.runner import write_results

    count = 2 * PAGE_SIZE + 20
    rows = [{"name": f"img{k:03d}.png", "prompt": "p", "psnr_before": 30.0, "psnr_after": 30.0 + ((k * 37) % count) / 10} for k in range(count)]
    rows[7] = {"name": "img007.png", "prompt": "p", "error": "boom"}  # a failed row has no scores
    write_results(tmp_path / "results.csv", rows, ["psnr"])
    browser.get(write_report(tmp_path).as_uri())
    assert len(_visible_cards(browser)) == PAGE_SIZE and _visible_cards(browser)[0] == "img000.png"
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("d:psnr")
    Select(browser.find_element(By.ID, "sort-order")).select_by_value("desc")
    pages = [_visible_cards(browser)]
    for _ in range(2):
        browser.find_element(By.ID, "page-next").click()
        pages.append(_visible_cards(browser))
    assert [len(page) for page in pages] == [PAGE_SIZE, PAGE_SIZE, 20] and not browser.find_element(By.ID, "page-next").is_enabled()
    delta = {row["name"]: row["psnr_after"] - row["psnr_before"] for row in rows if "error" not in row}
    assert sum(pages, []) == sorted(delta, key=lambda name: -delta[name]) + ["img007.png"]  # every card once, in order
    Select(browser.find_element(By.ID, "filter-tag")).select_by_value("failed")  # a filter starts again at page 1
    assert _visible_cards(browser) == ["img007.png"] and browser.find_element(By.ID, "shown").text == f"1 of {count} shown"
    assert _console_errors(browser) == []


# ------------------------------------------------------------------------------ the app

_AUDIT_HOOK = """
import os, sys
_log = open(os.environ["GREFINE_TEST_SOCKET_LOG"], "a", buffering=1)
def _audit(event, args):
    if event == "socket.connect":
        _log.write(repr(args[1]) + "\\n")
    elif event == "socket.getaddrinfo":
        _log.write(repr((args[0], args[1])) + "\\n")
sys.addaudithook(_audit)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    """scripts/app.py with the tiny random models, every socket it opens logged by an audit hook."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_AUDIT_HOOK)
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_")}  # the app switches analytics off itself
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(REPO), env.get("PYTHONPATH", "")])
    env["GREFINE_TEST_SOCKET_LOG"] = str(tmp_path / "sockets.log")
    port = _free_port()
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "app.py"), "--config", str(TINY), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        _wait(lambda: process.poll() is not None or "app: serving" in (tmp_path / "app.log").read_text(), 300, "the app to start")
        assert process.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
        assert f"app: serving http://127.0.0.1:{port}/" in (tmp_path / "app.log").read_text()
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    hosts = [line for line in (tmp_path / "sockets.log").read_text().splitlines() if line.strip()]
    remote = [line for line in hosts if not any(f"'{host}'" in line for host in LOCAL) and not line.startswith(("'/", "b'"))]
    assert remote == [], f"the app opened connections beyond this machine: {remote}"


def _set_number(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=number]")
    box.clear()
    box.send_keys(value, Keys.ENTER)


def _coverage(driver) -> float:
    from selenium.webdriver.common.by import By

    match = re.search(r"mask: ([\d.]+) %", driver.find_element(By.ID, "coverage").text)
    return float(match.group(1)) if match else -1.0


def _fetch(url: str) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(BytesIO(response.read())))


def test_the_app_in_a_browser(app_url, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    original = _picture(tmp_path / "upload.png", 3, size=(128, 96))
    browser.get(app_url)
    upload = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"), 60, "the page")[0]
    upload.send_keys(str(tmp_path / "upload.png"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a red cube on a blue table")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-image img"), 30, "the upload")
    browser.find_element(By.ID, "analyze").click()

    # the maps, the scores and the phrase table
    loaded = "return Array.from(document.querySelectorAll(arguments[0] + ' img')).some(i => i.complete && i.naturalWidth > 0)"
    for view in ("#pq-map", "#defect-map", "#mask-view"):
        _wait(lambda: browser.execute_script(loaded, view), 120, f"{view} to show a map")
    assert "p =" in browser.find_element(By.ID, "scores").text and "a =" in browser.find_element(By.ID, "scores").text
    phrases = browser.find_element(By.ID, "phrases").text
    assert "a red cube" in phrases and "a blue table" in phrases
    _wait(lambda: _coverage(browser) >= 0, 30, "the mask's coverage")

    # the settings update the mask before refining: no stage 2, no feathering, an empty mask to paint on
    _set_number(browser, "strength2", "0")
    _set_number(browser, "feather", "0")
    next(label for label in browser.find_elements(By.CSS_SELECTOR, "#mask-start label") if "empty" in label.text).click()
    _wait(lambda: _coverage(browser) == 0.0, 30, "the empty mask")
    time.sleep(2)  # the settings' last update rewrites the editor's layers: a stroke drawn before it lands is lost
    painted = 0.0
    for _ in range(3):  # a stroke drawn while the editor is still loading its layers is dropped: draw it again
        editor = browser.find_element(By.ID, "mask-editor")
        next(b for b in editor.find_elements(By.CSS_SELECTOR, "button") if b.get_attribute("aria-label") == "Brush").click()
        canvas = max(editor.find_elements(By.CSS_SELECTOR, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
        stroke = ActionChains(browser).move_to_element_with_offset(canvas, -int(canvas.size["width"] * 0.15), 0).click_and_hold()
        for _ in range(4):
            stroke = stroke.pause(0.1).move_by_offset(int(canvas.size["width"] * 0.06), 0)
        stroke.release().perform()
        end = time.monotonic() + 30
        while (painted := _coverage(browser)) <= 0 and time.monotonic() < end:
            time.sleep(0.5)
        if painted > 0:
            break
    browser.save_screenshot(str(tmp_path / "app-painted.png"))
    assert painted > 0, "the painted stroke never reached the mask (see app-painted.png)"
    assert painted < 60  # a stroke, not the whole image

    browser.find_element(By.ID, "refine").click()
    hrefs = lambda: {a.get_attribute("href").rsplit("/", 1)[-1]: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a[href]")}  # noqa: E731
    links = _wait(lambda: "refined.png" in hrefs() and "mask.png" in hrefs() and hrefs(), 180, "refined.png and mask.png to download")
    refined, mask = _fetch(links["refined.png"]), _fetch(links["mask.png"]) > 127
    changed = np.abs(refined.astype(np.int16) - original.astype(np.int16)).max(axis=2) > 0
    assert changed.any() and not (changed & ~mask).any()  # stage 2 off: only the painted mask changed
    assert abs(100 * mask.mean() - painted) < 0.2
    assert "stage 2 skipped: strength 0" in browser.find_element(By.ID, "refine-note").text
    _wait(lambda: browser.execute_script(loaded, "#compare"), 30, "the before/after comparison")

    browser.set_window_size(1400, browser.execute_script("return document.documentElement.scrollHeight") + 40)
    browser.save_screenshot(str(tmp_path / "app.png"))  # the whole page
    assert _console_errors(browser) == []
    assert [url for url in _network_requests(browser) if not url.startswith((app_url, app_url.replace("http", "ws")))] == []
