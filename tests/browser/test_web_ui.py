"""The web UI in real headless Chromium, over the history of real flows (see conftest)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import SCREENSHOTS, SECRET, History, Server, wait_ready
from tests.flow_helpers import (
    WAXFLOW,
    finish,
    log_documents,
    produce,
    runs_by_id,
    start_flow,
)
from waxflow.connectors.broker import free_port

pytestmark = pytest.mark.integration


def shot(page: Any, name: str) -> None:
    """Save the page as docs/screenshots/NAME.png (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def row_ids(page: Any, table: str) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(f"#{table} tbody tr[data-id]",
                                               "rows => rows.map(r => r.dataset.id)")
    return ids


def test_the_flows_wrote_the_history_the_tests_expect(history: History) -> None:
    states = Counter((d["flowId"], d["state"]) for d in history.docs.values())
    assert states[("orders", "SUCCESS")] == 3
    assert states[("orders", "FAILED")] == 1
    assert states[("orders", "SKIPPED")] == 1
    assert states[("nightly-load", "SUCCESS")] >= 1
    assert states[("jobs", "SUCCESS")] == 1 and states[("notify", "SUCCESS")] == 1


def test_a_request_without_the_token_gets_401_and_with_it_200(server: Server) -> None:
    for path in ("/executions", "/api/executions", "/api/openapi.json", "/static/app.js"):
        assert server.get(path, token=False).status_code == 401, path
        assert httpx.get(server.url + path, timeout=30,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert server.get(path).status_code == 200, path
    # ?token= once: a redirect that sets the session cookie and drops the token from the URL
    first = httpx.get(f"{server.url}/flows?token={server.token}", timeout=30)
    assert first.status_code == 303 and first.headers["location"] == "/flows"
    assert server.token not in first.headers["set-cookie"]
    again = httpx.get(server.url + "/flows", cookies=first.cookies, timeout=60)
    assert again.status_code == 200


def test_every_response_sends_a_strict_content_security_policy(server: Server) -> None:
    for path in ("/executions", "/api/executions", "/nowhere"):
        csp = server.get(path).headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self' 'nonce-" in csp
        assert "unsafe-inline" not in csp
    assert "content-security-policy" in server.get("/executions", token=False).headers


def test_actions_refuse_other_origins_and_missing_tokens(server: Server,
                                                         history: History) -> None:
    failed = history.one("orders", "FAILED")
    url = f"{server.url}/api/executions/{failed['id']}/replay"
    auth = {"Authorization": f"Bearer {server.token}"}
    assert httpx.post(url, timeout=30).status_code == 401
    evil = httpx.post(url, headers={**auth, "Origin": "http://evil.example"}, timeout=30)
    assert evil.status_code == 403
    # a batch execution cannot be replayed: 409 with the reason
    batch = history.by_flow("nightly-load")[0]
    r = httpx.post(f"{server.url}/api/executions/{batch['id']}/replay", headers=auth,
                   timeout=30)
    assert r.status_code == 409 and "one record" in r.json()["error"]


def test_the_api_describes_itself(server: Server) -> None:
    spec = server.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/executions", "/api/executions/{id}", "/api/trace", "/api/flows",
                 "/api/executions/{id}/replay"):
        assert path in spec["paths"], path
    bad = server.get("/api/executions", params={"state": "BROKEN"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("state:")


def test_the_executions_page_lists_them_with_correct_counts(page: Any, server: Server,
                                                            history: History) -> None:
    page.goto(server.url + "/executions")
    expected = Counter(d["state"] for d in history.docs.values())
    shown = {el.get_attribute("data-count"): int(el.inner_text())
             for el in page.query_selector_all("#counts [data-count]")}
    assert shown.pop("ALL") == len(history.docs)
    assert shown == dict(expected)
    assert sorted(row_ids(page, "executions")) == sorted(history.docs)
    # newest first
    starts = [history.docs[i]["startDate"] for i in row_ids(page, "executions")]
    assert starts == sorted(starts, reverse=True)
    assert page.errors == []
    svg_counts = page.eval_on_selector_all(
        "svg.chart rect[data-count]", "rs => rs.map(r => +r.dataset.count)")
    assert sum(svg_counts) == len(history.docs)
    shot(page, "executions")


def test_filtering_by_failed_shows_exactly_the_failed_one(page: Any, server: Server,
                                                          history: History) -> None:
    page.goto(server.url + "/executions")
    page.select_option("#state-filter", "FAILED")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"state=FAILED"))
    assert row_ids(page, "executions") == [history.one("orders", "FAILED")["id"]]
    # free text on the record key
    page.goto(server.url + "/executions?q=order-2")
    (only,) = row_ids(page, "executions")
    assert history.docs[only]["trigger"]["key"] == "order-2"


def test_pages_of_executions_and_time_filters(server: Server, history: History) -> None:
    total = len(history.docs)
    first = server.get("/api/executions", params={"limit": "3"}).json()
    second = server.get("/api/executions", params={"limit": "3", "offset": "3"}).json()
    assert first["total"] == second["total"] == total
    ids = [r["id"] for r in first["items"] + second["items"]]
    assert len(ids) == len(set(ids)) == min(6, total)
    html = server.get("/executions", params={"limit": "3"}).text
    assert 'id="older"' in html and 'id="newer"' not in html
    assert server.get("/api/executions", params={"since": "1h"}).json()["total"] == total
    old = server.get("/api/executions", params={"until": "2000-01-01T00:00:00"}).json()
    assert old["total"] == 0 and old["items"] == []
    bad = server.get("/executions", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since:" in bad.text
    by_flow = server.get("/api/counts", params={"flow": "ui.shop.orders"}).json()
    assert by_flow["counts"] == {"SUCCESS": 3, "FAILED": 1, "SKIPPED": 1}


def test_the_failed_execution_shows_its_attempts_and_the_error(page: Any, server: Server,
                                                               history: History) -> None:
    failed = history.one("orders", "FAILED")
    page.goto(f"{server.url}/executions/{failed['id']}")
    check = page.locator("#task-runs tr[data-task=check]")
    assert check.locator("tr.attempt").count() == 3
    assert check.locator("tr.attempt[data-state=FAILED]").count() == 3
    assert "order 4 refused by the payment service" in page.inner_text("#exec-error")
    assert "refused by the payment service" in check.inner_text()
    assert page.locator("svg.timeline rect[data-attempt]").count() >= 4  # log + 3 attempts
    assert page.locator("#replay").is_enabled()
    record = page.inner_text("#record-value")
    assert '"fail": true' in record
    assert failed["logs"], "the execution document carries its log lines"
    logs = page.inner_text("#logs")
    assert "order 4 for cyd" in logs and "attempt 3 failed" in logs
    shot(page, "execution-failed")
    page.select_option("#log-filter select[name=level]", "ERROR")
    page.click("#log-filter button")
    page.wait_for_url(re.compile(r"level=ERROR"))
    levels = page.eval_on_selector_all("#logs tbody tr", "rs => rs.map(r => r.className)")
    assert levels and set(levels) == {"level-ERROR"}


def test_a_script_in_a_record_value_is_shown_as_text_and_never_runs(
        page: Any, server: Server, history: History) -> None:
    xss = next(d for d in history.by_flow("orders") if d["trigger"]["key"] == "order-3")
    page.goto(f"{server.url}/executions/{xss['id']}")
    script = "<script>window.__waxflow_xss = 1</script>"
    assert script in page.inner_text("#record-value")  # as JSON text, quotes escaped
    assert script in page.inner_text("#task-runs")
    assert page.evaluate("window.__waxflow_xss") is None
    assert page.locator("#record-value script, #task-runs script, img[src=x]").count() == 0
    page.goto(server.url + "/executions")
    assert page.evaluate("window.__waxflow_xss") is None
    assert page.errors == []  # no script error, no CSP violation (our own JS/CSS load)


def test_a_secret_in_a_record_stays_masked(page: Any, server: Server,
                                           history: History) -> None:
    order = next(d for d in history.by_flow("orders") if d["trigger"]["key"] == "order-2")
    page.goto(f"{server.url}/executions/{order['id']}")
    assert '"note": "******"' in page.inner_text("#record-value")
    assert SECRET not in page.content()
    assert SECRET not in server.get(f"/api/executions/{order['id']}/record").text


def test_the_batch_execution_shows_its_file_offsets_and_count(page: Any, server: Server,
                                                              history: History) -> None:
    batch = max(history.by_flow("nightly-load"), key=lambda d: d["trigger"]["messagesCount"])
    page.goto(f"{server.url}/executions/{batch['id']}")
    text = page.inner_text("#trigger")
    assert batch["trigger"]["uri"] in text
    assert page.locator("#batch-offsets tr").count() == len(batch["trigger"]["offsets"]) + 1
    shot(page, "execution-batch")


def test_the_trace_of_the_chained_record_shows_the_downstream_execution(
        page: Any, server: Server, history: History) -> None:
    (job,) = history.by_flow("jobs")
    (notify,) = history.by_flow("notify")
    page.goto(server.url + "/trace")
    page.fill("#trace-form input[name=topic]", history.jobs_topic)
    page.fill("#trace-form input[name=partition]", "0")
    page.fill("#trace-form input[name=offset]", str(job["trigger"]["offset"]))
    page.click("#trace-form button")
    page.wait_for_selector("#trace")
    assert row_ids(page, "trace") == [job["id"], notify["id"]]
    assert "downstream" in page.locator(f"#trace tr[data-id='{notify['id']}']").inner_text()
    shot(page, "trace")
    page.goto(f"{server.url}/executions/{job['id']}")
    assert row_ids(page, "downstream") == [notify["id"]]
    page.goto(f"{server.url}/executions/{notify['id']}")
    assert page.get_attribute("#upstream", "href") == f"/executions/{job['id']}"


def test_the_flows_page_shows_each_flow_with_counts_and_lag(page: Any, server: Server,
                                                            history: History) -> None:
    page.goto(server.url + "/flows")
    names = page.eval_on_selector_all("#flows tbody tr[data-flow]",
                                      "rows => rows.map(r => r.dataset.flow)")
    assert sorted(names) == ["ui.pipeline.jobs", "ui.pipeline.notify", "ui.shop.nightly-load",
                             "ui.shop.orders"]
    for name in names:  # every flow ran until idle and committed everything
        row = page.locator(f"#flows tr[data-flow='{name}']")
        assert row.locator(".lag-total").inner_text() == "0", name
    orders = page.locator("#flows tr[data-flow='ui.shop.orders']")
    assert "FAILED 1" in orders.inner_text()
    partitions = orders.locator("table.lag tr").inner_text()
    assert f"{history.orders_topic}/0" in partitions and "end 5" in partitions
    shot(page, "flows")


def test_the_replay_button_runs_the_failed_execution_again_under_the_same_id(
        page: Any, server: Server, history: History) -> None:
    failed = history.one("orders", "FAILED")
    before = runs_by_id(log_documents(history.bootstrap, history.log_topic))[failed["id"]]
    page.goto(f"{server.url}/executions/{failed['id']}")
    assert page.locator("#runs tbody tr").count() == len(before) == 1
    page.click("#replay")
    page.wait_for_selector("#confirm-replay")
    shot(page, "replay-confirm")
    page.click("#confirm-replay")
    page.wait_for_selector("#replayed", timeout=120_000)
    after = runs_by_id(log_documents(history.bootstrap, history.log_topic))[failed["id"]]
    assert len(after) == 2 and before < after
    (new_run,) = after - before
    assert new_run in page.inner_text("#replayed")
    assert page.inner_text("#exec-id") == failed["id"]
    assert page.locator("#runs tbody tr").count() == 2
    assert new_run in page.inner_text("#runs")
    shot(page, "execution-replayed")


def test_replay_without_the_flow_file_says_why_it_is_disabled(
        tmp_path: Path, server: Server, history: History) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [WAXFLOW, "server", "--port", str(port), "--bootstrap", history.bootstrap,
         "--topic-log", history.log_topic, "--index", str(tmp_path / "idx.sqlite")],
        env=history.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "", proc, until=lambda s: s["caughtUp"] and s["lastSync"])
        failed = history.one("orders", "FAILED")
        res = httpx.get(f"{url}/executions/{failed['id']}", timeout=60)
        assert res.status_code == 200, res.text[-2000:]
        html = res.text
        assert re.search(r'<button type="button" id="replay" disabled>', html), html[-3000:]
        assert "no flow file for ui.shop.orders" in html
        # no token configured, loopback: reading is open, a foreign Host is refused
        assert httpx.get(url + "/executions", headers={"Host": "evil.example"},
                         timeout=30).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_server_follows_the_log_while_it_runs(page: Any, server: Server,
                                                  history: History) -> None:
    """Last (it adds an execution): a record processed while the server runs shows up, and
    the open executions page refreshes itself to show it."""
    before = server.get("/api/counts", params={"flow": "orders"}).json()["total"]
    page.goto(server.url + "/executions?flow=orders")
    assert page.inner_text("#counts [data-count=ALL]") == str(before)
    late: list[bytes | None] = [json.dumps({"id": 5, "name": "late", "amount": 1}).encode()]
    produce(history.bootstrap, history.orders_topic, late, keys=[b"order-5"])
    finish(start_flow(history.flows["orders"], history.env, idle=2), timeout=180)
    # no navigation here: the page's own script sees the new count and reloads
    page.wait_for_function(
        "n => document.querySelector('#counts [data-count=ALL]')?.textContent === n",
        arg=str(before + 1), timeout=90_000)
    (found,) = server.get("/api/executions", params={"q": "order-5"}).json()["items"]
    assert found["state"] == "SUCCESS"
    assert found["id"] in row_ids(page, "executions")
