"""The web console in a real browser (Debian's chromium through Playwright) against a real
broker, the real management service and real devices: an operator finds a device and reads its
health charts, runs a rollout from the form and watches it reach 100 %, uploads, inspects and
deletes artifacts, edits a group's configuration and watches its devices apply it, and a viewer
sees no control that changes anything (and the API refuses the change when the page forces it).

Every page a test visits is saved as a PNG in the test's output folder (tmp_path).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_artifacts import make_swu
from test_rollouts import ROLLOUT, UpdatingDevice, add_artifact
from twelvefactor_agent.protocol.states import DOWNLOADING
from twelvefactor_agent.protocol.topics import mgmt_down, mgmt_up
from twelvefactor_agent.update.decide import report_payload
from twelvefactor_services.management.api_client import ManagementClient
from twelvefactor_services.management.configlogic import OverlayError, check_overlay
from twelvefactor_services.management.registry import Registry
from twelvefactor_services.management.store import Db

from testbed.hostagent import HostAgent
from testbed.pace import PACE, REFERENCE, ROUND_TRIP
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# The longest single page step: the login (a new browser context, the page, the form, the
# overview with its API calls), 2.2-3.1 s in a run at slowdown x1.6 (testbed/pace.py); a
# page after a click, its API calls and a redraw take less. The limits follow this run's pace.
PAGE = 2.2
HEALTH = 5  # the agents' health interval: their timer


def ui_wait() -> float:
    """Playwright's limit for one page step, in ms."""
    return 1000 * PACE.limit(PAGE)


def rollout_wait() -> float:
    """Playwright's limit for a rollout to end or a configuration to be applied, in ms:
    as tests/integration/test_rollouts.py waits for a rollout (ROLLOUT)."""
    return 1000 * PACE.limit(ROLLOUT)


PASSWORD = "correct horse battery staple"


class Shots:
    """Screenshots of every page visited, in the test's folder; checked at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    def __call__(self, page: Any, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def check(self) -> None:
        assert self.taken
        for path in self.taken:
            assert path.is_file(), path
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"this test needs {CHROMIUM} (Debian packages chromium, chromium-driver): "
            "run scripts/setup",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def admin(stack: Stack, management: ServiceProcess) -> ManagementClient:
    assert management.api is not None
    return ManagementClient(management.api.url, token=stack.admin_token(), ca=stack.pki.ca_cert)


def open_console(browser: Any, management: ServiceProcess, name: str, shots: Shots) -> Any:
    """A fresh browser context logged in as ``name``; the page on the overview."""
    assert management.api is not None
    # The API's certificate is the stack's own CA, which this browser does not know: the
    # check is switched off for the context and the page must still be served over https.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(ui_wait())
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.errors = errors
    page.goto(management.api.url + "/")
    assert page.url.startswith("https://") and page.url.endswith("/console/"), page.url
    page.wait_for_selector("#login-name")
    shots(page, "login")
    page.fill("#login-name", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("#count-online")
    assert page.evaluate("sessionStorage.getItem('twelvefactor.token')").startswith("tfm_")
    return page


def add_operator(admin: ManagementClient, name: str, role: str) -> None:
    admin.call("POST", "/operators", {"name": name, "role": role, "password": PASSWORD})


@dataclass
class Console:
    """What a console test stands on: the stack, its management service and the admin's
    client, the browser, and the test's screenshots."""

    stack: Stack
    management: ServiceProcess
    admin: ManagementClient
    browser: Any
    shots: Shots

    def log_in(self, role: str) -> Any:
        """A new operator with ``role`` (olga, an operator; vera, a viewer) logged in: the page."""
        name = {"operator": "olga", "viewer": "vera"}[role]
        add_operator(self.admin, name, role)
        page = open_console(self.browser, self.management, name, self.shots)
        assert page.text_content("#who") == f"{name} ({role})"
        return page

    def visit(self, page: Any, name: str, ready: str, *, link: str = "", to: str = "") -> None:
        """Follow ``link`` (a selector to click) or go to the hash ``to``; once ``ready``
        shows, a screenshot as ``name``."""
        if link:
            page.click(link)
        else:
            page.evaluate(f"location.hash = '{to}'")
        page.wait_for_selector(ready)
        # a missing field must not reach the page as the words JavaScript prints for it
        shown = page.evaluate(
            "() => { const w = document.createTreeWalker(document.getElementById('page'),"
            " NodeFilter.SHOW_TEXT); const out = [];"
            " while (w.nextNode()) if (/^(null|undefined|NaN)$/.test(w.currentNode.data.trim()))"
            " out.push(w.currentNode.parentElement.outerHTML.slice(0, 120)); return out; }"
        )
        assert shown == [], f"{name}: {shown}"
        self.shots(page, name)

    def finish(self, page: Any) -> None:
        """No script error nor CSP refusal on the page, and every screenshot written."""
        assert page.errors == []
        self.shots.check()


