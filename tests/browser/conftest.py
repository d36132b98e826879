"""Browser tests of ``waxflow server``: real flows on the real broker, the real server under
uvicorn, real headless Chromium (Debian's ``chromium`` package, driven by Playwright).

One module-scoped history shared by the tests (:func:`history`): a realtime flow with
successes, a FAILED execution with retries, a SKIPPED malformed record and a record whose
value holds ``<script>``; a batch flow (``kafka.Trigger``); and two chained flows (the first
produces, the second is triggered by its records). The server (:func:`server`) runs with a
token and the directory of the flow files, so its Replay button works and it knows each
flow's consumer group.

Chromium: ``/usr/bin/chromium`` (or ``$WAXFLOW_CHROMIUM``); missing, the tests are skipped,
unless ``WAXFLOW_REQUIRE_CHROMIUM=1`` (CI), where that fails them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flow_helpers import (
    WAXFLOW,
    FlowProcess,
    finish,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    start_flow,
    write_flow,
)
from waxflow.connectors.broker import free_port

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SECRET = "card-tok-7f3a9c2e"  # $WAXFLOW_SECRET_CARD_TOKEN for the flows and the server
XSS = "<script>window.__waxflow_xss = 1</script><img src=x onerror=\"window.__waxflow_xss=2\">"

ORDERS = """\
id: orders
namespace: ui.shop
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    onSerdeError: {{type: SKIPPED}}
tasks:
  - id: log
    type: core.Log
    message: "order {{{{ trigger.value.id }}}} for {{{{ trigger.value.name }}}}"
  - id: check
    type: core.Fail
    condition: "{{{{ trigger.value.fail | default(false) }}}}"
    errorMessage: "order {{{{ trigger.value.id }}}} refused by the payment service"
    retry: {{type: constant, interval: PT0.1S, maxAttempts: 3}}
  - id: total
    type: core.Set
    values:
      name: "{{{{ trigger.value.name }}}}"
      amount: "{{{{ trigger.value.amount }}}}"
"""

BATCHES = """\
id: nightly-load
namespace: ui.shop
triggers:
  - id: t
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT1S
tasks:
  - id: count
    type: core.Set
    values: {{n: "{{{{ trigger.messagesCount }}}}"}}
"""

JOBS = """\
id: jobs
namespace: ui.pipeline
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: completed
    type: kafka.Produce
    topic: {events}
    valueSerializer: JSON
    from:
      key: "{{{{ trigger.value.job }}}}"
      value: {{event: completed, job: "{{{{ trigger.value.job }}}}"}}
"""

NOTIFY = """\
id: notify
namespace: ui.pipeline
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: say
    type: core.Log
    message: "job {{{{ trigger.value.job }}}} {{{{ trigger.value.event }}}}"
"""


@dataclass
class History:
    """What the flows did: topics, flow files, the log's latest document per execution."""

    bootstrap: str
    log_topic: str
    env: dict[str, str]
    orders_topic: str
    batch_topic: str
    jobs_topic: str
    events_topic: str
    flows: dict[str, Path]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_flow(self, flow_id: str) -> list[dict[str, Any]]:
        return [d for d in self.docs.values() if d["flowId"] == flow_id]

    def one(self, flow_id: str, state: str) -> dict[str, Any]:
        (doc,) = [d for d in self.by_flow(flow_id) if d["state"] == state]
        return doc


