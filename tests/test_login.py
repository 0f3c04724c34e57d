"""client/login.py on loopback, urllib as the browser: state check, replay refused, token check."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rtc_helpers import LOGIN_SECRET, run, signaling_server

from sleap_rtc.auth.store import TokenStore
from sleap_rtc.auth.tokens import TokenError, TokenIssuer
from sleap_rtc.client.login import (
    CallbackListener,
    JwksCache,
    LoginError,
    fetch_jwks,
    http_base,
    login,
    login_url,
    login_with_passphrase,
)
from sleap_rtc.signaling.client import SignalingClient, SignalingError
from sleap_rtc.signaling.web import LOGIN_SCRIPT


def get(url: str) -> tuple[int, str, str]:
    """GET following redirects; (status, final url, body)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.geturl(), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.geturl(), exc.read().decode()


def browser(
    user: str = "alice", secret: str = LOGIN_SECRET, seen: list[str] | None = None
) -> Callable[[str], bool]:
    """A fake browser: loads the login page, submits the form, follows the redirect."""

    def open_url(url: str) -> bool:
        status, _, page = get(url)
        assert status == 200 and 'name="secret"' in page
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        submit = (
            url.split("/login?")[0]
            + "/login/submit?"
            + urllib.parse.urlencode({**query, "user": user, "secret": secret})
        )
        result = get(submit)
        if seen is not None:
            seen.append(result[1])
        return True

    return open_url