@pytest.fixture
def console(
    stack: Stack,
    management: ServiceProcess,
    admin: ManagementClient,
    browser: Any,
    tmp_path: Path,
) -> Console:
    return Console(stack, management, admin, browser, Shots(tmp_path))


def test_find_a_device_and_read_its_health_charts(console: Console, tmp_path: Path) -> None:
    agents = [
        HostAgent(console.stack, d, tmp_path / d, health_interval=HEALTH)
        for d in ("dev-001", "dev-002")
    ]
    try:
        for agent in agents:
            agent.start()
        # two health samples of dev-002, then it stops: its last report is known
        wait_until(  # 404 until the device's first report
            lambda: (
                (r := console.admin.request("GET", "/devices/dev-002/health"))[0] == 200
                and len(r[1]) >= 2
            ),
            timeout=PACE.limit(2 * REFERENCE["online"], fixed=HEALTH),  # one at start, one later
            what="two health reports",
        )
        agents[1].close()
        find_and_read(console, agents[0])
    finally:
        for agent in agents:
            agent.close()


def find_and_read(console: Console, running: HostAgent) -> None:
    """dev-001 runs, dev-002 has stopped after its health reports: olga finds and reads it;
    dev-001 stops while she looks at the list, which shows it without a reload."""
    # offline (its will) comes after anything it sent before: its last report is in
    wait_until(
        lambda: console.admin.get("/devices/dev-002")["online"] is False,
        what="dev-002 offline",
    )
    last = console.admin.get("/devices/dev-002/health")[-1]
    device = console.admin.get("/devices/dev-002")
    assert device["health_ts"] == last["ts"]

    page = console.log_in("operator")
    assert page.text_content("#count-online b") == "1"
    assert page.text_content("#count-offline b") == "1"
    page.wait_for_selector("#events tr[data-kind='offline']")  # dev-002's, as recent events
    console.shots(page, "overview")
    console.visit(
        page, "devices", "tr[data-device='dev-001'] td.online", link="a[href='#/devices']"
    )
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
    running.close()
    page.wait_for_selector("tr[data-device='dev-001'] td.offline")  # from the events feed
    assert page.evaluate("window.sameDocument === true")
    console.shots(page, "devices-live")
    page.fill("#device-search", "dev-002")
    page.wait_for_selector("tr[data-device='dev-001']", state="detached")
    assert page.eval_on_selector_all("#devices tbody tr", "rows => rows.length") == 1
    console.shots(page, "devices-search")
    console.visit(page, "device", "#chart-load1 canvas", link="tr[data-device='dev-002'] a")
    # each chart's canvas is drawn on: some pixel is not transparent
    for chart in ("load1", "memory", "data", "queue", "dropped"):
        drawn = page.eval_on_selector(
            f"#chart-{chart} canvas",
            """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                     for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return c.width;
                     return 0; }""",
        )
        assert drawn > 0, chart
        assert int(page.get_attribute(f"#chart-{chart}", "data-points") or 0) >= 2, chart
    # the latest values as text are the last health report's
    assert page.text_content("#latest-load1") == f"{last['load1']:.2f}"
    assert page.text_content("#latest-memory") == f"{last['memory_available_kb'] / 1024:.1f}"
    assert page.text_content("#latest-queue") == str(last["queue_depth"])
    assert page.text_content("#latest-dropped") == str(last["queue_dropped"])
    assert last["load1"] == device["health"]["load"][0]
    assert "dev-002" in (page.text_content("h1") or "")
    console.finish(page)