@pytest.fixture(scope="module")
def history(bootstrap: str, new_module_topic: Callable[[int], str],
            tmp_path_factory: pytest.TempPathFactory) -> History:
    """Run the four flows to completion on fresh topics and a fresh execution log."""
    tmp = tmp_path_factory.mktemp("ui-flows")
    suffix = uuid.uuid4().hex[:8]
    h = History(bootstrap=bootstrap, log_topic=new_log_topic(),
                env={}, orders_topic=new_module_topic(1), batch_topic=new_module_topic(2),
                jobs_topic=new_module_topic(1), events_topic=new_module_topic(1), flows={})
    h.env = flow_env(bootstrap, h.log_topic, WAXFLOW_STORAGE=str(tmp / "storage"),
                     WAXFLOW_SECRET_CARD_TOKEN=SECRET)
    h.flows = {
        "orders": write_flow(tmp, ORDERS.format(topic=h.orders_topic, group=f"o-{suffix}"),
                             "orders.yaml"),
        "batches": write_flow(tmp, BATCHES.format(topic=h.batch_topic, group=f"b-{suffix}"),
                              "batches.yaml"),
        "jobs": write_flow(tmp, JOBS.format(topic=h.jobs_topic, group=f"j-{suffix}",
                                            events=h.events_topic), "jobs.yaml"),
        "notify": write_flow(tmp, NOTIFY.format(topic=h.events_topic, group=f"n-{suffix}"),
                             "notify.yaml"),
    }
    orders = [{"id": 1, "name": "ada", "amount": 10}, {"id": 2, "name": "bob", "amount": 20,
                                                       "note": SECRET},
              {"id": 3, "name": XSS, "amount": 30},
              {"id": 4, "name": "cyd", "amount": 40, "fail": True}]
    values: list[bytes | None] = [*(json.dumps(o).encode() for o in orders), b"{not json"]
    keys: list[bytes | None] = [*(f"order-{o['id']}".encode() for o in orders), b"order-bad"]
    produce(bootstrap, h.orders_topic, values, keys=keys)
    produce(bootstrap, h.batch_topic, [json.dumps({"row": i}).encode() for i in range(6)],
            partitions=2)
    produce(bootstrap, h.jobs_topic, [json.dumps({"job": "j-1"}).encode()], keys=[b"j-1"])
    first: list[FlowProcess] = [start_flow(h.flows[name], h.env, idle=3)
                                for name in ("orders", "batches", "jobs")]
    for proc in first:
        finish(proc, timeout=180)
    finish(start_flow(h.flows["notify"], h.env, idle=3), timeout=180)
    h.docs = latest_by_id(log_documents(bootstrap, h.log_topic))
    return h


@pytest.fixture(scope="module")
def new_module_topic(admin: Any) -> Callable[[int], str]:
    from tests.kafka_helpers import create_topic

    def make(partitions: int = 1) -> str:
        name = f"t-ui-{uuid.uuid4().hex[:10]}"
        create_topic(admin, name, partitions, {})
        return name
    return make


@dataclass
class Server:
    """A running ``waxflow server``."""

    url: str
    token: str
    proc: subprocess.Popen[str]
    index: Path

    def get(self, path: str, *, token: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=60, **kwargs)


def wait_ready(url: str, token: str, proc: subprocess.Popen[str], *,
               until: Callable[[dict[str, Any]], bool], timeout: float = 90) -> None:
    """Wait until ``/api/status`` answers and ``until(status)`` holds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"waxflow server exited {proc.returncode}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.get(url + "/api/status", headers=auth, timeout=10)
            last = r.text
            if r.status_code == 200 and until(r.json()):
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"waxflow server not ready within {timeout}s: {last}")


@pytest.fixture(scope="module")
def server(history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``waxflow server`` with a token, over the history's log, knowing the flow files."""
    tmp = tmp_path_factory.mktemp("ui-server")
    token = secrets.token_urlsafe(16)
    port = free_port()
    index = tmp / "index.sqlite"
    cmd = [WAXFLOW, "server", "--port", str(port), "--bootstrap", history.bootstrap,
           "--topic-log", history.log_topic, "--index", str(index),
           "--flow", str(history.flows["orders"].parent)]  # a directory of flow files
    env = {**history.env, "WAXFLOW_SERVER_TOKEN": token}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, token, proc,
                   until=lambda s: s["lastSync"] is not None and s["caughtUp"])
        yield Server(url=url, token=token, proc=proc, index=index)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``$WAXFLOW_CHROMIUM`` or Debian's ``/usr/bin/chromium``."""
    path = os.environ.get("WAXFLOW_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).exists() else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright), or a skip (a failure with
    ``WAXFLOW_REQUIRE_CHROMIUM=1``) when there is none."""
    path = chromium_path()
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        why = f"playwright is not installed ({exc})"
    if why is None and path is None:
        why = "no chromium (apt-get install -y chromium)"
    if why is not None:
        if os.environ.get("WAXFLOW_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"chromium required but not available: {why}")
        pytest.skip(why)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser page, signed in the way a person does: one visit with ``?token=``.

    ``page.errors`` collects script errors and console errors (CSP violations among them)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.goto(f"{server.url}/executions?token={server.token}")
    pg.errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()
