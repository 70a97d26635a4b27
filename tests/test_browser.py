"""The settings pages in a real browser: Debian's Chromium driven by Playwright.

foreman, its stand-in target and a Claude stand-in run as real processes. Screenshots of
every page go to ``build/test-output/screenshots/`` (or ``$FOREMAN_TEST_OUTPUT``).
Skipped, saying why, when Playwright or a Chromium is missing, unless
``FOREMAN_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets): then that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from foreman.cli import DEMO_MODELS
from foreman.control.admin import human_size

from .conftest import chat_body
from .processes import foreman, free_port, standin, until

ROOT = Path(__file__).resolve().parent.parent
SHOTS = (
    Path(os.environ.get("FOREMAN_TEST_OUTPUT") or ROOT / "build" / "test-output") / "screenshots"
)
ADMIN_KEY = "browser-admin-key"
CLAUDE_KEY = "sk-claude-stand-in-key"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 800}


def find_chromium() -> str | None:
    """``$FOREMAN_CHROMIUM``, else Debian's Chromium, else one on the PATH."""
    for candidate in (
        os.environ.get("FOREMAN_CHROMIUM"),
        "/usr/lib/chromium/chromium",  # the binary itself: /usr/bin/chromium is a wrapper
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = find_chromium()
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    sync_playwright = None  # type: ignore[assignment]

_missing = (
    "Playwright is not installed (pip install -e '.[dev]')"
    if sync_playwright is None
    else "no Chromium found (apt-get install chromium, or set FOREMAN_CHROMIUM)"
    if CHROMIUM is None
    else None
)
if _missing is not None:
    if os.environ.get("FOREMAN_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser tests required, but {_missing}")
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class World:
    """foreman (with an admin key, users ada and bob and a shared Claude backend) in front
    of a stand-in target; :meth:`restart` keeps its port and data."""

    def __init__(self, stack: ExitStack, data_dir: Path) -> None:
        self.stack, self.data_dir = stack, data_dir
        self.target = stack.enter_context(standin("--token-rate", "200", "--models", DEMO_MODELS))
        self.claude = stack.enter_context(standin("--api", "anthropic", "--api-key", CLAUDE_KEY))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._foreman: ExitStack | None = None
        self.start()
        self.ada = self.api("POST", "/admin/api/users", json={"name": "ada"}).json()["key"]
        self.bob = self.api("POST", "/admin/api/users", json={"name": "bob"}).json()["key"]
        claude = self.add_backend("claude", "anthropic", self.claude, api_key=CLAUDE_KEY)
        self.wait_connected(claude["id"])

    def start(self) -> None:
        self._foreman = ExitStack()
        self._foreman.enter_context(
            foreman(
                self.target,
                self.data_dir,
                port=self.port,
                FOREMAN_TOKEN=ADMIN_KEY,
                FOREMAN_HEARTBEAT_INTERVAL="0.5",
            )
        )

    def stop(self) -> None:
        assert self._foreman is not None
        self._foreman.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def api(self, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=bearer(key), timeout=30, **kwargs)

    def add_backend(
        self, name: str, kind: str, endpoint: str, key: str = ADMIN_KEY, **more: Any
    ) -> dict[str, Any]:
        body = {"name": name, "type": kind, "endpoint": endpoint, **more}
        answer = self.api("POST", "/admin/api/backends", key, json=body)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def status(self, backend_id: int, key: str = ADMIN_KEY) -> dict[str, Any]:
        listed = self.api("GET", "/admin/api/backends/status", key).json()["backends"]
        return next(b["status"] for b in listed if b["id"] == backend_id)

    def wait_connected(self, backend_id: int, key: str = ADMIN_KEY) -> None:
        until(lambda: self.status(backend_id, key)["state"] == "connected", what="connected")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        built = World(stack, tmp_path_factory.mktemp("browser-data"))
        stack.callback(built.stop)
        yield built


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A desktop page; it fails its test if a script throws or the CSP refuses anything."""
    context = chromium.new_context(viewport=DESKTOP, color_scheme="light")
    context.set_default_timeout(15_000)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    yield opened
    context.close()
    assert problems == []


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, world: World, key: str) -> None:
    page.goto(world.url + "/admin/backends")
    expect(page).to_have_url(world.url + "/admin/login?next=/admin/backends")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(world.url + "/admin/backends")


def card(page: Page, name: str) -> Any:
    return page.locator("article.backend").filter(
        has=page.get_by_role("heading", name=name, exact=True)
    )


def test_a_wrong_key_cannot_sign_in(page: Page, world: World) -> None:
    page.goto(world.url + "/admin/")
    page.get_by_label("API key").fill(ADMIN_KEY + "-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That key is not valid (or it was revoked).")
    assert "/admin/login" in page.url
    assert not [c for c in page.context.cookies() if c["name"] == "foreman_session"]
    shot(page, "login-refused")


#: Where the review's screenshots go when ``FOREMAN_DOC_SHOTS`` is set (docs/images/).
DOC_SHOTS = ROOT / "docs" / "images"

#: Controls, labels and tags that are cut off or broken across lines: a select narrower
#: than its chosen option's text, any control past the right edge, a label or button
#: whose text wraps.
CUT_OFF = """() => {
  const width = document.documentElement.clientWidth, problems = [];
  const measure = document.createElement('span');
  measure.style.cssText = 'position:absolute;visibility:hidden;white-space:pre';
  document.body.append(measure);
  const checked = 'input, select, textarea, button, a.button, .tag, .label';
  for (const e of document.querySelectorAll(checked)) {
    const box = e.getBoundingClientRect();
    if (!box.width || getComputedStyle(e).visibility === 'hidden') continue;
    const name = e.outerHTML.slice(0, 80);
    if (box.right > width + 0.5 || box.left < -0.5) problems.push('past the edge: ' + name);
    if (e.tagName === 'SELECT' && e.selectedOptions.length) {
      measure.style.font = getComputedStyle(e).font;
      measure.textContent = e.selectedOptions[0].textContent.trim();
      const room = e.clientWidth - 34;  // padding and the arrow
      if (measure.getBoundingClientRect().width > room) problems.push('text cut: ' + name);
    }
    if (['BUTTON', 'A', 'SPAN', 'LABEL'].includes(e.tagName) && !e.closest('label.check')) {
      const lines = e.getClientRects().length;
      const tall = box.height > 2.2 * parseFloat(getComputedStyle(e).fontSize) + 16;
      if (lines > 1 || tall) problems.push('wraps: ' + name);
    }
  }
  measure.remove();
  return problems;
}"""


def review(chromium: Browser, world: World, path: str, name: str) -> dict[str, float]:
    """``path`` at 1280 and 360 px, light and dark: no sideways scrolling, nothing cut off
    or wrapped; the screenshots go to the test output (and docs/images/ when
    ``FOREMAN_DOC_SHOTS=1``). Returns the widths of the backend cards at 1280 px."""
    widths: dict[str, float] = {}
    for viewport in (DESKTOP, PHONE):
        for scheme in ("light", "dark"):
            context = chromium.new_context(viewport=viewport, color_scheme=scheme)
            opened = context.new_page()
            sign_in(opened, world, ADMIN_KEY)
            opened.goto(world.url + path)
            label = f"{name}-{viewport['width']}-{scheme}"
            wide = opened.evaluate("document.documentElement.scrollWidth")
            assert wide <= viewport["width"], f"{label}: scrolls sideways ({wide} px)"
            assert opened.evaluate(CUT_OFF) == [], label
            if viewport is DESKTOP and scheme == "light":
                for each in opened.locator("article.backend").all():
                    box = each.bounding_box()
                    assert box is not None
                    widths[each.locator("h2").inner_text()] = box["width"]
            shot(opened, label)
            if os.environ.get("FOREMAN_DOC_SHOTS") == "1":  # the cards: a small picture
                bottom = opened.evaluate(
                    "document.querySelector('#add').getBoundingClientRect().bottom"
                )
                clip = {"x": 0, "y": 0, "width": viewport["width"], "height": bottom + 16}
                opened.screenshot(path=str(DOC_SHOTS / f"{label}.png"), clip=clip, full_page=True)
            context.close()
    return widths


def test_the_backends_page_at_1280_and_360_px_in_light_and_dark(
    chromium: Browser, world: World
) -> None:
    builtin = 1
    chosen = {"model": "qwen2.5-coder:32b"}  # the longest name: it must not be cut off
    assert world.api("POST", f"/admin/api/backends/{builtin}/select-model", json=chosen).is_success
    widths = review(chromium, world, "/admin/backends", "backends")
    assert widths, "the page shows the backends"
    # one card per row on a wide screen: a single card does not leave half the page empty
    assert min(widths.values()) > 0.9 * DESKTOP["width"] - 2 * 16 - 240


def test_add_an_ollama_backend_choose_a_model_and_it_survives_a_restart(
    page: Page, world: World
) -> None:
    with standin("--token-rate", "200") as gpu_url:
        sign_in(page, world, ADMIN_KEY)
        page.get_by_text("+ Add Custom Endpoint").click()
        page.get_by_label("Name").fill("gpu")
        page.get_by_label("Type").select_option("ollama")
        page.get_by_label("Endpoint").fill(gpu_url)
        page.get_by_role("button", name="Add backend").click()
        expect(page.get_by_role("status").first).to_have_text("Added backend 'gpu'.")
        gpu = card(page, "gpu")
        expect(gpu.locator(".status-line")).to_contain_text("Connected (", timeout=10_000)

        tags = httpx.get(gpu_url + "/api/tags").json()["models"]
        expected = sorted((m["name"], human_size(m["size"])) for m in tags)
        # the models follow the status line by themselves (the card's live refresh)
        expect(gpu.locator("select option")).to_have_count(len(expected))
        options = [" ".join(t.split()) for t in gpu.locator("select option").all_inner_texts()]
        assert [o.replace(" ✓", "") for o in options] == [
            f"{name} ({size})" for name, size in expected
        ]
        assert sum(o.endswith(" ✓") for o in options) == 1
        choice = next(
            n for n, _ in expected if f"{n} (" in next(o for o in options if "✓" not in o)
        )
        assert not gpu.get_by_role("button", name="Use this model").is_visible()  # no-JS only
        page.evaluate("window.notReloaded = true")
        gpu.get_by_label("Model").select_option(choice)  # used at once, in place
        expect(gpu.locator(".model-note")).to_have_text("✓ Saved")
        assert page.evaluate("window.notReloaded") is True
        shot(page, "backends")

        page.reload()
        expect(card(page, "gpu").get_by_label("Model")).to_have_value(choice)
        page.goto("about:blank")  # else the page reloads itself to sign-in, racing ours
        world.restart()
        sign_in(page, world, ADMIN_KEY)  # sessions live in memory: sign in again
        expect(card(page, "gpu").get_by_label("Model")).to_have_value(choice)


def test_test_connection_says_connected_then_unreachable(page: Page, world: World) -> None:
    with ExitStack() as lab_process:
        lab_url = lab_process.enter_context(standin("--token-rate", "200"))
        lab = world.add_backend("lab", "ollama", lab_url)
        world.wait_connected(lab["id"])
        sign_in(page, world, ADMIN_KEY)
        lab_card = card(page, "lab")
        lab_card.get_by_role("button", name="Test connection").click()
        count = len(httpx.get(lab_url + "/api/tags").json()["models"])
        expect(lab_card.locator(".test-output")).to_have_text(f"✓ Connected: {count} models")
        lab_process.close()  # the stand-in stops

    page.evaluate("window.notReloaded = true")
    lab_card.get_by_role("button", name="Test connection").click()
    expect(lab_card.locator(".test-output")).to_have_text("✗ Unreachable (checked just now)")
    # on its own line under the buttons, which stay on one line
    tops = [b["y"] for b in (e.bounding_box() for e in lab_card.locator(".actions > *").all()) if b]
    assert len(set(tops)) == 1, tops
    # the status light follows by itself, without a reload
    expect(lab_card.locator(".status-line")).to_contain_text("Unreachable", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
    shot(page, "backends-unreachable")
    world.api("DELETE", f"/admin/api/backends/{lab['id']}")


def test_the_fallback_checkbox_decides_where_a_chat_goes(page: Page, world: World) -> None:
    def chat() -> httpx.Response:
        body = chat_body(stream=False)
        return world.api("POST", "/api/chat", world.ada, json=body)

    with ExitStack() as box_process:
        box_url = box_process.enter_context(standin("--token-rate", "200"))
        box = world.add_backend("adas-box", "ollama", box_url, key=world.ada)
        world.wait_connected(box["id"], world.ada)
        sign_in(page, world, world.ada)
        prefs = page.locator("#preferences")
        prefs.get_by_label("adas-box").check()
        expect(prefs.get_by_label("Fallback to Claude if Ollama unavailable")).to_be_checked()
        prefs.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_have_text("Preferences saved.")
        assert chat().headers["x-foreman-backend"] == "adas-box/llama3.2"
        box_process.close()

    answer = chat()
    assert answer.status_code == 200 and answer.headers["x-foreman-backend"].startswith("claude/")

    prefs.get_by_label("Fallback to Claude if Ollama unavailable").uncheck()
    prefs.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").first).to_have_text("Preferences saved.")
    answer = chat()
    assert answer.status_code == 503, answer.text
    world.api("DELETE", f"/admin/api/backends/{box['id']}", world.ada)


def test_the_forms_work_without_javascript(chromium: Browser, world: World) -> None:
    context = chromium.new_context(viewport=DESKTOP, java_script_enabled=False)
    plain = context.new_page()
    sign_in(plain, world, ADMIN_KEY)
    ollama = card(plain, "ollama")
    ollama.get_by_role("button", name="Test connection").click()  # a plain POST, then back
    count = len(httpx.get(world.target + "/api/tags").json()["models"])
    expect(plain.get_by_role("status").first).to_have_text(
        f"Test of ollama: connected, {count} models."
    )
    prefs = plain.locator("#preferences")
    prefs.get_by_label("Fallback to Claude if Ollama unavailable").uncheck()
    prefs.get_by_role("button", name="Save").click()
    expect(plain.get_by_role("status").first).to_have_text("Preferences saved.")
    assert world.api("GET", "/admin/api/preferences").json()["fallback_to_claude"] is False
    world.api("PUT", "/admin/api/preferences", json={})
    context.close()


def test_a_form_without_its_csrf_token_is_refused(page: Page, world: World) -> None:
    sign_in(page, world, ADMIN_KEY)
    page.get_by_text("+ Add Custom Endpoint").click()
    page.get_by_label("Name").fill("forged")
    page.get_by_label("Endpoint").fill("http://127.0.0.1:9")
    page.evaluate("document.querySelector('#add input[name=csrf_token]').remove()")
    with page.expect_response(world.url + "/admin/backends") as answer:
        page.get_by_role("button", name="Add backend").click()
    assert answer.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing or old")
    names = [b["name"] for b in world.api("GET", "/admin/api/backends").json()["backends"]]
    assert "forged" not in names


def test_a_user_cannot_see_another_users_backend(chromium: Browser, world: World) -> None:
    bob, ada = (chromium.new_page(viewport=DESKTOP) for _ in range(2))
    sign_in(bob, world, world.bob)
    bob.get_by_text("+ Add Custom Endpoint").click()
    bob.get_by_label("Name").fill("bobs-box")
    bob.get_by_label("Endpoint").fill("http://127.0.0.1:9")
    bob.get_by_label("Active").uncheck()
    bob.get_by_role("button", name="Add backend").click()
    expect(card(bob, "bobs-box")).to_contain_text("yours")
    expect(card(bob, "bobs-box").locator(".status-line")).to_contain_text("Inactive")

    sign_in(ada, world, world.ada)
    expect(card(ada, "ollama")).to_be_visible()
    assert "bobs-box" not in ada.content()
    assert card(ada, "ollama").get_by_role("link", name="Edit").count() == 0  # shared
    for each in (bob, ada):
        each.context.close()


def test_the_dashboard_follows_the_queue_live(page: Page, world: World) -> None:
    sign_in(page, world, ADMIN_KEY)
    page.goto(world.url + "/admin/")
    page.evaluate("window.notReloaded = true")
    job = world.api("POST", "/jobs", json={"endpoint": "chat", "request": chat_body()}).json()
    live = page.locator("#live")
    expect(live).to_contain_text(job["id"], timeout=10_000)
    expect(live.locator("tr", has_text=job["id"])).to_contain_text("succeeded", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
    expect(live).to_contain_text("Connected (")
    shot(page, "dashboard")


def test_the_users_page_makes_a_key_shows_it_once_and_revokes(page: Page, world: World) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, world, ADMIN_KEY)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("Name").fill("carol")
    page.get_by_role("button", name="Create").click()
    key = page.get_by_label("The new key").input_value()
    assert key.startswith("fm_")
    assert world.api("GET", "/api/tags", key).status_code == 200
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    shot(page, "users")

    page.reload()
    assert key not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke carol").click()
    expect(page.get_by_role("status").first).to_have_text("Revoked 'carol'.")
    assert world.api("GET", "/api/tags", key).status_code == 401


def test_every_page_is_usable_at_360_px_in_dark_mode_and_by_keyboard(
    chromium: Browser, world: World
) -> None:
    context = chromium.new_context(viewport=PHONE, color_scheme="dark")
    phone = context.new_page()
    sign_in(phone, world, ADMIN_KEY)
    phone.keyboard.press("Tab")
    assert phone.evaluate("document.activeElement.textContent") == "Skip to content"
    for name, path in (
        ("dashboard", "/admin/"),
        ("backends", "/admin/backends"),
        ("users", "/admin/users"),
        ("edit", "/admin/backends/1/edit"),
    ):
        phone.goto(world.url + path)
        assert phone.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
        wide = phone.evaluate("document.documentElement.scrollWidth")
        assert wide <= PHONE["width"], f"{path} scrolls sideways at 360 px ({wide} px)"
        unlabelled = phone.evaluate(
            """[...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
               .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                            && !(e.tagName === 'BUTTON' && e.textContent.trim()))
               .map(e => e.outerHTML)"""
        )
        assert unlabelled == [], f"{path}: controls without a label"
        assert phone.evaluate(CUT_OFF) == [], f"{path}: cut off or wrapped at 360 px"
        shot(phone, f"{name}-phone-dark")
    # the whole sign-out path by keyboard: focus the button, press Enter
    phone.get_by_role("button", name="Sign out").focus()
    phone.keyboard.press("Enter")
    expect(phone).to_have_url(world.url + "/admin/login")
    context.close()