def test_a_rollout_from_the_form_reaches_100_percent(console: Console, tmp_path: Path) -> None:
    added = add_artifact(console.stack, console.management, tmp_path / "a.swu")
    devices: list[UpdatingDevice] = []
    try:
        for d in ("dev-a1", "dev-a2"):
            (tmp_path / d).mkdir()
            devices.append(UpdatingDevice(console.stack, d, tmp_path / d))
        page = console.log_in("operator")
        console.shots(page, "overview")
        console.visit(page, "rollouts", "#rollout-form", link="a[href='#/rollouts']")
        page.select_option("#rollout-artifact", added["sha256"])
        page.select_option("#rollout-target", "devices")
        page.fill("#rollout-list", "dev-a1, dev-a2")
        page.fill("#rollout-phases", "1, 100%")
        page.click("#rollout-create")
        page.wait_for_selector("#phases .phase")
        assert page.url.split("#/rollout/")[1].startswith("r-")
        console.shots(page, "rollout-started")
        page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
        # the page follows the events feed: no reload
        page.wait_for_selector("#rollout-state:text('finished')", timeout=rollout_wait())
        percents = page.eval_on_selector_all(
            "#phases .phase", "ps => ps.map(p => p.dataset.percent)"
        )
        assert percents == ["100", "100"]
        assert page.eval_on_selector_all("#phases progress", "ps => ps.map(p => p.value)") == [
            100,
            100,
        ]
        states = page.eval_on_selector_all(
            "#rollout-devices tr[data-device] td:nth-child(4)", "tds => tds.map(t => t.textContent)"
        )
        assert states == ["succeeded", "succeeded"]
        assert page.evaluate("window.sameDocument === true")
        console.shots(page, "rollout-finished")
        # the operator's audit log has the rollout made from the form
        console.visit(page, "audit", "#audit td:text('POST /rollouts')", link="a[href='#/audit']")
        assert page.text_content("#audit tr:nth-child(2) td:nth-child(2)") == "olga"
        console.finish(page)
    finally:
        for d in devices:
            d.close()


def test_a_download_shows_its_percent_and_moves_without_a_reload(
    console: Console, tmp_path: Path
) -> None:
    """Progress reports are not events: the rollout and device pages look again while a
    job moves. The device is a bare client with dev-p1's certificate that reports as the
    agent's update worker does (report_payload), so the percents are the test's own."""
    ident = console.stack.device("dev-p1")
    device = Probe(console.stack.management_endpoint, ident, "dev-p1-mgmt")
    device.connect(timeout=PACE.limit(ROUND_TRIP))
    try:
        device.subscribe(mgmt_down("dev-p1", "update"), timeout=PACE.limit(ROUND_TRIP))
        device.publish(mgmt_up("dev-p1", "online"), {"v": 1, "online": True, "ts": time.time()})
        added = add_artifact(console.stack, console.management, tmp_path / "a.swu")
        made = console.admin.call(
            "POST", "/rollouts", {"artifact": added["sha256"], "devices": ["dev-p1"]}
        )
        job = json.loads(device.wait_for(timeout=PACE.limit(ROUND_TRIP)).payload)["job"]

        def report(percent: int, path: str = "delta", fallback: str | None = None) -> None:
            payload = report_payload(
                job, DOWNLOADING, ts=time.time(), percent=percent, path=path, fallback=fallback
            )
            device.publish(mgmt_up("dev-p1", "update"), payload)

        report(42)
        page = console.log_in("viewer")
        console.visit(
            page,
            "rollout-downloading",
            "#rollout-devices td[data-percent='42']",
            to=f"#/rollout/{made['id']}",
        )
        cell = "#rollout-devices tr[data-device='dev-p1'] td:nth-child(4)"
        assert page.text_content(cell) == "downloading  42 %"
        assert page.eval_on_selector(f"{cell} progress", "p => p.value") == 42
        page.evaluate("window.sameDocument = true")
        report(85)
        page.wait_for_selector(f"{cell}[data-percent='85']", timeout=rollout_wait())
        assert page.evaluate("window.sameDocument === true")
        console.visit(
            page, "device-downloading", "#device-jobs td[data-percent='85']", to="#/device/dev-p1"
        )
        assert page.text_content("#device-jobs td.path") == "delta"
        # the delta given up: the full .swu's download starts again from 0 %
        report(10, "full", "install_failed: swupdate exited with 1")
        page.wait_for_selector("#device-jobs td[data-percent='10']", timeout=rollout_wait())
        assert page.text_content("#device-jobs td.path") == (
            "full (the delta was given up: install_failed: swupdate exited with 1)"
        )
        report(100, "full")
        page.wait_for_selector("#device-jobs td[data-percent='100']", timeout=rollout_wait())
        console.finish(page)
    finally:
        device.disconnect()


