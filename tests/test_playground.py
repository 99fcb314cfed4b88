"""The playground page (``GET /``, minicodegen/data/playground.html) in a real headless Chromium,
against the real server (``python -m minicodegen serve --model tiny``) in a subprocess: the page
streams a completion in as coloured token spans with their probabilities, incrementally, and ends
up showing exactly the text that the API returns for the same request (stop strings included)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from serve_helpers import Server
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PROMPT = "def add(a, b):\n"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def server():
    """The server's base URL; it runs for the module's tests."""
    s = Server()
    try:
        yield s.url
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by the system's chromedriver (Selenium must download nothing)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", chromedriver)) if p is None)
        pytest.fail(f"{missing} not found on PATH: the playground test needs a headless Chromium and its driver, "
                    "which .ci/run installs with apt (apt-get install chromium chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def fill(driver, field: str, value: str) -> None:
    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def complete(driver, url: str, prompt: str, max_tokens: int, stop: str = "") -> None:
    """Opens the page, fills the form, clicks Complete and waits until the stream is done."""
    driver.get(url + "/")
    fill(driver, "prompt", prompt)
    fill(driver, "max_tokens", str(max_tokens))
    fill(driver, "temperature", "0")
    fill(driver, "stop_strings", stop)
    # Record the number of token spans after each change of the output, to see the stream arrive.
    driver.execute_script("""
        const out = document.getElementById('output');
        window.spanCounts = [];
        new MutationObserver(() => {
          const n = out.querySelectorAll('span.tok').length;
          if (n !== window.spanCounts[window.spanCounts.length - 1]) window.spanCounts.push(n);
        }).observe(out, {childList: true, subtree: true, characterData: true});""")
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "1")


def shown_completion(driver, prompt: str) -> str:
    """The completion as the page shows it: the output's text after the prompt."""
    text = driver.execute_script("return document.getElementById('output').textContent")
    assert text.startswith(prompt), text
    return text[len(prompt):]


def status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def test_a_completion_streams_in_as_coloured_tokens(browser, server):
    browser.get(server + "/")
    assert "tiny" in browser.title
    ids = browser.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids)), ids  # getElementById would find only the first of two
    complete(browser, server, PROMPT, 16)
    assert status(browser).startswith("done: 16 tokens, finish_reason length"), status(browser)
    spans = browser.find_elements(By.CSS_SELECTOR, "#output span.tok")
    assert spans
    for span in spans:
        title = span.get_attribute("title")
        assert "p = " in title and "%" in title and "alternatives:" in title, title
        assert span.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)")
    # The prompt comes first, in grey, then the completion: what the API returns.
    assert browser.find_element(By.CSS_SELECTOR, "#output .prompt").get_attribute("textContent") == PROMPT
    api = post_json(server + "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert shown_completion(browser, PROMPT) == api["choices"][0]["text"]


def test_tokens_arrive_one_by_one_and_match_the_api(browser, server, tmp_path):
    complete(browser, server, PROMPT, 64)
    assert status(browser).startswith("done: 64 tokens"), status(browser)
    counts = browser.execute_script("return window.spanCounts")
    updates = sorted({n for n in counts if n > 0})
    assert len(updates) >= 2 and updates[-1] == 64, counts  # the spans came in several steps, not at once
    api = post_json(server + "/v1/completions", {"prompt": PROMPT, "max_tokens": 64, "temperature": 0})
    assert shown_completion(browser, PROMPT) == api["choices"][0]["text"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#output span.tok")) == 64

    artifacts = Path(os.environ.get("MINICODEGEN_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "playground.png"
    assert browser.save_screenshot(str(shot))
    assert shot.is_file() and shot.stat().st_size > 0


def test_a_stop_string_cuts_the_shown_text_as_the_api_does(browser, server):
    # Greedy "def add(a, b):\n" goes '    """Return a list of the list ...': the stop string ends
    # inside the token " list" and begins inside " the", so the page must cut " the" to " th".
    stop = "e list"
    complete(browser, server, PROMPT, 64, stop=stop)
    api = post_json(server + "/v1/completions", {"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stop": [stop]})
    assert api["choices"][0]["finish_reason"] == "stop"
    assert shown_completion(browser, PROMPT) == api["choices"][0]["text"]
    assert "finish_reason stop" in status(browser), status(browser)
    for span in browser.find_elements(By.CSS_SELECTOR, "#output span.tok"):
        assert "p = " in span.get_attribute("title")


def test_stop_aborts_the_stream_and_the_server_frees_the_row(browser, server):
    browser.get(server + "/")
    fill(browser, "prompt", PROMPT)
    fill(browser, "max_tokens", "500")  # most of tiny's window of 512: seconds, Stop comes long before the end
    cancelled = get_json(server + "/health")["cancelled_rows"]
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#output span.tok")) >= 5
                                     or d.find_element(By.ID, "output").get_attribute("data-done") == "1")
    assert status(browser) == "streaming…", status(browser)
    assert not browser.find_element(By.ID, "stop_strings").get_attribute("disabled")
    browser.find_element(By.CSS_SELECTOR, "button#stop").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "1")
    assert status(browser).startswith("stopped: "), status(browser)
    deadline = time.monotonic() + 30
    while (h := get_json(server + "/health"))["rows"] or h["cancelled_rows"] == cancelled:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#output span.tok")) < 500


def test_an_error_answer_shows_the_servers_message(browser, server):
    browser.get(server + "/")
    fill(browser, "max_tokens", "0")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "1")
    assert status(browser).startswith("error: 'max_tokens' must be between 1 and"), status(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "#output span.tok") == []