def test_login_end_to_end(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            store = TokenStore(tmp_path / "cfg" / "tokens.json")
            seen: list[str] = []
            shown: list[str] = []
            rec = await login(
                server.url,
                room="lab",
                open_browser=browser(seen=seen),
                show_url=shown.append,
                timeout=10,
                store=store,
            )
            assert rec.room == "lab" and rec.subject == "alice"
            claims = server.verifier.verify(rec.token, room="lab")
            assert claims.subject == "alice"
            assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
            assert store.load(server.url) == rec
            assert shown and shown[0].startswith(server.http_url + "/login?")
            # The browser landed on the loopback callback, carrying the state.
            assert seen[0].startswith("http://127.0.0.1:") and "state=" in seen[0]
            # Replaying the callback: the listener is gone (one-shot).
            status, _, _ = await asyncio.to_thread(lambda: _safe_get(seen[0]))
            assert status in (0, 400)

    run(main())


def _safe_get(url: str) -> tuple[int, str, str]:
    try:
        return get(url)
    except OSError:
        return 0, url, ""


def test_callback_refuses_wrong_and_replayed_state() -> None:
    async def main() -> None:
        listener = CallbackListener("expected-state")
        await listener.start()
        try:
            base = listener.redirect_uri
            wrong = await asyncio.to_thread(get, base + "?state=forged&token=t")
            assert wrong[0] == 400
            missing = await asyncio.to_thread(get, base + "?token=t")
            assert missing[0] == 400
            other_path = await asyncio.to_thread(
                get, base.replace("/callback", "/x") + "?state=expected-state"
            )
            assert other_path[0] == 404
            ok = await asyncio.to_thread(get, base + "?state=expected-state&token=good")
            assert ok[0] == 200
            assert await listener.wait(1) == "good"
            replay = await asyncio.to_thread(get, base + "?state=expected-state&token=evil")
            assert replay[0] == 400
            assert await listener.wait(1) == "good"  # the replay changed nothing
            assert listener.refused == ["state_mismatch", "state_mismatch", "replayed"]
        finally:
            await listener.close()

    run(main())


def test_wrong_passphrase_is_refused_and_login_times_out(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            seen: list[str] = []
            with pytest.raises(LoginError) as info:
                await login(
                    server.url,
                    room="lab",
                    open_browser=browser(secret="wrong", seen=seen),
                    timeout=0.5,
                    store=TokenStore(tmp_path / "t.json"),
                )
            assert info.value.reason == "timeout"
            assert not (tmp_path / "t.json").exists()
            # Wrong room secret: 401, no redirect to the callback.
            assert "/login/submit" in seen[0]

    run(main())


def test_token_that_does_not_verify_is_not_stored(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            forged = TokenIssuer.generate().issue("mallory", "lab")

            def attacker(url: str) -> bool:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
                cb = (
                    query["redirect_uri"]
                    + "?"
                    + urllib.parse.urlencode({"state": query["state"], "token": forged})
                )
                assert get(cb)[0] == 200
                return True

            store = TokenStore(tmp_path / "t.json")
            with pytest.raises(LoginError) as info:
                await login(server.url, room="lab", open_browser=attacker, timeout=5, store=store)
            assert info.value.reason == "bad_token"
            assert store.load() is None
            # A token for another room does not pass either.
            other = server.issuer.issue("alice", "other")

            def other_room(url: str) -> bool:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
                get(
                    query["redirect_uri"]
                    + "?"
                    + urllib.parse.urlencode({"state": query["state"], "token": other})
                )
                return True

            with pytest.raises(LoginError, match="room"):
                await login(server.url, room="lab", open_browser=other_room, timeout=5, store=store)

    run(main())


def test_login_page_rejects_non_loopback_callbacks(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            for uri in (
                "http://evil.example:80/cb",
                "https://127.0.0.1:5/cb",
                "http://127.0.0.1/cb",
            ):
                url = login_url(server.url, room="lab", state="s", redirect_uri=uri)
                status, _, body = await asyncio.to_thread(get, url)
                assert status == 400 and "loopback" in body
                sub = (
                    url.replace("/login?", "/login/submit?")
                    + "&user=a&secret="
                    + urllib.parse.quote(LOGIN_SECRET)
                )
                assert (await asyncio.to_thread(get, sub))[0] == 400
            # HTML in parameters is escaped.
            url = login_url(
                server.url, room="lab", state='"><script>', redirect_uri="http://127.0.0.1:9/cb"
            )
            status, _, body = await asyncio.to_thread(get, url)
            assert status == 200 and '"><script>' not in body and "&quot;&gt;&lt;script&gt;" in body

    run(main())


def test_login_brute_force_is_throttled(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path, max_login_failures=3) as server:
            base = login_url(
                server.url, room="lab", state="s", redirect_uri="http://127.0.0.1:9/cb"
            )
            sub = base.replace("/login?", "/login/submit?") + "&user=a&secret="
            codes = [(await asyncio.to_thread(get, sub + f"guess{i}"))[0] for i in range(4)]
            assert codes == [401, 401, 401, 429]
            # Even the right passphrase waits out the window.
            assert (await asyncio.to_thread(get, sub + urllib.parse.quote(LOGIN_SECRET)))[0] == 429

    run(main())


def test_jwks_fetch_and_cache(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            jwks = await fetch_jwks(server.url)
            assert jwks == server.issuer.jwks()
            calls: list[str] = []

            async def counting(url: str) -> dict[str, Any]:
                calls.append(url)
                return await fetch_jwks(url)

            cache = JwksCache(server.url, fetch=counting, path=tmp_path / "jwks.json")
            token = server.issuer.issue("alice", "lab")
            assert (await cache.verify(token, room="lab")).subject == "alice"
            assert (await cache.verify(token, room="lab")).subject == "alice"
            assert len(calls) == 1
            assert stat.S_IMODE((tmp_path / "jwks.json").stat().st_mode) == 0o600
            with pytest.raises(TokenError) as info:
                await cache.verify(TokenIssuer.generate().issue("x", "lab"), room="lab")
            assert info.value.reason == "unknown_key" and len(calls) == 2  # refetched once
            port = server.port
        # Server gone: the disk copy still verifies, a fresh cache without one fails clearly.
        offline = JwksCache(f"ws://127.0.0.1:{port}", path=tmp_path / "jwks.json")
        assert (await offline.verify(token, room="lab")).subject == "alice"
        with pytest.raises(LoginError) as err:
            await JwksCache(f"ws://127.0.0.1:{port}").verify(token)
        assert err.value.reason == "unreachable"

    run(main())


def test_http_base() -> None:
    assert http_base("ws://h:1/x") == "http://h:1"
    assert http_base("wss://h") == "https://h"
    assert http_base("http://h:2") == "http://h:2"
    with pytest.raises(ValueError):
        http_base("ftp://h")


def test_headless_login_over_the_socket(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            store = TokenStore(tmp_path / "t.json")
            rec = await login_with_passphrase(
                server.url, room="lab", user="bob", secret=LOGIN_SECRET, store=store
            )
            assert rec.subject == "bob" and server.verifier.verify(rec.token, room="lab")
            with pytest.raises(LoginError) as info:
                await login_with_passphrase(
                    server.url, room="lab", user="bob", secret="nope", store=store
                )
            assert info.value.reason == "denied" and "passphrase" in info.value.message
            async with await SignalingClient.connect(server.url) as sig:
                with pytest.raises(SignalingError) as err:
                    await sig.request(
                        {
                            "type": "login",
                            "room_id": "lab",
                            "user": "bob",
                            "secret": LOGIN_SECRET,
                            "state": "s",
                            "redirect_uri": "http://evil.example:80/cb",
                        },
                        "token",
                    )
                assert err.value.code == "bad_field" and "loopback" in err.value.reason

    run(main())


NODE_PAGE = r"""
const reply = process.argv[1] ? JSON.parse(process.argv[1]) : null;
const out = {};
const fields = {room: "lab", state: process.argv[2], redirect_uri: process.argv[3],
                user: "carol", secret: process.argv[4]};
const elements = {};
for (const k in fields) { elements[k] = {value: fields[k]}; }
const form = {elements, addEventListener: (name, fn) => { out.listener = name; form.fn = fn; },
              submit: () => { out.submitted = true; }};
const msg = {textContent: ""};
globalThis.document = {getElementById: (id) => (id === "login" ? form : msg)};
globalThis.window = {location: {protocol: "http:", host: "127.0.0.1:1",
                                replace: (u) => { out.replaced = u; }}};
globalThis.WebSocket = class {
  constructor(url) { out.url = url; setTimeout(() => this.onopen(), 0); }
  send(data) {
    out.sent = JSON.parse(data);
    if (reply) { setTimeout(() => this.onmessage({data: JSON.stringify(reply)}), 0); }
  }
  close() { out.closed = true; }
};
eval(require("fs").readFileSync(0, "utf8"));
let prevented = false;
form.fn({preventDefault: () => { prevented = true; }});
setTimeout(() => { out.prevented = prevented; out.msg = msg.textContent;
                   console.log(JSON.stringify(out)); }, 50);
"""


def _page_script(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        ["node", "-e", NODE_PAGE, "--", *args],
        input=LOGIN_SCRIPT,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_login_page_script_keeps_the_passphrase_out_of_urls(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            listener = CallbackListener("page-state")
            await listener.start()
            try:
                args = ("page-state", listener.redirect_uri, LOGIN_SECRET)
                first = await asyncio.to_thread(_page_script, "", *args)
                assert first["listener"] == "submit" and first["prevented"]
                assert first["url"] == "ws://127.0.0.1:1/"
                sent = first["sent"]
                assert sent["type"] == "login" and sent["secret"] == LOGIN_SECRET
                async with await SignalingClient.connect(server.url) as sig:
                    reply = await sig.request(sent, "token")
                    wrong = dict(sent, secret="wrong")
                    with pytest.raises(SignalingError) as refused:
                        await sig.request(wrong, "token")
                second = await asyncio.to_thread(_page_script, json.dumps(reply), *args)
                assert second["replaced"] == reply["redirect"]
                assert LOGIN_SECRET not in second["replaced"]
                assert (await asyncio.to_thread(get, second["replaced"]))[0] == 200
                token = await listener.wait(2)
                assert server.verifier.verify(token, room="lab").subject == "carol"
                error_reply = {"type": "error", "reason": refused.value.reason}
                third = await asyncio.to_thread(_page_script, json.dumps(error_reply), *args)
                assert "replaced" not in third and third["msg"] == refused.value.reason
            finally:
                await listener.close()

    run(main())


def test_login_token_file_refuses_a_token_that_expired_seconds_ago(tmp_path: Path) -> None:
    """`login --token-file` judges expiry as every other command does (no leeway)."""
    import time

    from sleap_rtc.cli.exits import CliError, ExitCode
    from sleap_rtc.cli.login_cmd import _headless

    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            store = TokenStore(tmp_path / "t.json")
            stale = tmp_path / "stale.jwt"
            stale.write_text(server.issuer.issue("bob", "lab", ttl_s=60, now=time.time() - 65))
            with pytest.raises(CliError) as info:
                await _headless(stale, server.url, "lab", store)
            assert info.value.code == ExitCode.LOGIN_REQUIRED
            assert "expired" in info.value.message
            assert not (tmp_path / "t.json").exists()
            fresh = tmp_path / "fresh.jwt"
            fresh.write_text(server.issuer.issue("bob", "lab", ttl_s=3600))
            assert await _headless(fresh, server.url, "lab", store) == 0

    run(main())


def test_a_refused_or_abandoned_browser_login_ends_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GUI runner's login (stored_login -> login) gives up after login_timeout_s."""
    import functools
    import time

    from sleap_rtc.client import login as login_module
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.results import LOGIN_REQUIRED, FlowStatus
    from sleap_rtc.client.timeouts import FlowTimeouts
    from sleap_rtc.client.wiring import stored_login
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.gui.runners import run_presubmission_checks

    def refuse(url: str) -> bool:  # the user says no on the login page
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        status, _, _ = get(f"{query['redirect_uri']}?state={query['state']}&error=access_denied")
        assert status == 400
        return True

    settings = ClientSettings(server="http://127.0.0.1:9", room="lab")
    assert stored_login(settings, "").login_timeout_s == FlowTimeouts().login_s == 120.0
    connects: list[int] = []

    async def never_connect() -> Any:
        connects.append(1)
        raise AssertionError("no connection without a login")

    for browser_action, bound, most_s in (
        (lambda url: True, 0.5, 3.0),  # abandoned: the page is opened, nobody logs in
        (refuse, 30.0, 3.0),  # refused: answered at once, not after the bound
    ):
        real = functools.partial(
            login, open_browser=browser_action, store=TokenStore(tmp_path / "t.json")
        )
        monkeypatch.setattr(login_module, "login", real)
        began = time.monotonic()
        result = run_presubmission_checks(
            "/nowhere/labels.slp",
            "lab",
            "gpu-1",
            connect=never_connect,
            auth=stored_login(settings, "", login_timeout_s=bound),  # "": no stored token
        )
        took = time.monotonic() - began
        assert result.status is FlowStatus.ERROR and result.message == LOGIN_REQUIRED, result
        assert took < most_s, took
    assert connects == [] and not (tmp_path / "t.json").exists()

    async def hangs() -> str:  # a login that never returns (e.g. a stuck token check)
        await asyncio.sleep(3600)
        return ""

    check = AuthCheck(get_token=lambda: None, login=hangs, login_timeout_s=0.2)
    began = time.monotonic()
    with pytest.raises(Exception, match=r"did not finish within 0\.2 s"):
        asyncio.run(check.token())
    assert time.monotonic() - began < 2.0