def test_a_viewer_sees_no_control_and_the_api_refuses_a_forced_change(
    console: Console, tmp_path: Path
) -> None:
    console.admin.call("PUT", "/groups/field/config", {})
    console.admin.call("POST", "/groups/field/members", {"devices": ["dev-v1"]})
    added = add_artifact(console.stack, console.management, tmp_path / "a.swu")
    made = console.admin.call(
        "POST",
        "/rollouts",
        {"artifact": added["sha256"], "group": "field", "start_at": 4_000_000_000},
    )
    page = console.log_in("viewer")

    def controls() -> list[str]:
        """The buttons and inputs that would change something, shown and usable (those
        marked data-reads only fetch or open a page)."""
        found: list[str] = page.eval_on_selector_all(
            "button:not([data-reads]), input[type=submit]:not([data-reads])",
            "els => els.filter(e => e.offsetParent !== null && !e.disabled).map(e => e.id)",
        )
        return [f for f in found if f != "logout"]

    for hash_, ready, name in [
        ("#/overview", "#count-online", "overview"),
        ("#/devices", "#devices", "devices"),
        ("#/rollouts", "tr[data-rollout]", "rollouts"),
        (f"#/rollout/{made['id']}", "#phases .phase", "rollout"),
        ("#/artifacts", f"tr[data-artifact='{added['sha256']}']", "artifacts"),
        (f"#/artifact/{added['sha256']}", "#artifact-facts", "artifact"),
        ("#/config", "tr[data-group='field']", "config"),
        ("#/config/group/field", "tr[data-device='dev-v1']", "config-group"),
        ("#/config/device/dev-v1", "#device-config-facts", "config-device"),
    ]:
        console.visit(page, name, ready, to=hash_)
        assert controls() == [], name
    assert page.query_selector("#rollout-form") is None
    assert page.is_hidden("#nav-audit")
    assert page.query_selector("#rollout-pause") is None
    assert page.query_selector("#config-save") is None
    assert page.get_attribute("#config-text", "readonly") is not None  # the device page's
    page.evaluate("location.hash = '#/artifacts'")
    page.wait_for_selector("#artifacts")
    assert page.query_selector("#upload-form") is None
    page.evaluate(f"location.hash = '#/artifact/{added['sha256']}'")
    page.wait_for_selector("#artifact-facts")
    assert page.query_selector("#artifact-delete") is None
    # the page forces the change with the viewer's own token: the API says no
    forced = page.evaluate(
        """async ([id, sha]) => {
            const token = sessionStorage.getItem('twelvefactor.token');
            const send = (method, path, body) => fetch(path, {method, headers: {
                'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
                body: JSON.stringify(body)}).then(r => r.status);
            const upload = await fetch('/artifacts', {method: 'POST', headers: {
                'Authorization': 'Bearer ' + token, 'Content-Type': 'application/octet-stream'},
                body: new Blob(['not a swu'])}).then(r => r.status);
            return [await send('POST', `/rollouts/${id}/pause`, {}),
                    await send('PUT', '/groups/field/config', {agent: {keepalive: 7}}),
                    await send('POST', '/rollouts', {artifact: 'x', group: 'field'}),
                    await send('DELETE', `/artifacts/${sha}`),
                    upload,
                    await send('POST', '/config/check', {agent: {keepalive: 7}})];
        }""",
        [made["id"], added["sha256"]],
    )
    assert forced == [403, 403, 403, 403, 403, 200]  # the check changes nothing: a viewer's
    assert console.admin.get(f"/artifacts/{added['sha256']}")["sha256"] == added["sha256"]
    assert console.admin.get(f"/rollouts/{made['id']}")["state"] == "scheduled"
    # the audit log's page is not a viewer's either
    page.evaluate("location.hash = '#/audit'")
    page.wait_for_selector("body[data-page='overview']")  # not wait_for_function: the CSP
    page.wait_for_selector("#count-online")
    console.shots(page, "audit-refused")
    # logging out revokes the token and forgets it
    token = page.evaluate("sessionStorage.getItem('twelvefactor.token')")
    page.click("#logout")
    page.wait_for_selector("#login-name")
    console.shots(page, "logged-out")
    assert page.evaluate("sessionStorage.getItem('twelvefactor.token')") is None
    assert console.management.api is not None
    gone = ManagementClient(console.management.api.url, token=token, ca=console.stack.pki.ca_cert)
    assert gone.request("GET", "/whoami")[0] == 401
    console.finish(page)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_artifacts_uploaded_inspected_and_deleted_from_the_page(
    console: Console, tmp_path: Path
) -> None:
    used = add_artifact(console.stack, console.management, tmp_path / "u.swu")["sha256"]
    made = console.admin.call("POST", "/jobs", {"artifact": used, "device": "dev-u1"})
    job = made["id"]  # for a device that never comes: unfinished
    page = console.log_in("operator")
    ready = f"tr[data-artifact='{used}'][data-used='yes']"
    console.visit(page, "artifacts", ready, link="a[href='#/artifacts']")
    assert f"job {job} (unfinished)" in (page.text_content(f"tr[data-artifact='{used}']") or "")

    # upload one: it is listed
    swu = make_swu(tmp_path / "new.swu", "2.1", size=50_000)
    sha = sha256_of(swu)
    page.set_input_files("#upload-file", str(swu))
    page.click("#upload-submit")
    page.wait_for_selector(f"tr[data-artifact='{sha}'][data-used='no']")
    assert page.text_content("#upload-done") == f"Added version 2.1 as {sha[:12]}."
    assert console.admin.get(f"/artifacts/{sha}")["version"] == "2.1"
    console.shots(page, "artifact-uploaded")

    # one no device accepts: the service's reason, word for word
    rc = make_swu(tmp_path / "rc.swu", "2.0-rc1", size=1000)
    page.set_input_files("#upload-file", str(rc))
    page.click("#upload-submit")
    page.wait_for_selector("#upload-error:not(:empty)")
    with rc.open("rb") as f:
        status, said = console.admin.request("POST", "/artifacts", upload=f, size=rc.stat().st_size)
    assert status == 400 and "is not numbers separated by dots" in said["problems"][0]
    assert page.text_content("#upload-error") == "\n".join(said["problems"])
    assert sha256_of(rc) not in [a["sha256"] for a in console.admin.get("/artifacts")]
    console.shots(page, "artifact-refused")

    # inspect the new one and delete it
    console.visit(page, "artifact", "#artifact-facts", link=f"tr[data-artifact='{sha}'] a")
    assert page.text_content("#artifact-sha256") == sha
    assert page.text_content("#artifact-version") == "2.1"
    assert page.text_content("#artifact-hardware") == "qemux86-64: 1.0"
    assert page.text_content("#artifact-signature") == (
        "not checked (the service has no signing certificate)"
    )
    assert page.text_content("#artifact-used") == "nothing unfinished"
    page.click("#artifact-delete")
    # (not wait_for_function: its polling evaluates a string, which the console's CSP refuses)
    page.wait_for_selector("body[data-page='artifacts']")
    page.wait_for_selector(f"tr[data-artifact='{used}']")
    assert page.query_selector(f"tr[data-artifact='{sha}']") is None
    assert console.admin.request("GET", f"/artifacts/{sha}")[0] == 404
    console.shots(page, "artifact-deleted")

    # the used one: refused, with the reason
    page.click(f"tr[data-artifact='{used}'] a")
    page.wait_for_selector("#artifact-facts")
    assert page.text_content("#artifact-used") == f"job {job} (unfinished)"
    page.click("#artifact-delete")
    page.wait_for_selector("#artifact-error:not(:empty)")
    assert page.text_content("#artifact-error") == (
        f"artifact {used[:12]} is in use by job {job} (unfinished):"
        " delete it when the job has ended"
    )
    assert console.admin.get(f"/artifacts/{used}")["sha256"] == used
    console.shots(page, "artifact-in-use")
    entries = [
        (e["method"], e["status"]) for e in console.admin.get("/audit") if e["operator"] == "olga"
    ]
    assert entries[:3] == [("DELETE", 409), ("DELETE", 200), ("POST", 400)]
    console.finish(page)


