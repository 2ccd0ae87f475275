"""The ``pacifica_cartd`` connection form in the real Airflow UI, in headless Debian Chromium.

A real api-server on 127.0.0.1 (``[core] test_connection = Enabled``), logged in through the simple
auth manager's own login page; the "Add Connection" dialog for type "Pacifica Cartd" is read
through the DOM: every conn-field of ``get_provider_info`` with its label and description, the
secret ones masked, the relabelled and placeholdered standard fields. A screenshot of the dialog
goes to docs/images/connection-form.png (and the test's tmp dir). Then the connections list's
"Test Connection" button, which POSTs ``/api/v2/connections/test``, against the real Cartd
(``cartd_stack``): Cartd's health message, and a failure for a port nobody listens on.

The browser is Debian's ``chromium`` driven by the ``playwright`` package with
``executable_path`` (Playwright's own browser download cannot work here); the ``chromium`` fixture
installs chromium and chromium-driver from Debian when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from airflow_provider_pacifica.get_provider_info import CONN_FIELDS, get_provider_info
from tests.integration.airflow_stack import ADMIN_PASSWORD, ADMIN_USER, REPO, free_port, start_airflow

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: without the background-networking flags Chromium keeps
# trying Google's hosts at start and has its connections refused.
CHROMIUM_ARGS = [
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "images" / "connection-form.png"
CARTD_HEALTH = "Pacifica Cartd Interface Up and Running"
UI_BEHAVIOUR = get_provider_info()["connection-types"][0]["ui-field-behaviour"]

# Each group (label + widget + helper text) of the open dialog, as the DOM has it.
READ_FIELDS = """dialog => [...dialog.querySelectorAll('[data-scope=field][data-part=root]')].map(group => {
    const widget = group.querySelector('input[name], textarea[name]');
    const label = group.querySelector('label');
    const help = group.querySelector('[data-part=helper-text]');
    return widget && {
        name: widget.name,
        tag: widget.tagName.toLowerCase(),
        type: widget.type,
        role: widget.getAttribute('role'),
        placeholder: widget.placeholder,
        value: widget.value,
        checked: widget.checked,
        visible: !!(widget.offsetWidth || widget.offsetHeight || widget.getClientRects().length)
            || !!group.querySelector('[data-part=control]')?.offsetWidth,
        label: label ? label.innerText.trim() : null,
        help: help ? help.innerText.trim() : null,
    };
}).filter(Boolean)"""


def _say(message: str) -> None:
    print(f"\n[connection-form] {message}", flush=True)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium (and chromium-driver); installed from Debian when missing, as on a fresh CI machine."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and apt-get cannot install it here (needs root on Debian)")
        started = time.monotonic()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}", pytrace=False)
        _say(f"installed chromium + chromium-driver from Debian in {time.monotonic() - started:.0f}s")
    return CHROMIUM


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """The api-server alone (the form and the Test button need nothing else), the Test button enabled."""
    started = time.monotonic()
    stack = start_airflow(
        tmp_path_factory.mktemp("airflow-form"),
        {"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
        components=("api-server",),
    )
    _say(f"api-server healthy in {time.monotonic() - started:.1f}s (db migrate included)")
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        started = time.monotonic()
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        _say(f"Chromium {browser.version} launched in {time.monotonic() - started:.1f}s")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, airflow):
    """A new browser context, logged in through the simple auth manager's login page."""
    context = browser.new_context(viewport={"width": 1100, "height": 1800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{airflow.url}/connections")
    page.wait_for_url("**/auth/login**")  # not logged in yet: the login page, with ?next=/connections
    page.locator("input:not([type=password])").first.fill(ADMIN_USER)
    page.locator("input[type=password]").fill(ADMIN_PASSWORD)
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{airflow.url}/connections")
    assert any(cookie["name"] == "_token" for cookie in context.cookies())  # the UI's JWT cookie
    try:
        yield page
    finally:
        context.close()


def open_add_dialog(page):
    """The "Add Connection" dialog with type "Pacifica Cartd" chosen; its Standard Fields section is open."""
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").fill("Pacifica")
    page.get_by_role("option", name="Pacifica Cartd", exact=True).click()
    dialog.locator("input[name=host]").wait_for(state="visible")
    return dialog


def open_section(dialog, name: str, probe: str) -> None:
    """Open one section of the form's accordion (only one is open at a time)."""
    dialog.get_by_role("button", name=name, exact=True).click()
    dialog.locator(f"[name={probe}]").wait_for(state="visible")


def save(page, dialog, connection_id: str, *, port: int | None = None, **extras: str) -> dict:
    """Fill and save the add-connection form; returns the JSON body the UI POSTed."""
    dialog.locator("input[name=connection_id]").fill(connection_id)
    if extras:
        open_section(dialog, "Extra Fields", f"element_{next(iter(extras))}")
        for name, value in extras.items():
            dialog.locator(f"[name=element_{name}]").fill(value)
        open_section(dialog, "Standard Fields", "host")
    if dialog.locator("input[name=host]").is_visible():
        dialog.locator("input[name=host]").fill("127.0.0.1")
        if port is not None:
            dialog.locator("input[name=port]").fill(str(port))
        dialog.locator("input[name=schema]").fill("http")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/api/v2/connections")
    ) as response_info:
        dialog.get_by_role("button", name="Save").click()
    response = response_info.value
    assert response.status == 201, response.text()
    dialog.wait_for(state="hidden")
    return response.request.post_data_json


def side_by_side(page, shots: list[bytes], path: Path) -> None:
    """One PNG of several screenshots next to each other, composed by the same Chromium."""
    images = "".join(
        f'<img style="display:block;flex:none" src="data:image/png;base64,{base64.b64encode(shot).decode()}">'
        for shot in shots
    )
    sizes = [struct.unpack(">II", shot[16:24]) for shot in shots]  # the PNG IHDR: width, height
    composer = page.context.new_page()
    composer.set_viewport_size({"width": sum(w for w, _ in sizes) + 8 * len(shots), "height": max(h for _, h in sizes)})
    body = "margin:0;display:flex;align-items:flex-start;gap:8px;background:#d0d4da"
    composer.set_content(f'<body style="{body}">{images}</body>')
    composer.locator("body").screenshot(path=str(path))
    composer.close()


def test_the_form_shows_every_conn_field_labelled_and_the_secrets_masked(page, airflow, tmp_path):
    started = time.monotonic()
    dialog = open_add_dialog(page)
    dialog.locator("input[name=connection_id]").fill("pacifica_cartd_default")
    standard = {field["name"]: field for field in dialog.evaluate(READ_FIELDS)}

    # Standard fields: none hidden, the relabelled ones relabelled, the placeholders shown, password masked.
    for name in ("host", "port", "schema", "login", "password"):
        assert standard[name]["visible"], standard[name]
    for name, label in UI_BEHAVIOUR["relabeling"].items():
        assert standard[name]["label"] == label, standard[name]
    for name, placeholder in UI_BEHAVIOUR["placeholders"].items():
        assert standard[name]["placeholder"] == placeholder, standard[name]
    assert standard["password"]["type"] == "password", standard["password"]
    page.mouse.move(0, 0)
    shots = [dialog.screenshot(animations="disabled")]

    open_section(dialog, "Extra Fields", "element_token")
    fields = {field["name"]: field for field in dialog.evaluate(READ_FIELDS)}
    missing = [name for name in CONN_FIELDS if f"element_{name}" not in fields]
    assert not missing, f"conn-fields the UI does not render: {missing}; it rendered {sorted(fields)}"
    for name, spec in CONN_FIELDS.items():
        field = fields[f"element_{name}"]
        assert field["visible"], f"{name} is not visible: {field}"
        assert field["label"] == spec["label"], field
        assert field["help"] == spec["description"], field
        schema = spec["schema"]
        if schema.get("format") == "password":
            assert field["type"] == "password", f"secret {name} is not masked: {field}"
        else:
            assert field["type"] != "password", field
        if "boolean" in schema["type"]:
            assert field["type"] == "checkbox", field
            assert field["checked"] is schema["default"], field
        elif {"integer", "number"} & set(schema["type"]):
            assert field["role"] == "spinbutton", field
            assert float(field["value"]) == schema["default"], field
        elif "object" in schema["type"]:
            assert field["tag"] == "textarea", field  # proxies: JSON text
    secrets = {name for name, spec in CONN_FIELDS.items() if spec["schema"].get("format") == "password"}
    assert secrets == {"token"}

    # A typed token stays masked.
    dialog.locator("input[name=element_token]").fill("example-bearer-token")
    assert dialog.locator("input[name=element_token]").get_attribute("type") == "password"
    assert "example-bearer-token" not in dialog.inner_text()
    page.mouse.move(0, 0)
    shots.append(dialog.screenshot(animations="disabled"))
    side_by_side(page, shots, tmp_path / "connection-form.png")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "connection-form.png", SCREENSHOT)
    size = SCREENSHOT.stat().st_size
    assert 10_000 < size < 400_000, size

    # Saved, the token is in the extra the UI posted, and the REST API reads it back redacted.
    posted = save(page, dialog, "pacifica_cartd_default")
    assert json.loads(posted["extra"])["token"] == "example-bearer-token"
    stored = airflow.get("/api/v2/connections/pacifica_cartd_default")
    assert json.loads(stored["extra"])["token"] == "***", stored
    _say(f"form checked, screenshot {size // 1024} KiB, in {time.monotonic() - started:.1f}s: {SCREENSHOT}")


