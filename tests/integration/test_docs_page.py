"""The /docs page in a real browser (Debian's chromium driven by selenium): every form works as prefilled.

Issue 9, point 10: forms without a field for `{name}`, an infer form posting to `/v2/models//infer`, and a `/`
link that opened /docs itself.
"""

from __future__ import annotations

import json
import re

import pytest

from conveyor.sinks.sql import SQLSink
from tests.integration.browser import requested_urls

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def submit_every_form(browser, url: str) -> dict[str, str]:
    """Open /docs, send each form as prefilled; returns what each printed, by 'METHOD path'."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/docs")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#ops details"))
    answers = {}
    for details in browser.find_elements(By.CSS_SELECTOR, "#ops details"):
        summary = details.find_element(By.TAG_NAME, "summary")
        summary.click()
        details.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        out = details.find_element(By.TAG_NAME, "pre")
        WebDriverWait(browser, 30).until(lambda _, out=out: out.text.strip())
        method = summary.find_element(By.CSS_SELECTOR, ".m").text
        path = summary.text.removeprefix(method).split(" — ")[0].strip()
        answers[f"{method} {path}"] = out.text
    return answers


@pytest.mark.parametrize("model", ["sales", "iris"])
def test_docs_page_forms_work_as_prefilled(browser, store_dir, serve, tmp_path, model):
    db = f"sqlite:///{tmp_path / 'predictions.db'}"
    key = "total" if model == "sales" else "example"  # the page's example key (the default series, if any)
    SQLSink(db, "predictions", key=("key", "date")).write([{"key": key, "date": "2017-01-01", "forecast": 1.5}])
    server = serve(store_dir, model, "--workers", "1", "--predictions", db)
    answers = submit_every_form(browser, server.url)
    spec_paths = json.loads(server.client().get("/openapi.json").text)["paths"]
    assert len(answers) == sum(len(item) for item in spec_paths.values())
    for what, text in answers.items():
        status = re.match(r"(\d{3}) ", text)
        assert status and status.group(1).startswith("2"), (what, text[:400])
    assert f'"model": "{model}"' in answers["GET /"] and "<!doctype" not in answers["GET /"]
    assert '"outputs"' in answers["POST /v2/models/{name}/infer"]
    assert '"outputs"' in answers["POST /v2/models/{name}/versions/{version}/infer"]
    urls = [u for u in requested_urls(browser) if u.startswith(server.url)]
    assert any(u.endswith(f"/v2/models/{model}/infer") for u in urls), urls
    for u in urls:
        path = u.removeprefix(server.url)
        assert path.startswith("/") and "{" not in path and "%7B" not in path and "//" not in path, u
