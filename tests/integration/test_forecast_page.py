"""The forecast page at `/` of a served forecaster, and the JSON routes it draws from (issue 13, point 7).

A browser navigating to `/` gets the page; every API client (curl, httpx, fetch) keeps getting the JSON it
always had. The page is checked in a real browser (Debian's headless chromium via selenium): pick a series
through the search, pick a horizon, and exactly that many forecast points are drawn inside their bands.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.browser import requested_urls

pytestmark = pytest.mark.integration

# What Chromium sends when a user opens a URL (a navigation), and what fetch()/curl/httpx send.
BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)
RANGE_MAX = 60  # the session's demo forecaster (tests/conftest.py)


@pytest.fixture(scope="module")
def server(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    started = start_server(store_dir, "sales", tmp_path_factory.mktemp("sales-log"), "--workers", "1")
    yield started
    started.stop()


# --- content negotiation at `/` --------------------------------------------------------------------------------
@pytest.mark.parametrize("accept", ["application/json", "*/*", None, "text/html, application/json"])
def test_root_stays_json_for_api_clients(server, accept):
    headers = {"accept": accept} if accept is not None else {}
    with server.client() as c:
        if accept is None:
            c.headers.pop("accept", None)
        r = c.get("/", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text[:200]
    assert r.json()["model"] == "sales" and r.json()["flavor"] == "forecaster"
    assert "accept" in r.headers.get("vary", "").lower()  # a cache in front must not mix the JSON and the page


def test_root_answers_the_forecast_page_to_a_browser(server):
    with server.client() as c:
        r = c.get("/", headers={"accept": BROWSER_ACCEPT})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    assert "accept" in r.headers.get("vary", "").lower()
    page = r.text
    assert page.lower().startswith("<!doctype html>") and 'id="chart"' in page and 'href="docs"' in page
    assert not re.search(r"<script src|@import|url\(|(src|href)=[\"']?(https?:)?//", page)  # nothing from elsewhere
    assert "1/BEVERAGES" not in page  # series come from /series as one types: never thousands of options


def test_root_stays_json_for_a_model_that_is_not_a_forecaster(store_dir, serve):
    server = serve(store_dir, "iris", "--workers", "1")
    with server.client() as c:
        r = c.get("/", headers={"accept": BROWSER_ACCEPT})
        forecast = c.get("/forecast")
        series = c.get("/series")
    assert r.headers["content-type"].startswith("application/json") and r.json()["model"] == "iris"
    for answer in (forecast, series):
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", answer.text
        assert "not a forecaster" in answer.json()["message"]


def test_the_page_ships_in_the_wheel():
    """The wheel (what `pip install` and `conveyor deploy` images carry) takes serve/ files by pyproject's globs."""
    import fnmatch
    import tomllib
    from pathlib import Path

    from conveyor.serve.page import PAGE

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["conveyor"]
    shipped = PAGE.relative_to(root / "src" / "conveyor").as_posix()
    assert any(fnmatch.fnmatch(shipped, g) for g in globs), (shipped, globs)


# --- GET /forecast -------------------------------------------------------------------------------------------
def test_forecast_route_answers_history_forecast_bands_and_scores(server):
    with server.client() as c:
        r = c.get("/forecast", params={"series": "2/BEVERAGES", "range": 5})
        predicted = c.get("/predict", params={"series": "2/BEVERAGES", "range": 5}).json()["predictions"]
        default = c.get("/forecast").json()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "sales" and body["version"] == 1
    assert body["series"] == "2/BEVERAGES" and body["range"] == 5 and body["range_max"] == RANGE_MAX
    f = body["forecast"]
    # the same numbers GET /predict answers, plus the 80% band
    assert f["date"] == [p["date"] for p in predicted]
    assert f["forecast"] == pytest.approx([p["forecast"] for p in predicted])
    assert f["lower95"] == pytest.approx([p["lower"] for p in predicted])
    assert f["upper95"] == pytest.approx([p["upper"] for p in predicted])
    for values in zip(f["lower95"], f["lower80"], f["forecast"], f["upper80"], f["upper95"], strict=True):
        assert list(values) == sorted(values), values
    history = body["history"]
    assert len(history["date"]) == len(history["sales"]) >= 90 and history["date"][-1] < f["date"][0]
    assert body["method"] and body["metrics"]["mase"] > 0 and body["metrics"]["naive_mase"] > 0
    assert default["series"] == "total" and len(default["forecast"]["date"]) == 1  # the signature's defaults


@pytest.mark.parametrize(
    "query",
    [
        {"series": "nowhere", "range": 3},
        {"range": 0},
        {"range": RANGE_MAX + 1},
        {"range": "abc"},
        {"range": "2.5"},
        {"range": 3, "colour": "red"},
    ],
)
def test_forecast_route_refuses_what_predict_refuses(server, query):
    """Validated by the same path as GET /predict: the same 4xx and the same message."""
    with server.client() as c:
        r = c.get("/forecast", params=query)
        predict = c.get("/predict", params=query)
    assert 400 <= r.status_code < 500 and r.status_code == predict.status_code, (r.status_code, r.text)
    assert r.json() == predict.json() and r.json()["error"] == "invalid_input"


