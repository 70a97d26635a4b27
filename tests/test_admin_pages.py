"""The settings pages under /admin/, without a browser: sign-in, sessions, CSRF, forms.

What needs a real browser (JavaScript, layout, restarts) is in tests/test_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2 as httpx
import pytest
import trio

from foreman.control.admin import human_age, human_size, local
from foreman.standins.ollama import ASGIStreamTransport, StandIn
from foreman.users.sessions import cookie_value

from .conftest import Foreman, open_foreman
from .test_backends import SECOND, wait_connected, with_second

ADMIN_KEY = "admin-key-for-the-pages"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


@asynccontextmanager
async def browser(fm: Foreman, *, https: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """A client of foreman's that keeps cookies, as a browser does (and sends no key)."""
    base = "https://localhost:8080" if https else "http://localhost:8080"
    async with httpx.AsyncClient(
        transport=ASGIStreamTransport(fm.app, fm.gw.nursery), base_url=base
    ) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, key: str) -> str:
    """Sign in with ``key``; returns the session's CSRF token."""
    login = await client.get("/admin/login")
    assert login.status_code == 200
    answer = await client.post(
        "/admin/login", data={"key": key, "csrf_token": csrf_of(login.text), "next": "/admin/"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/", answer.text
    page = await client.get("/admin/backends")
    assert page.status_code == 200
    return csrf_of(page.text)


async def make_user(fm: Foreman, name: str, role: str = "user") -> str:
    answer = await fm.client.post(
        "/admin/api/users",
        json={"name": name, "role": role},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status_code == 201
    return answer.json()["key"]


@pytest.fixture
async def closed(nursery: trio.Nursery, standin: StandIn) -> AsyncIterator[Foreman]:
    """foreman with an admin key (``FOREMAN_TOKEN``)."""
    async with open_foreman(nursery, standin, token=ADMIN_KEY) as fm:
        yield fm


async def test_sign_in_makes_a_strict_http_only_session_and_sign_out_ends_it(
    closed: Foreman,
) -> None:
    async with browser(closed) as client:
        first = await client.get("/admin/")
        assert first.status_code == 303 and first.headers["location"] == "/admin/login?next=/admin/"
        login = await client.get("/admin/login")
        assert "Sign in to foreman" in login.text
        wrong = await client.post(
            "/admin/login", data={"key": ADMIN_KEY + "x", "csrf_token": csrf_of(login.text)}
        )
        assert wrong.status_code == 401 and "That key is not valid" in wrong.text
        assert "foreman_session" not in client.cookies

        right = await client.post(
            "/admin/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(login.text)}
        )
        assert right.status_code == 303
        cookie = right.headers["set-cookie"]
        assert cookie.startswith("foreman_session=")
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/admin/"):
            assert flag in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back

        dashboard = await client.get("/admin/")
        assert dashboard.status_code == 200 and "Status at a glance" in dashboard.text
        assert "default-src 'self'" in dashboard.headers["content-security-policy"]
        session = client.cookies["foreman_session"]

        # the session is no key for Ollama's API, nor for the admin API's changes without CSRF
        tags = await closed.client.get(
            "/api/tags", headers={"cookie": f"foreman_session={session}"}
        )
        assert tags.status_code == 401

        out = await client.post("/admin/logout", data={"csrf_token": csrf_of(dashboard.text)})
        assert out.status_code == 303 and out.headers["location"] == "/admin/login"
        again = await closed.client.get("/admin/", headers={"cookie": f"foreman_session={session}"})
        assert again.status_code == 303  # the old cookie opens nothing any more


async def test_the_session_cookie_is_secure_over_tls(closed: Foreman) -> None:
    async with browser(closed, https=True) as client:
        login = await client.get("/admin/login")
        assert "Secure" in login.headers["set-cookie"]
        answer = await client.post(
            "/admin/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(login.text)}
        )
        assert "Secure" in answer.headers["set-cookie"]


async def test_every_form_needs_its_csrf_token(closed: Foreman) -> None:
    async with browser(closed) as client:
        login = await client.get("/admin/login")
        forged = await client.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": "x"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        csrf = await sign_in(client, ADMIN_KEY)
        assert csrf != csrf_of(login.text)  # the session has its own

        fields = {"name": "forged", "type": "ollama", "endpoint": SECOND, "is_active": "on"}
        for data in (fields, {**fields, "csrf_token": "not-the-token"}):
            refused = await client.post("/admin/backends", data=data)
            assert refused.status_code == 403 and "CSRF token" in refused.text
        refused = await client.post("/admin/api/backends", json={k: fields[k] for k in fields})
        assert refused.status_code == 403
        assert refused.json() == {"error": "missing or wrong CSRF token (X-CSRF-Token)"}
        listed = await client.get("/admin/api/backends")  # a GET needs no token
        assert [b["name"] for b in listed.json()["backends"]] == ["ollama"]

        fields["is_active"] = False
        made = await client.post("/admin/api/backends", json=fields, headers={"x-csrf-token": csrf})
        assert made.status_code == 201 and made.json()["owner"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/admin/backends",
        "/admin/backends/1/edit",
        "/admin/backends/1/delete",
        "/admin/backends/1/test",
        "/admin/backends/1/model",
        "/admin/preferences",
        "/admin/users",
        "/admin/users/admin/revoke",
        "/admin/logout",
    ],
)
async def test_no_form_is_taken_without_its_token_or_from_another_origin(
    closed: Foreman, path: str
) -> None:
    async with browser(closed) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        assert (await client.post(path, data={})).status_code == 403
        other = {"origin": "http://localhost:3000"}  # another local page: same site, cookies too
        answer = await client.post(path, data={"csrf_token": csrf}, headers=other)
        assert answer.status_code == 403 and "CSRF" in answer.text
        assert (await client.get("/admin/")).status_code == 200  # still signed in


async def test_a_signed_out_page_is_told_so_and_sign_in_survives_a_stale_form(
    closed: Foreman,
) -> None:
    async with browser(closed) as client:
        for path in ("/admin/live", "/admin/backends/live"):
            answer = await client.get(path, headers={"x-requested-with": "fetch"})
            assert answer.status_code == 401 and "set-cookie" not in answer.headers
        login = await client.get("/admin/login")
        token = csrf_of(login.text)
        assert csrf_of((await client.get("/admin/login")).text) == token  # kept, not rotated
        client.cookies.clear()  # the sign-in cookie expired: the form is refused...
        stale = await client.post(
            "/admin/login?next=/admin/users", data={"key": ADMIN_KEY, "csrf_token": token}
        )
        assert stale.status_code == 403 and "CSRF" in stale.text
        retry = await client.post(  # ...and comes back with a fresh token that works
            "/admin/login",
            data={"key": ADMIN_KEY, "csrf_token": csrf_of(stale.text), "next": "/admin/users"},
        )
        assert retry.status_code == 303 and retry.headers["location"] == "/admin/users"
        # a malformed cookie of another local site does not hide foreman's
        client.cookies.set("prefs", '{"theme":"dark","x":1}', path="/admin/")
        assert (await client.get("/admin/users")).status_code == 200
        missing = await client.get("/admin/nope")
        assert missing.status_code == 404 and "There is no such page." in missing.text


async def test_the_first_user_made_on_the_page_closes_foreman_and_signs_its_maker_in(
    fm: Foreman,
) -> None:
    async with browser(fm) as client:
        assert (await client.get("/admin/users")).status_code == 303  # open: a session at once
        csrf = csrf_of((await client.get("/admin/users")).text)
        plain = await client.post("/admin/users", data={"name": "ada", "csrf_token": csrf})
        assert plain.status_code == 422 and "make it an admin" in plain.text
        made = await client.post(
            "/admin/users", data={"name": "ada", "role": "admin", "csrf_token": csrf}
        )
        assert made.status_code == 303 and "foreman_session=" in made.headers["set-cookie"]
        page = await client.get("/admin/users")
        assert page.status_code == 200 and "you are signed in as ada" in page.text
        key = re.search(r'id="new-key" class="key" readonly value="(fm_[^"]+)"', page.text)
        assert key is not None
        assert (await fm.client.get("/api/tags")).status_code == 401  # closed now
        tags = await fm.client.get("/api/tags", headers={"authorization": f"Bearer {key[1]}"})
        assert tags.status_code == 200


async def test_revoking_a_user_ends_their_sessions(closed: Foreman) -> None:
    key = await make_user(closed, "ada")
    async with browser(closed) as client:
        await sign_in(client, key)
        assert (await client.get("/admin/")).status_code == 200
        assert (await client.get("/admin/users")).status_code == 403  # admins only
        revoked = await closed.client.delete(
            "/admin/api/users/ada", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert revoked.status_code == 200
        assert (await client.get("/admin/")).status_code == 303


async def test_the_users_page_shows_a_new_key_once_and_revokes(closed: Foreman) -> None:
    async with browser(closed) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        bad = await client.post("/admin/users", data={"name": "-no", "csrf_token": csrf})
        assert bad.status_code == 422 and 'id="error-name"' in bad.text
        made = await client.post("/admin/users", data={"name": "bob", "csrf_token": csrf})
        assert made.status_code == 303
        shown = await client.get("/admin/users")
        key = re.search(r'id="new-key" class="key" readonly value="(fm_[^"]+)"', shown.text)
        assert key and "shown only this once" in shown.text
        assert (
            await closed.client.get("/api/tags", headers={"authorization": f"Bearer {key[1]}"})
        ).status_code == 200
        assert key[1] not in (await client.get("/admin/users")).text  # once

        revoke = await client.post("/admin/users/bob/revoke", data={"csrf_token": csrf})
        assert revoke.status_code == 303
        after = await client.get("/admin/users")
        assert "Revoked &#39;bob&#39;." in after.text and "revoked 20" in after.text
        assert (
            await closed.client.get("/api/tags", headers={"authorization": f"Bearer {key[1]}"})
        ).status_code == 401


async def test_an_open_foreman_needs_no_sign_in_but_still_checks_forms(fm: Foreman) -> None:
    async with browser(fm) as client:
        first = await client.get("/admin/backends")
        assert first.status_code == 303 and "foreman_session=" in first.headers["set-cookie"]
        page = await client.get("/admin/backends")
        assert page.status_code == 200 and "foreman is open" in page.text
        assert "Sign out" not in page.text
        refused = await client.post("/admin/preferences", data={})
        assert refused.status_code == 403


async def test_add_select_and_prefer_through_the_forms(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin, token=ADMIN_KEY) as (fm, _), browser(fm) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        bad = await client.post(
            "/admin/backends",
            data={"name": "gpu", "type": "ollama", "endpoint": "ftp://x", "csrf_token": csrf},
        )
        assert bad.status_code == 422
        assert 'id="error-endpoint"' in bad.text and 'value="gpu"' in bad.text  # kept

        added = await client.post(
            "/admin/backends",
            data={
                "name": "gpu",
                "type": "ollama",
                "endpoint": SECOND,
                "is_active": "on",
                "csrf_token": csrf,
            },
        )
        assert added.status_code == 303
        gpu = next(
            b
            for b in (await client.get("/admin/api/backends")).json()["backends"]
            if b["name"] == "gpu"
        )
        await wait_connected(fm, gpu["id"], headers={"authorization": f"Bearer {ADMIN_KEY}"})
        page = (await client.get("/admin/backends")).text
        options = re.findall(rf'<select id="model-{gpu["id"]}".*?</select>', page, re.S)[0]
        names = [
            " ".join(o.split()) for o in re.findall(r"<option[^>]*>(.*?)</option>", options, re.S)
        ]
        # sorted, with sizes; the first model ever discovered was selected
        assert names == ["llama3.2:latest (2.0 GB)", "qwen2.5-coder:32b (19.9 GB) ✓"]

        chosen = await client.post(
            f"/admin/backends/{gpu['id']}/model",
            data={"model": "llama3.2:latest", "csrf_token": csrf},
        )
        assert chosen.status_code == 303
        page = (await client.get("/admin/backends")).text
        assert "gpu: selected model llama3.2:latest." in page
        assert "llama3.2:latest (2.0 GB) ✓" in " ".join(page.split())
        not_one = await client.post(
            f"/admin/backends/{gpu['id']}/model", data={"model": "nope", "csrf_token": csrf}
        )
        assert not_one.status_code == 422 and "not a model of backend" in not_one.text

        def preferences(**fields: str) -> dict[str, str]:
            return {
                "default_backend_id": str(gpu["id"]),
                "split_was": "0",
                "csrf_token": csrf,
                **fields,
            }

        # a wrong line keeps what was ticked and typed, and says what is wrong next to it
        typo = await client.post(
            "/admin/preferences", data=preferences(split="on", split_was="1", aliases="typo")
        )
        assert typo.status_code == 422
        assert 'name="fallback_to_claude" >' in typo.text  # unticked, as sent
        assert 'name="split" checked' in typo.text and 'name="split_was" value="1"' in typo.text
        assert (
            "line 1: write it as alias = backend/model" in typo.text
            and ">typo</textarea>" in typo.text
        )
        hostile = await client.post("/admin/preferences", data=preferences(default_backend_id="²"))
        assert hostile.status_code == 422

        # the simple choice needs a Claude backend: the error stands next to it
        split = await client.post("/admin/preferences", data=preferences(split="on"))
        assert split.status_code == 422 and 'id="error-split"' in split.text
        saved = await client.post(
            "/admin/preferences", data=preferences(aliases="fast = gpu/llama3.2:latest\n\n# a note")
        )
        assert saved.status_code == 303
        assert (await client.get("/admin/api/preferences")).json() == {
            "default_backend_id": gpu["id"],
            "fallback_to_claude": False,
            "aliases": {"fast": "gpu/llama3.2:latest"},
        }
        chat = await fm.client.post(
            "/api/chat",
            json={"model": "fast", "messages": [], "stream": False},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert chat.headers["x-foreman-backend"] == "gpu/llama3.2:latest"

        tested = await client.post(
            f"/admin/backends/{gpu['id']}/test",
            data={"csrf_token": csrf},
            headers={"x-requested-with": "fetch"},
        )
        assert tested.status_code == 200
        assert " ".join(tested.text.split()).endswith('role="status">✓ Connected: 2 models</span>')


async def test_a_user_sees_their_own_and_the_shared_backends_only(
    nursery: trio.Nursery, standin: StandIn, autojump_clock: Any
) -> None:
    async with with_second(nursery, standin, token=ADMIN_KEY) as (fm, _):
        ada, bob = await make_user(fm, "ada"), await make_user(fm, "bob")
        own = await fm.client.post(
            "/admin/api/backends",
            json={"name": "adas-box", "type": "ollama", "endpoint": SECOND},
            headers={"authorization": f"Bearer {ada}"},
        )
        own = own.json()
        async with browser(fm) as client:
            await sign_in(client, bob)
            csrf = csrf_of((await client.get("/admin/backends")).text)
            page = await client.get("/admin/backends")
            assert "adas-box" not in page.text and 'id="backend-1"' in page.text
            assert re.search(r'<select id="model-1" name="model" disabled', page.text)
            live = (await client.get("/admin/backends/live")).json()
            assert list(live) == ["1"] and "Connected" in live["1"]["status"]
            for path, status in (
                (f"/admin/backends/{own['id']}/edit", 404),  # another user's: not there
                (f"/admin/backends/{own['id']}/delete", 404),
                ("/admin/backends/1/edit", 403),  # shared: read-only for a user
                ("/admin/backends/1/model", 403),
                ("/admin/backends/1/delete", 403),
            ):
                answer = await client.post(path, data={"csrf_token": csrf, "model": "x"})
                assert answer.status_code == status, path
            assert (await client.get(f"/admin/backends/{own['id']}/edit")).status_code == 404


def test_cookies_and_next_pages_are_read_carefully() -> None:
    header = 'sessionid=a b; json={"a":1,"b":2}; foreman_session=TOK; x="unterminated'
    assert cookie_value(header) == "TOK" and cookie_value("other=1") is None
    assert cookie_value(b"foreman_login=L; foreman_session=S", "foreman_login") == "L"
    for target in (
        "//evil.example/admin/",
        "https://evil/",
        "/admin/\\evil",
        "/admin/x\r\nSet-Cookie: a=b",
        None,
        "/api/tags",
    ):
        assert local(target) == "/admin/", target
    assert local("/admin/backends") == "/admin/backends"


def test_sizes_and_ages_read_as_people_write_them() -> None:
    assert [human_size(n) for n in (None, 999, 1000, 19_851_336_256, 274_302_450, 999_950)] == [
        "",
        "999 B",
        "1.0 KB",
        "19.9 GB",
        "274.3 MB",
        "1.0 MB",
    ]
    assert [human_age(s) for s in (None, 0.4, 12.9, 61, 7200, 3 * 86400)] == [
        "never",
        "0 s ago",
        "12 s ago",
        "1 min ago",
        "2 h ago",
        "3 d ago",
    ]


async def test_an_open_foremans_users_page_says_so_and_offers_an_admin_first(
    fm: Foreman,
) -> None:
    async with browser(fm) as client:
        await client.get("/admin/users")  # open: a session at once
        page = (await client.get("/admin/users")).text
        assert "only <code>FOREMAN_TOKEN</code> opens foreman" not in page
        assert "foreman is open: no key is needed" in page or "no key is needed" in page
        assert '<option value="admin" selected>' in page  # the first user must be one


async def test_the_add_form_names_every_wrong_field_at_once_in_plain_words(
    closed: Foreman,
) -> None:
    async with browser(closed) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        bad = await client.post(
            "/admin/backends",
            data={"name": "my box!", "type": "ollama", "endpoint": "ftp://x", "csrf_token": csrf},
        )
        assert bad.status_code == 422
        assert 'id="error-name"' in bad.text and 'id="error-endpoint"' in bad.text
        assert "1 to 64 of A-Z" not in bad.text  # the rule said in words instead
        assert "letters, digits, dots, dashes or underscores" in bad.text
        missing = await client.post(
            "/admin/backends", data={"name": "box", "type": "ollama", "csrf_token": csrf}
        )
        assert missing.status_code == 422 and "An Ollama backend needs its URL." in missing.text


async def test_the_add_form_checks_the_configured_limits_with_the_other_fields(
    nursery: trio.Nursery, standin: StandIn
) -> None:
    async with open_foreman(nursery, standin, token=ADMIN_KEY, max_name_length=8) as fm:
        async with browser(fm) as client:
            csrf = await sign_in(client, ADMIN_KEY)
            data = {"name": "abcdefghij", "type": "ollama", "endpoint": "ftp://x"}  # 10 > 8
            bad = await client.post("/admin/backends", data={**data, "csrf_token": csrf})
            assert bad.status_code == 422
            # both at once: the name's limit is FOREMAN_MAX_NAME_LENGTH's, not the default
            assert 'id="error-name"' in bad.text and 'id="error-endpoint"' in bad.text


async def test_a_signed_in_readers_unknown_page_keeps_the_navigation(closed: Foreman) -> None:
    async with browser(closed) as client:
        await sign_in(client, ADMIN_KEY)
        lost = await client.get("/admin/no-such-page")
        assert lost.status_code == 404 and "There is no such page." in lost.text
        assert 'href="/admin/backends"' in lost.text and "Sign out" in lost.text
    async with browser(closed) as stranger:
        lost = await stranger.get("/admin/no-such-page")
        assert lost.status_code == 404 and "Sign out" not in lost.text


async def test_a_key_made_by_another_process_signs_in_at_once(closed: Foreman) -> None:
    import os
    import sqlite3

    from foreman.users import create_user

    db = sqlite3.connect(os.path.join(closed.gw.settings.data_path, "foreman.db"))
    db.row_factory = sqlite3.Row
    with db:  # `foreman users add` in its own process
        _, key = create_user(db, "newcomer", "user")
    db.close()
    async with browser(closed) as client:
        await sign_in(client, key)  # no wait for the 5 s refresh


async def test_a_store_that_cannot_save_shows_its_message_on_the_page(closed: Foreman) -> None:
    async with browser(closed) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        store = closed.gw.store
        assert store is not None
        store.failed("database or disk is full")  # as a failed write would mark it
        refused = await client.post("/admin/users", data={"name": "bob", "csrf_token": csrf})
        assert refused.status_code == 503
        assert "text/html" in refused.headers["content-type"]
        assert "database or disk is full" in refused.text and "try again later" in refused.text
        assert "Sign out" in refused.text  # a signed-in reader keeps the navigation
        api = await closed.client.post(
            "/admin/api/users",
            json={"name": "bob"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert api.status_code == 503 and "database or disk is full" in api.json()["error"]
        assert api.headers["retry-after"] == "5"
        assert (await client.get("/admin/users")).status_code == 200  # reads go on