def test_a_group_configuration_edited_checked_saved_and_applied(
    console: Console, tmp_path: Path
) -> None:
    members = ["dev-c1", "dev-c2"]
    console.admin.call("PUT", "/groups/field/config", {})
    console.admin.call("POST", "/groups/field/members", {"devices": members})
    agents = [HostAgent(console.stack, d, tmp_path / d, confirm_window=10) for d in members]
    try:
        for agent in agents:
            agent.start()
        for d in members:
            wait_until(
                lambda d=d: (
                    (r := console.admin.request("GET", f"/devices/{d}"))[0] == 200
                    and r[1]["online"] is True
                ),
                timeout=PACE.steps_of("online", len(members)),
                what=f"{d} online",
            )
        page = console.log_in("operator")
        console.visit(page, "config", "tr[data-group='field']", link="a[href='#/config']")
        page.click("tr[data-group='field'] a[href='#/config/group/field']")
        page.wait_for_selector("#config-editor[data-check='ok']")
        page.wait_for_selector("tr[data-device='dev-c2']")
        console.shots(page, "config-group")
        page.evaluate("window.sameDocument = true")  # gone if the page were loaded again

        # refused before saving: not JSON, then what the agent's rules refuse
        page.fill("#config-text", '{"agent": ')
        page.wait_for_selector("#config-editor[data-check='invalid']")
        assert page.is_disabled("#config-save")
        assert (page.text_content("#config-problems li") or "").startswith("not JSON")
        bad = {"agent": {"keepalive": 12, "confirm_window": 30}}
        with pytest.raises(OverlayError) as caught:
            check_overlay(bad)
        page.fill("#config-text", json.dumps(bad))
        page.wait_for_selector("#config-editor[data-check='invalid'] #config-problems li")
        assert page.is_disabled("#config-save")
        said = page.eval_on_selector_all(
            "#config-problems li", "lis => lis.map(l => l.textContent)"
        )
        assert said == caught.value.problems
        assert "set by provisioning" in said[0]
        console.shots(page, "config-invalid")
        assert console.admin.get("/groups/field")["config"] == {}  # nothing was sent

        # a good one: Save, and every member reports it applied (from the events feed)
        page.fill("#config-text", '{"agent": {"keepalive": 12}}')
        page.wait_for_selector("#config-editor[data-check='ok']")
        assert not page.is_disabled("#config-save")
        page.click("#config-save")
        page.wait_for_selector("#config-editor[data-check='saved']")
        assert console.admin.get("/groups/field")["config"] == {"agent": {"keepalive": 12}}
        for d in members:
            version = console.admin.get(f"/devices/{d}/config")["version"]
            page.wait_for_selector(
                f"tr[data-device='{d}'][data-state='applied'][data-reported='{version}']",
                timeout=rollout_wait(),
            )
        assert page.evaluate("window.sameDocument === true")
        console.shots(page, "config-applied")
        audit = console.admin.get("/audit")
        assert [(e["operator"], e["path"]) for e in audit[:1]] == [("olga", "/groups/field/config")]
        assert not any(e["path"] == "/config/check" for e in audit)

        # one each device refuses (below its file's backoff.initial): rejected, with the reason
        page.fill("#config-text", '{"agent": {"keepalive": 12}, "backoff": {"cap": 0.1}}')
        page.wait_for_selector("#config-editor[data-check='ok']")
        page.click("#config-save")
        page.wait_for_selector("#config-editor[data-check='saved']")
        why = "config: backoff.cap: 0.1 is smaller than backoff.initial (0.2)"
        for d in members:
            version = console.admin.get(f"/devices/{d}/config")["version"]
            page.wait_for_selector(
                f"tr[data-device='{d}'][data-state='rejected'][data-reported='{version}']",
                timeout=rollout_wait(),
            )
            assert page.text_content(f"tr[data-device='{d}'] td:nth-child(5)") == why
        console.shots(page, "config-rejected")

        # a member's own page says the same
        page.click("tr[data-device='dev-c1'] a")
        page.wait_for_selector("#device-config-status.rejected")
        assert page.text_content("#device-config-status") == f"rejected: {why}"
        assert '"cap": 0.1' in (page.text_content("#device-config-desired") or "")
        console.shots(page, "config-device")
        console.finish(page)
    finally:
        for agent in agents:
            agent.close()