def click_test(page, connection_id: str) -> dict:
    """The connections list's "Test Connection" button of one row; returns what the api-server answered."""
    row = page.locator("tbody tr").filter(has=page.get_by_text(connection_id, exact=True))
    button = row.get_by_role("button", name="Test Connection")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/api/v2/connections/test")
    ) as response_info:
        button.focus()
        button.press("Enter")  # a key press: a previous row's tooltip cannot swallow it
    response = response_info.value
    assert response.status == 200, response.text()
    return response.json()


def test_the_test_button_reaches_the_real_cartd(page, airflow, cartd_stack):
    from urllib.parse import urlsplit

    cartd_port = urlsplit(cartd_stack.cartd_url).port
    closed_port = free_port()  # bound and released: nothing listens there
    for connection_id, port, extra in (
        ("cartd_real", cartd_port, {}),
        ("cartd_wrong_port", closed_port, {"max_retries": "0"}),
    ):
        posted = save(page, open_add_dialog(page), connection_id, port=port, **extra)
        assert posted["port"] == port

    started = time.monotonic()
    ok = click_test(page, "cartd_real")
    ok_after = time.monotonic() - started
    assert ok == {"status": True, "message": CARTD_HEALTH}

    started = time.monotonic()
    failed = click_test(page, "cartd_wrong_port")
    failed_after = time.monotonic() - started
    assert failed["status"] is False, failed
    assert f"port={closed_port}" in failed["message"], failed
    assert "Connection refused" in failed["message"], failed
    assert "ConnectionError" in failed["message"], failed
    _say(
        f"Test button: real Cartd {ok_after:.1f}s {ok['message']!r}; "
        f"wrong port {failed_after:.1f}s {failed['message']!r}"
    )


@pytest.mark.parametrize("wrong_port", [False, True], ids=["cartd", "wrong-port"])
def test_the_test_endpoint_with_the_body_the_ui_sends(airflow, cartd_stack, wrong_port):
    """POST /api/v2/connections/test as the UI's button sends it: every extra field, unset ones null."""
    from urllib.parse import urlsplit

    port = free_port() if wrong_port else urlsplit(cartd_stack.cartd_url).port
    extra = {name: spec["schema"].get("default") for name, spec in CONN_FIELDS.items()}
    extra["max_retries"] = 0
    body = {
        "connection_id": "pacifica_cartd_test",
        "conn_type": "pacifica_cartd",
        "host": "127.0.0.1",
        "port": port,
        "schema": "http",
        "login": "",
        "password": "",
        "description": "",
        "extra": json.dumps(extra),
    }
    response = airflow.api("POST", "/api/v2/connections/test", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    if wrong_port:
        assert answer["status"] is False, answer
        assert "ConnectionError" in answer["message"], answer
    else:
        assert answer == {"status": True, "message": CARTD_HEALTH}
