"""The web console (/ui) against a REAL gateway: uvicorn on a free 127.0.0.1 port in a background thread, with the
fake upstream, the SQLite store and the embedded reward server with a tiny model (tests/gateway/fakes.py), driven
by Debian's chromium through Selenium and chromedriver in headless mode.

The file routes are tested over plain HTTP (no browser). The browser tests skip with the reason when chromium,
chromedriver or selenium are missing (CI installs them: apt-get install chromium chromium-driver). Nothing sleeps:
WebDriverWait and `until` poll with a deadline. With REWARDGATE_SCREENSHOTS=DIR set, the tests also save PNGs of
the main pages there (docs/screenshots/ is made so: scripts/screenshots.py).
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from gateway.api.ui import UI_DIR
from gateway.config import GatewaySettings
from gateway.store import CandidateRecord, Latencies
from tests.gateway.fakes import MESSAGES, FakeUpstream, Gateway, fake_upstream, running_gateway, until
from tests.tiny import save_base, save_reward_model

T = TypeVar("T")
KEY = "gw-console-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SAMPLE = Path(__file__).resolve().parents[2] / "trainer" / "samples" / "support_pairs.jsonl"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
browser_test = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
    reason="needs a headless browser: apt-get install chromium chromium-driver; pip install selenium",
)
WAIT_S = 20.0


# ---------------------------------------------------------------- the live gateway


@dataclass
class Live:
    url: str
    gw: Gateway
    upstream: FakeUpstream
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's event loop (its thread) and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def has_routes(self, *paths: str) -> bool:
        mounted = {getattr(r, "path", None) for r in self.gw.app.routes}
        return all(p in mounted for p in paths)

    def api(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={**AUTH, **(headers or {})}, timeout=60.0, **kwargs)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_reward_model(root / "tiny-rm" / "v1", "tiny-rm", "v1", seed=0)
    return root


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Live]:
    """The gateway (with a key) served by uvicorn on its own thread and event loop for the whole module."""
    tmp = tmp_path_factory.mktemp("gateway")
    settings = GatewaySettings(
        upstream_models=("fake:ok",),
        api_keys=(KEY,),
        models_dir=str(models_dir),
        jobs_dir=str(tmp / "jobs"),
        trainer_args=("--threads=1", "--precision=fp32", "--log-every=1"),  # small and steady on a 2-core CI machine
        base_model_dirs=(str(tmp.parent),),  # the session's temp folder: the tests' tiny base models are there
    )
    started: Future[Live] = Future()

    async def main() -> None:
        try:
            async with fake_upstream() as upstream, running_gateway(tmp, upstream, models_dir, settings=settings) as gw:
                config = uvicorn.Config(gw.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
                server = uvicorn.Server(config)
                task = asyncio.create_task(server.serve())
                await until(lambda: server.started or task.done(), timeout=30)
                if task.done():
                    task.result()  # raises what stopped it
                port = server.servers[0].sockets[0].getsockname()[1]
                stop = asyncio.Event()
                started.set_result(Live(f"http://127.0.0.1:{port}", gw, upstream, asyncio.get_running_loop(), stop))
                await stop.wait()
                server.should_exit = True
                await task
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="live-gateway", daemon=True)
    thread.start()
    server = started.result(timeout=120)
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.stop.set)
        thread.join(timeout=60)


def best_of_n(live: Live, metadata: dict[str, str], n: int = 3, criteria: str = '["tiny-rm"]') -> dict[str, Any]:
    body = {"model": "fake:ok", "messages": MESSAGES, "n": n, "store": True, "metadata": metadata}
    response = live.api("POST", "/v1/chat/completions", json=body, headers={"op-criteria": criteria})
    assert response.status_code == 200, response.text
    completion: dict[str, Any] = response.json()
    return completion


# ---------------------------------------------------------------- the file routes (no browser)


def raw_get(live: Live, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """GET with the path sent byte for byte (httpx would normalise `..` away)."""
    host, port = live.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_the_shell_is_served_without_a_key_and_the_api_still_needs_one(live: Live) -> None:
    page = httpx.get(live.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/ui/static/app.js">' in page.text
    assert httpx.get(live.url + "/ui/", follow_redirects=True).url.path == "/ui"
    assert httpx.get(live.url + "/v1/logs").status_code == 401
    assert httpx.get(live.url + "/v1/logs", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("logs.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_their_type_and_revalidate_by_etag(live: Live, name: str, content_type: str) -> None:
    response = httpx.get(f"{live.url}/ui/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (UI_DIR / name).read_bytes()
    assert response.headers["cache-control"] == "no-cache"
    etag = response.headers["etag"]
    again = httpx.get(f"{live.url}/ui/static/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/../ui_routes.py",
        "/ui/static/..%2Fui_routes.py",
        "/ui/static/%2e%2e%2fui_routes.py",
        "/ui/static/..%5Cui_routes.py",
        "/ui/static/%2e%2e/%2e%2e/pyproject.toml",
        "/ui/static/../../proxy.py",
        "/ui/static/.hidden.js",
        "/ui/static/index.html/..",
        "/ui/static/nope.js",
        "/ui/static/app.js.map",
        "/ui/static/__init__.py",
        "/ui/static/%00app.js",
        "/ui/static/",
    ],
)
def test_only_the_consoles_own_files_are_served(live: Live, path: str) -> None:
    response = raw_get(live, path)
    assert response.status in (404, 405), (path, response.status)


def test_the_console_loads_nothing_from_another_origin() -> None:
    allowed = {"http://www.w3.org/2000/svg"}  # an XML namespace, never fetched
    for file in UI_DIR.iterdir():
        text = file.read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[\w/.-]*", text)) - allowed
        assert not urls, f"{file.name} refers to {urls}"
        markup = re.search(r"\.(inner|outer)HTML\s*[+]?=|insertAdjacentHTML|document\.write|ContextualFragment", text)
        assert markup is None, f"{file.name} parses markup: {markup}"


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,960"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


class Console:
    """The console in the browser: navigation, waits, form filling, screenshots."""

    def __init__(self, driver: Any, live: Live) -> None:
        self.driver = driver
        self.live = live

    def open(self, hash_: str, key: str | None = KEY) -> None:
        self.driver.get(self.live.url + "/ui/static/favicon.svg")  # any page of the origin: its localStorage
        self.driver.execute_script(
            "arguments[0] ? localStorage.setItem('rewardgate.apiKey', arguments[0])"
            " : localStorage.removeItem('rewardgate.apiKey')",
            key,
        )
        self.driver.get(f"{self.live.url}/ui#/{hash_}")

    def wait(self, condition: Callable[[Any], T], timeout: float = WAIT_S) -> T:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # Pages re-render: an element found a moment ago may be gone; look again.
        wait = WebDriverWait(self.driver, timeout, 0.05, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition)  # type: ignore[no-any-return]

    def find(self, css: str, timeout: float = WAIT_S) -> Any:
        from selenium.webdriver.common.by import By

        return self.wait(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, css)), None), timeout)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text_of(self, css: str, contains: str, timeout: float = WAIT_S) -> str:
        """Wait until an element matching `css` shows `contains`; its text."""

        def seen(_: Any) -> str | None:
            for el in self.all(css):
                text = str(el.text)
                if contains in text:
                    return text
            return None

        try:
            return self.wait(seen, timeout)
        except Exception:
            shown = [el.text for el in self.all(css)]
            raise AssertionError(f"{css!r} never showed {contains!r}; it shows {shown}") from None

    def many(self, css: str, *, count: int | None = None, containing: str = "", enabled: bool = False) -> list[Any]:
        """Wait for the elements matching `css` (showing `containing`, enabled) to be there (`count` of them)."""

        def found(_: Any) -> list[Any] | None:
            els = [e for e in self.all(css) if containing in e.text and (e.is_enabled() or not enabled)]
            return els if els and (count is None or len(els) == count) else None

        return self.wait(found)

    def usable(self, css: str) -> Any:
        """The first element matching `css` that is shown and enabled, once there is one."""
        return self.wait(lambda _: next((e for e in self.all(css) if e.is_displayed() and e.is_enabled()), None))

    def type(self, css: str, text: str) -> None:
        el = self.usable(css)
        el.clear()
        el.send_keys(text)

    def click(self, css: str) -> None:
        self.usable(css).click()

    def js_errors(self) -> list[str]:
        """The page's uncaught errors since the last call (network 4xx answers are not errors of the page)."""
        logs = self.driver.get_log("browser")
        return [e["message"] for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]

    def shoot(self, name: str) -> None:
        folder = os.environ.get("REWARDGATE_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(Path(folder) / f"{name}.png"))


@pytest.fixture
def console(driver: Any, live: Live) -> Iterator[Console]:
    page = Console(driver, live)
    yield page
    assert page.js_errors() == []


@browser_test
def test_a_401_asks_for_the_key_and_the_page_loads_with_it(console: Console) -> None:
    console.open("logs", key=None)
    console.text_of("#key-panel", "This gateway needs an API key")
    console.text_of("#key-panel", "missing or invalid API key")
    console.type("#api-key", "wrong-key")
    console.click("#key-panel button[type=submit]")
    console.text_of("#key-panel", "missing or invalid API key")  # asked again
    console.type("#api-key", KEY)
    console.click("#key-panel button[type=submit]")
    console.find("main table")
    assert not console.find("#key-panel").is_displayed()
    assert console.find("#key-button").text == "API key: set"
    assert console.driver.execute_script("return localStorage.getItem('rewardgate.apiKey')") == KEY


@browser_test
def test_logs_filter_by_metadata_and_show_one_request_side_by_side(console: Console, live: Live) -> None:
    completion = best_of_n(live, {"suite": "side-by-side"}, n=4)
    best_of_n(live, {"suite": "other"}, n=2)
    log_id = completion["rewardgate"]["log_id"]
    console.open("logs")
    console.type("#filter-metadata", "suite=side-by-side")
    console.click("#log-filters button[type=submit]")
    console.wait(lambda d: "metadata.suite=side-by-side" in d.current_url)
    rows = console.many("main tbody tr", containing="side-by-side")
    assert len(console.all("main tbody tr")) == 1 and log_id in rows[0].text
    console.shoot("logs")
    rows[0].click()
    cards = console.many("article.candidate", count=4)
    log = live.api("GET", f"/v1/logs/{log_id}").json()
    for card, candidate in zip(cards, log["candidates"], strict=True):
        assert card.get_attribute("data-rank") == str(candidate["rank"])
        assert card.find_element("css selector", ".score").text == f"{candidate['score']:.3f}"
        assert card.find_element("css selector", "pre.content").text == candidate["message"]["content"]
        raw = candidate["criteria_results"]["tiny-rm"]["score"]
        assert f"tiny-rm@v1 {raw:.4f}" in card.find_element("css selector", "table").text
    assert "chosen" in cards[0].text and "chosen" not in cards[1].text
    assert "chosen" in cards[0].get_attribute("class")
    # The response's choices are the same ranking: choice 0 is the card marked chosen.
    assert cards[0].find_element("css selector", "pre.content").text == completion["choices"][0]["message"]["content"]
    prompt = console.find(".messages").text
    assert "You are a support agent." in prompt and "How do I reset?" in prompt
    console.shoot("log")


@browser_test
def test_a_budgeted_log_shows_the_tokens_saved_and_the_rejected_candidates(console: Console, live: Live) -> None:
    body = {"model": "fake:drip", "messages": MESSAGES, "n": 4, "store": True, "metadata": {"suite": "op-bon"}}
    headers = {"op-criteria": '["tiny-rm"]', "op-bon": '{"strategy": "early_rejection", "checkpoints": [2]}'}
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(live.api, "POST", "/v1/chat/completions", json=body, headers=headers)
        live.run(until(lambda: live.upstream.cancelled >= 2, timeout=30))  # the rejected streams closed, then
        live.loop.call_soon_threadsafe(live.upstream.release.set)  # the others may finish
        response = call.result(timeout=60)
    live.loop.call_soon_threadsafe(live.upstream.release.clear)
    assert response.status_code == 200, response.text
    completion = response.json()
    budget = completion["usage"]["rewardgate"]
    console.open(f"logs/{completion['rewardgate']['log_id']}")
    cards = console.many("article.candidate", count=4)
    assert ["rejected early" in card.text for card in cards] == [False, False, True, True]
    assert "finish_reason: rejected" in cards[3].text
    facts = console.find("span.budget").text
    assert f"{budget['generated_tokens']} tokens generated vs ~{budget['plain_tokens']}" in facts
    assert f"{budget['tokens_saved']} saved" in facts and "2 of 4 candidates rejected early" in facts


@browser_test
def test_feedback_from_a_log_adds_pairs_to_the_dataset(console: Console, live: Live) -> None:
    if not live.has_routes("/v1/feedback", "/v1/datasets/{dataset}/entries"):
        pytest.skip("the feedback API (docs/LIFECYCLE.md) is not mounted in this gateway yet")
    log_id = best_of_n(live, {"suite": "feedback"}, n=3)["rewardgate"]["log_id"]
    console.open(f"logs/{log_id}")
    console.type("#feedback-dataset", "console-feedback")
    buttons = console.many("button.feedback", enabled=True)
    assert len(buttons) == 3
    buttons[2].click()  # the worst-ranked candidate is the user's choice
    console.text_of("#feedback-status", "Added 2 pairs to dataset console-feedback")
    assert "picked" in console.all("article.candidate")[2].get_attribute("class")
    entries = live.api("GET", "/v1/datasets/console-feedback/entries").json()["data"]
    log = live.api("GET", f"/v1/logs/{log_id}").json()
    chosen = log["candidates"][2]["message"]["content"]
    assert len(entries) == 2 and {e["source"] for e in entries} == {"feedback"}
    assert all(e["pair"]["messages"][-1]["content"] == chosen for e in entries)
    console.click("#feedback-status a")
    console.text_of("main h1", "console-feedback")
    assert console.find("#count-entries").text == "2"


@browser_test
def test_text_from_the_api_is_never_markup(console: Console, live: Live) -> None:
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    candidates = [
        CandidateRecord(0, {"role": "assistant", "content": evil}, "ok", "stop", score=0.9, rank=0,
                        criteria_results={"<b>rule</b>": {"status": "success", "score": 1.0, "explanation": evil}}),
        CandidateRecord(1, {"role": "assistant", "content": "<i>plain</i>"}, "ok", "stop", score=0.1, rank=1),
    ]  # fmt: skip
    log = live.run(
        live.gw.store.create_log(
            model="fake:ok",
            request={"model": "fake:ok", "messages": [{"role": "user", "content": "<b>hi</b>"}]},
            candidates=candidates,
            latencies=Latencies(1.0, 2.0, 3.0),
            metadata={"note": '<img src=x onerror="window.__pwned = 3">'},
            criteria_versions={"<b>rule</b>": "v1"},
        )
    )
    console.open("logs")
    console.text_of("main tbody", 'note=<img src=x onerror="window.__pwned = 3">')
    console.open(f"logs/{log.id}")
    assert console.find("article.candidate pre.content").text == evil
    assert "<b>hi</b>" in console.find(".messages").text
    assert "<b>rule</b>@v1" in console.find("article.candidate table").text
    assert console.all("main script, main img, main b, main i") == []
    assert console.driver.execute_script("return window.__pwned === undefined")


@browser_test
def test_api_errors_are_shown_inline(console: Console) -> None:
    console.open("logs/log_missing")
    text = console.text_of("main .error", "no log with id")
    assert text.startswith("404 not_found_error (id)")
    console.open("logs?limit=x&since=yesterday")  # a filter the API refuses
    console.text_of("main .error", "since: not an ISO 8601 datetime")


@browser_test
def test_criteria_are_listed_created_and_versioned(console: Console, live: Live) -> None:
    console.open("criteria")
    console.click("#new-criterion")
    console.type("#criterion-slug", "mentions-password")
    console.type("#criterion-description", "tells the user how to reset a password")
    console.type("#judge-model", "fake:judge")
    console.type("#judge-instructions", "The answer must explain how to reset a password.")
    console.click(".criterion-form button[type=submit]")
    console.wait(lambda d: d.current_url.endswith("#/criteria/mentions-password"))
    console.text_of("article.version", "mentions-password@v1")
    console.click("#new-version")
    assert console.find("#criterion-slug").get_attribute("disabled") is not None
    assert console.find("#judge-model").get_attribute("value") == "fake:judge"
    console.type("#judge-instructions", "The answer must give the exact steps to reset a password.")
    console.type("#judge-temperature", "0.2")
    console.click(".criterion-form button[type=submit]")
    console.text_of("article.version", "mentions-password@v2")
    newest = live.api("GET", "/v1/criteria/mentions-password").json()
    assert newest["version"] == "v2" and newest["spec"]["temperature"] == 0.2
    assert "exact steps" in newest["spec"]["instructions"]
    console.shoot("criterion")

    console.open("criteria")
    console.click("#new-criterion")
    console.type("#criterion-slug", "no-apologies")
    from selenium.webdriver.support.ui import Select

    Select(console.find("#criterion-kind")).select_by_value("rule")
    console.type("#rule-spec", '{"type": "regex", "pattern": "(", ')
    console.click(".criterion-form button[type=submit]")
    console.text_of(".form-errors", "not valid JSON")
    console.type("#rule-spec", '{"type": "regex", "pattern": "(", "must": "not_match"}')
    console.click(".criterion-form button[type=submit]")
    console.text_of(".form-errors", "400 invalid_request_error (spec.pattern)")
    console.type("#rule-spec", '{"type": "regex", "pattern": "sorry", "flags": "i", "must": "not_match"}')
    console.click(".criterion-form button[type=submit]")
    console.text_of("article.version", "no-apologies@v1")
    console.open("criteria")
    table = console.text_of("main tbody", "no-apologies")
    assert re.search(r"mentions-password LLM judge v2 2", table), table
    console.shoot("criteria")


@browser_test
def test_reward_models_page_lists_what_is_deployed_and_copies_the_slug(console: Console, live: Live) -> None:
    console.open("models")
    row = console.text_of("#deployed tbody tr", "tiny-rm")
    assert "v1 (newest)" in row and 'op-criteria: ["tiny-rm"]' in row
    button = console.find("#deployed button")
    button.click()
    console.wait(lambda _: button.text == "Copied")
    if live.has_routes("/v1/reward-models"):
        console.find("#jobs table")
        console.text_of("#jobs h2", "Fine Tunes")  # OpenPipe's console's name for the trained models' statuses
    else:  # the training API is not mounted yet: said inline, the rest of the page works
        console.text_of("#jobs .error", "404")


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@browser_test
def test_dataset_upload_reports_every_bad_line_then_loads_the_good_ones(
    console: Console, live: Live, tmp_path: Path
) -> None:
    if not live.has_routes("/v1/datasets", "/v1/datasets/{dataset}/entries"):
        pytest.skip("the datasets API (docs/LIFECYCLE.md) is not mounted in this gateway yet")
    good = SAMPLE.read_text().splitlines()[:20]
    bad_json = "{not json"
    bad_role = json.dumps({"messages": [{"role": "user", "content": "hi"}], "rejected_message": {"content": "x"}})
    upload = write_jsonl(tmp_path / "pairs.jsonl", [*good[:10], bad_json, *good[10:], bad_role])
    console.open("datasets")
    console.type("#dataset-name", "console-upload")
    console.type("#dataset-description", "uploaded from the console")
    console.click("#dataset-create button[type=submit]")
    console.text_of("main h1", "console-upload")
    console.find("#upload-file").send_keys(str(upload))
    console.click("#upload-button")
    report = console.text_of("#upload-report", "Nothing was added")
    assert "2 invalid lines" in report and re.search(r"\b11 ", report) and re.search(r"\b22 ", report), report
    assert console.find("#count-entries").text == "0"
    console.find("#upload-file").send_keys(str(upload))
    console.click("#upload-skip-invalid")
    console.click("#upload-button")
    console.text_of("#upload-report", "Added 20 pairs; skipped 2 invalid lines")
    dataset = live.api("GET", "/v1/datasets/console-upload").json()
    console.text_of("#count-entries", "20")
    assert console.find("#count-train").text == str(dataset["counts"]["TRAIN"])
    assert console.find("#count-test").text == str(dataset["counts"]["TEST"])
    console.many("#entries tbody tr", count=20)
    console.shoot("dataset")
    console.open("datasets")
    row = console.text_of("main tbody tr", "console-upload")
    assert f"20 {dataset['counts']['TRAIN']} {dataset['counts']['TEST']}" in row
    console.shoot("datasets")


@browser_test
def test_the_whole_loop_upload_train_deploy_serve_log_feedback(console: Console, live: Live, tmp_path: Path) -> None:
    """The issue's scenario: upload a dataset, train a reward model on the tiny test model from the dialog, see it
    reach DEPLOYED, send a best-of-N request through the API, see it on the logs page, give feedback, and find the
    new pairs in the dataset."""
    if not live.has_routes("/v1/datasets", "/v1/feedback", "/v1/reward-models", "/v1/base-models"):
        pytest.skip("the datasets and training-jobs APIs (docs/LIFECYCLE.md) are not both mounted yet")
    base = save_base(tmp_path / "tiny-base", "llama")
    upload = write_jsonl(tmp_path / "support.jsonl", SAMPLE.read_text().splitlines()[:60])
    console.open("datasets")
    console.type("#dataset-name", "loop")
    console.click("#dataset-create button[type=submit]")
    console.text_of("main h1", "loop")
    console.find("#upload-file").send_keys(str(upload))
    console.click("#upload-button")
    console.text_of("#upload-report", "Added 60 pairs")

    assert console.find("#train-button").text == "Reward Model"  # the seed's button and dialog
    console.click("#train-button")
    console.text_of("dialog h2", "Reward Model")
    console.wait(lambda _: len(console.find("#rm-base-model").find_elements("css selector", "option")) > 1 or None)
    from selenium.webdriver.support.ui import Select

    Select(console.find("#rm-base-model")).select_by_value("__custom__")
    console.type("#rm-base-model-custom", str(base))
    console.type("#rm-slug", "loop-rm")
    console.type("#rm-batch-size", "8")
    console.type("#rm-epochs", "1")
    console.shoot("train-dialog")
    console.click("#rm-start")
    console.wait(lambda d: "#/models/job_" in d.current_url)
    state = console.wait(lambda _: {"DEPLOYED", "ERROR"} & {console.find("#job-state").text}, timeout=500)
    assert state == {"DEPLOYED"}, console.find("main").text  # the page says why it failed
    accuracy = console.find("#test-accuracy").text
    assert accuracy.endswith("%"), accuracy
    console.shoot("reward-model")
    console.open("models")
    console.text_of("#deployed", "loop-rm")
    console.shoot("reward-models")

    completion = best_of_n(live, {"suite": "loop"}, n=3, criteria='["loop-rm"]')
    log_id = completion["rewardgate"]["log_id"]
    console.open("logs?metadata.suite=loop")
    console.text_of("main tbody", log_id)
    console.open(f"logs/{log_id}")
    console.text_of("article.candidate table", "loop-rm@v1")
    console.type("#feedback-dataset", "loop")
    console.many("button.feedback", enabled=True)[1].click()
    console.text_of("#feedback-status", "Added 2 pairs to dataset loop")
    console.click("#feedback-status a")
    console.text_of("#count-entries", "62")
    console.click("#entries-more")  # entries are listed oldest first, 50 a page
    feedback_rows = console.many("#entries tbody tr", containing="feedback")
    assert len(feedback_rows) == 2 and all(log_id in r.text for r in feedback_rows)


@browser_test
def test_import_a_published_model_and_distil_a_judge_from_the_reward_models_page(
    console: Console, live: Live, tmp_path: Path
) -> None:
    """The two dialogs of the Reward models page: Import (a tiny published classifier) and Distil (a rule's stored
    scores), each to a DEPLOYED job whose page shows its numbers."""
    if not live.has_routes("/v1/reward-models/import", "/v1/reward-models/distill"):
        pytest.skip("the import and distill routes are not mounted in this gateway")
    published = save_base(tmp_path / "published", "llama", seed=5)
    console.open("models")
    console.click("#import-button")
    console.type("#import-source", str(published))
    console.type("#import-slug", "console-imported")
    console.shoot("import-dialog")
    console.click("#import-start")
    console.wait(lambda d: "#/models/job_" in d.current_url)
    state = console.wait(lambda _: {"DEPLOYED", "ERROR"} & {console.find("#job-state").text}, timeout=300)
    assert state == {"DEPLOYED"}, console.find("main").text
    console.text_of("main", "Imported from")
    console.text_of("main h2", "Calibration")

    rule = {"slug": "says-password", "kind": "rule", "spec": {"type": "regex", "pattern": "password", "must": "match"}}
    assert live.api("POST", "/v1/criteria", json=rule).status_code == 201
    for i in range(6):
        body = {"model": "fake:ok", "messages": [{"role": "user", "content": f"Locked out, ticket {i}"}], "n": 4,
                "store": True, "metadata": {"suite": "distil"}}  # fmt: skip
        done = live.api("POST", "/v1/chat/completions", json=body, headers={"op-criteria": '["says-password"]'})
        assert done.status_code == 200, done.text
    base = save_base(tmp_path / "tiny-base", "llama")
    console.open("models")
    console.click("#distill-button")
    console.wait(lambda _: len(console.find("#distill-criterion").find_elements("css selector", "option")) > 0 or None)
    from selenium.webdriver.support.ui import Select

    Select(console.find("#distill-criterion")).select_by_value("says-password")
    console.type("#distill-slug", "console-distilled")
    console.type("#distill-metadata", "suite=distil")
    console.type("#distill-epochs", "1")
    console.type("#distill-base-model", str(base))
    console.shoot("distill-dialog")
    console.click("#distill-start")
    console.wait(lambda d: "#/models/job_" in d.current_url)
    state = console.wait(lambda _: {"DEPLOYED", "ERROR"} & {console.find("#job-state").text}, timeout=300)
    assert state == {"DEPLOYED"}, console.find("main").text
    console.text_of("main", "PASS/FAIL agreement at 0.5")
    console.find("#test-spearman")
    console.open("models")
    console.text_of("#deployed", "console-distilled")