def test_sleeping_devices_are_counted_asleep_or_overdue_with_their_next_check_in(
    console: Console,
) -> None:
    """The metered profile's goodbye (issue 18): a device that will be back in four hours is
    asleep, one that should have been back ten minutes ago is overdue, on every page."""
    for device, back_in in (("dev-z1", 4 * 3600.0), ("dev-z2", -600.0)):
        probe = Probe(
            console.stack.management_endpoint, console.stack.device(device), f"{device}-mgmt"
        )
        probe.connect(timeout=PACE.limit(ROUND_TRIP))
        try:
            now = time.time()
            probe.publish(mgmt_up(device, "online"), {"v": 1, "online": True, "ts": now})
            goodbye = {"v": 1, "online": False, "reason": "asleep", "ts": now + 0.001}
            goodbye["next_checkin"] = now + back_in
            probe.publish(mgmt_up(device, "online"), goodbye, retain=True)
        finally:
            probe.disconnect()
    wait_until(  # 404 until the service has taken the first message in
        lambda: (
            (r := console.admin.request("GET", "/devices/dev-z2"))[0] == 200
            and r[1]["presence"] == "overdue"
        ),
        what="dev-z2 overdue",
    )
    page = console.log_in("viewer")
    assert page.text_content("#count-asleep b") == "1"
    assert page.text_content("#count-overdue b") == "1"
    assert page.text_content("#count-online b") == "0"
    console.shots(page, "overview-asleep")
    console.visit(page, "devices-asleep", "tr[data-device='dev-z1'] td.asleep", to="#/devices")
    assert page.text_content("tr[data-device='dev-z2'] td:nth-child(2)") == "overdue"
    page.select_option("#filter-online", "asleep")
    page.wait_for_selector("tr[data-device='dev-z2']", state="detached")
    console.visit(page, "device-asleep", "#device-state.asleep", to="#/device/dev-z1")
    assert page.text_content("#next-checkin").strip().startswith("next check-in by 20")