def test_forecast_route_takes_one_series_at_a_time(server):
    with server.client() as c:
        r = c.get("/forecast", params={"series": "*", "range": 2})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"
    assert "one series" in r.json()["message"] and "GET /predict?series=*" in r.json()["message"]


# --- GET /series ---------------------------------------------------------------------------------------------
def test_series_search_matches_case_insensitive_substrings_up_to_the_limit(server):
    with server.client() as c:
        bev = c.get("/series", params={"q": "bev"}).json()
        upper = c.get("/series", params={"q": "BEVERAGES"}).json()
        first = c.get("/series", params={"limit": 4}).json()
        none = c.get("/series", params={"q": "zzz"}).json()
    assert bev == {"query": "bev", "series": ["1/BEVERAGES", "2/BEVERAGES", "3/BEVERAGES"], "matches": 3}
    assert upper["series"] == bev["series"]
    assert first["series"] == ["total", "1/BEVERAGES", "1/CLEANING", "1/GROCERY I"]  # the default series first
    assert first["matches"] == 13
    assert none == {"query": "zzz", "series": [], "matches": 0}


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-3"])
def test_series_search_refuses_a_bad_limit(server, limit):
    with server.client() as c:
        r = c.get("/series", params={"q": "a", "limit": limit})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", r.text
    assert "'limit' must be an integer between 1 and 1000" in r.json()["message"]


def test_forecast_routes_are_in_the_openapi_document(server):
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/forecast"]["get"]["parameters"]}
    assert params == {"series", "range"}
    assert {p["name"] for p in spec["paths"]["/series"]["get"]["parameters"]} == {"q", "limit"}
    assert set(spec["paths"]["/"]["get"]["responses"]["200"]["content"]) == {"application/json", "text/html"}


# --- the page in a real browser --------------------------------------------------------------------------------
@pytest.mark.browser
def test_forecast_page_draws_the_chosen_series_and_horizon(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(series: str, steps: int):
        chart = browser.find_element(By.ID, "chart")
        if chart.get_attribute("data-series") != series or chart.get_attribute("data-range") != str(steps):
            return False
        return chart.find_elements(By.CSS_SELECTOR, "circle.forecast")

    browser.set_window_size(1280, 900)
    requested_urls(browser)  # drain what earlier tests' pages requested
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda _: drawn("total", 30))  # the default series, a month ahead
    assert browser.find_element(By.CSS_SELECTOR, "a[href='docs']").text

    # search: type part of a name, pick a match from what /series answered
    search = browser.find_element(By.ID, "series")
    search.send_keys(Keys.CONTROL, "a")  # as a user does: select what is there, type over it
    search.send_keys("bever")
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#matches li")) == 3)
    matches = browser.find_elements(By.CSS_SELECTOR, "#matches li")
    assert [m.text for m in matches] == ["1/BEVERAGES", "2/BEVERAGES", "3/BEVERAGES"]
    matches[1].click()

    horizon = browser.find_element(By.ID, "range")
    horizon.send_keys(Keys.CONTROL, "a")
    horizon.send_keys("14", Keys.ENTER)
    points = wait.until(lambda _: drawn("2/BEVERAGES", 14))
    expected = server.client().get("/forecast", params={"series": "2/BEVERAGES", "range": 14}).json()
    assert len(points) == 14
    titles = [p.find_element(By.TAG_NAME, "title").get_attribute("textContent") for p in points]
    assert [t.split(":")[0] for t in titles] == expected["forecast"]["date"]
    chart = browser.find_element(By.ID, "chart")
    for band in ("band95", "band80"):
        d = chart.find_element(By.CSS_SELECTOR, f"path.{band}").get_attribute("d")
        assert d.count("L") >= 2 * 14 - 2, (band, d[:200])  # an area over every forecast date
    assert chart.find_element(By.CSS_SELECTOR, "path.history").get_attribute("d").count("L") > 30
    labels = [t.text for t in chart.find_elements(By.CSS_SELECTOR, "text.axis-label")]
    assert "date" in labels and any("sales" in label for label in labels)
    ticks = [t.text for t in chart.find_elements(By.CSS_SELECTOR, ".x-axis text")]
    assert len(ticks) >= 3 and any("2016" in t or "2017" in t for t in ticks), ticks
    assert browser.find_element(By.ID, "method").text == expected["method"]
    scores = browser.find_element(By.ID, "scores").text
    assert "MASE" in scores and "seasonal naive" in scores
    assert not browser.find_element(By.ID, "error").text

    shot = tmp_path / "forecast.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, len(data)

    # a horizon past what the model forecasts: the service's own message, on the page
    horizon.send_keys(Keys.CONTROL, "a")
    horizon.send_keys(str(RANGE_MAX + 1), Keys.ENTER)
    refused = server.client().get("/forecast", params={"series": "2/BEVERAGES", "range": RANGE_MAX + 1}).json()
    wait.until(lambda b: b.find_element(By.ID, "error").text)
    assert refused["message"] in browser.find_element(By.ID, "error").text

    # offline: everything the page loaded came from the service itself
    urls = [u for u in requested_urls(browser) if u.startswith(("http:", "https:"))]
    assert urls and all(u.startswith(server.url) for u in urls), urls
