"""The ``/ui`` page of the running service in a real headless browser (Debian's Chromium driven
by Playwright): a two-rule audience built by clicking shows the API's count; a portrait opened
by its owner shows masked identifiers and the viewer's watermark; another agent gets a refusal.

Screenshots go to ``$UI_SCREENSHOT_DIR`` when set (``docs/`` holds the committed ones:
``UI_SCREENSHOT_DIR=docs .venv/bin/pytest tests/integration/test_ui_browser.py``), else to the
test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crm_data.access import Assignment, open_workspace
from serving.agent_auth import mint_agent_token, token_secret
from serving.launcher import ServedService
from tests.portrait_data import build_workdir, person_ids

CHROMIUM = "/usr/bin/chromium"
API_KEY = "test-api-key-portrait"
TWO_RULES = {"type": "and", "rules": [
    {"type": "tag", "field": "subject", "op": "in", "value": ["math", "coding"]},
    {"type": "behaviour", "event_type": "any", "url_prefix": "/course", "min_count": 1,
     "within_days": 40}]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedService, list]]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (make test installs it: `make chromium`)")
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` (apt-get install chromium)")
    workdir = tmp_path_factory.mktemp("ui")
    settings = build_workdir(workdir)
    ids = person_ids(settings)
    workspace = open_workspace(settings)
    workspace.assign([Assignment(p, "E1", "east") for p in ids[:5]]
                     + [Assignment(p, "E2", "east") for p in ids[5:10]], "test")
    workspace.close()
    service = ServedService(workdir, workdir / "service.log", API_KEY)
    service.wait_until("/livez", timeout=180)
    yield service, ids
    service.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("UI_SCREENSHOT_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def _token(agent: str) -> str:
    return mint_agent_token(token_secret(None, API_KEY), agent, "agent", "east", 3600)


def test_a_two_rule_audience_built_in_the_page_shows_the_apis_count(served, browser,
                                                                    shots: Path) -> None:
    service, _ = served
    page = browser.new_page(viewport={"width": 1200, "height": 640})
    page.goto(f"{service.url}/ui#token={_token('E1')}")
    page.click("#add-tag")
    row = page.locator("#rules tbody tr").nth(0)
    row.locator("[data-role=field]").select_option("subject")
    row.locator("[data-role=op]").select_option("in")
    row.locator("[data-role=value]").fill("math,coding")
    page.click("#add-behaviour")
    row = page.locator("#rules tbody tr").nth(1)
    row.locator("[data-role=event_type]").select_option("any")
    row.locator("[data-role=url_mode]").select_option("prefix")
    row.locator("[data-role=url]").fill("/course")
    row.locator("[data-role=within_days]").fill("40")
    page.wait_for_selector("#audience-total[data-state=done]", timeout=15_000)
    page.wait_for_timeout(600)  # the last keystroke's count (debounced) has landed
    page.wait_for_selector("#audience-total[data-state=done]", timeout=15_000)
    shown = int(page.get_attribute("#audience-total", "data-value"))
    api = httpx.post(f"{service.url}/audiences/count", json={"tree": TWO_RULES},
                     headers={"Authorization": f"Bearer {_token('E1')}"}, timeout=30).json()
    assert shown == api["total"] > 0
    cumulative = page.locator("#rules tbody tr .cumulative").all_inner_texts()
    assert [int(c.split(" ")[0].replace(",", "")) for c in cumulative] == [
        s["cumulative"] for s in api["steps"]]
    page.screenshot(path=str(shots / "ui_audience.png"), full_page=True)
    page.close()


def test_the_owner_sees_the_masked_portrait_with_the_watermark(served, browser,
                                                              shots: Path) -> None:
    service, ids = served
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{service.url}/ui#token={_token('E1')}&person={ids[0]}")
    page.wait_for_selector("#portrait:not([hidden])", timeout=15_000)
    masked = page.locator("#identifiers .masked").all_inner_texts()
    assert "138****8000" in masked and all("*" in m for m in masked)
    assert "+86" not in page.content()
    assert page.get_attribute("#watermark", "data-text").startswith("E1 · ")
    assert "svg" in page.eval_on_selector("#watermark", "e => e.style.backgroundImage")
    assert page.locator("#timeline tbody tr").count() > 0
    page.screenshot(path=str(shots / "ui_portrait.png"), full_page=True)
    page.close()


def test_another_agent_gets_a_refusal(served, browser, shots: Path) -> None:
    service, ids = served
    page = browser.new_page(viewport={"width": 1200, "height": 400})
    page.goto(f"{service.url}/ui#token={_token('E2')}&person={ids[0]}")
    page.wait_for_selector("#portrait-refused:not([hidden])", timeout=15_000)
    assert page.get_attribute("#portrait-refused", "data-status") == "403"
    assert "Access refused" in page.inner_text("#portrait-refused")
    assert page.locator("#portrait").is_hidden()
    page.screenshot(path=str(shots / "ui_portrait_refused.png"))
    page.close()
    assert shutil.which("true") is not None