def test_a_fleet_larger_than_a_page_is_shown_a_page_at_a_time_and_filtered_by_the_service(
    console: Console,
) -> None:
    """Issue 15: the console never fetches the whole fleet. The devices page shows the
    first page, "more" the next; a filter asks the service again; the overview's counts
    come from GET /fleet."""
    db = Db(console.stack.registry_db)
    try:  # enrolled as the hub does, never seen
        reg = Registry(db)
        for i in range(130):
            tags = ["site:even" if i % 2 == 0 else "site:odd"]
            reg.enrol(
                f"dev-p{i:03d}", hardware=None, group=None, tags=tags,
                certificate_serial=1000 + i, now=time.time(),
            )  # fmt: skip
    finally:
        db.close()
    page = console.log_in("viewer")
    version_row = "#versions tr:has(td a[href='#/devices?version=unknown']) td:nth-child(2)"
    assert page.text_content(version_row) == "130"
    assert page.text_content("#count-never-seen b") == "130"
    assert page.text_content("#count-offline b") == "0"

    def rows() -> int:
        return int(page.eval_on_selector_all("#devices tbody tr", "rows => rows.length"))

    console.visit(page, "devices-first-page", "tr[data-device='dev-p099']", to="#/devices")
    assert rows() == 100 and page.query_selector("tr[data-device='dev-p100']") is None
    page.click("#devices-more")
    page.wait_for_selector("tr[data-device='dev-p129']")
    assert rows() == 130 and page.is_hidden("#devices-more")
    assert page.text_content("#devices-shown") == "130 shown"
    page.select_option("#filter-tag", "site:odd")
    page.wait_for_selector("tr[data-device='dev-p000']", state="detached")
    wait_until(lambda: rows() == 65, ui_wait() / 1000, what="65 rows")
    page.fill("#device-search", "p12")  # dev-p121, 123, 125, 127, 129
    wait_until(lambda: rows() == 5, ui_wait() / 1000, what="5 rows")
    assert page.text_content("tr[data-device='dev-p129'] td:nth-child(2)") == "never seen"
    console.shots(page, "devices-filtered")
    page.fill("#device-search", "P_%")  # nothing an id holds: no rows, no error
    wait_until(lambda: rows() == 0, ui_wait() / 1000, what="0 rows")
    # the configuration page offers a device as its id is typed (the service's matches)
    console.visit(page, "config-pick", "#config-device", to="#/config")

    def offered() -> list[str]:
        return list(
            page.eval_on_selector_all("#config-device-ids option", "os => os.map(o => o.value)")
        )

    page.fill("#config-device", "p12")
    wait_until(lambda: len(offered()) == 10, ui_wait() / 1000, what="ten offered")
    page.fill("#config-device", "dev-p007")
    wait_until(lambda: offered() == ["dev-p007"], ui_wait() / 1000, what="dev-p007 offered")
    page.click("#config-device-open")
    page.wait_for_selector("#device-config-facts")
    assert page.evaluate("location.hash") == "#/config/device/dev-p007"
    console.finish(page)
