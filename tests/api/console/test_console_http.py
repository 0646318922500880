"""The console over plain HTTP: its files and headers, sign-in, the session cookie, CSRF, the VMs."""

from __future__ import annotations

import httpx
import pytest
from tests.api.conftest import Agent, submit
from tests.builders import script

from vmbusops.api.auth import Operation, PrincipalStore, Refusal
from vmbusops.api.console import CONTENT_SECURITY_POLICY, FILES
from vmbusops.api.sessions import SESSION_COOKIE, ConsoleSessions, cross_site

LOOP = '1..2000 | ForEach-Object { Write-Output "line $_"; Start-Sleep -Milliseconds 50 }'


def console(agent: Agent) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=agent.url, timeout=30)


async def sign_in(client: httpx.AsyncClient, token: str) -> dict[str, str]:
    r = await client.post("/console/session", json={"token": token})
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


async def test_files_and_every_answer_carry_the_security_headers(agent: Agent) -> None:
    async with console(agent) as c:
        for path in ("/console/", "/console/static/console.js", "/console/static/console.css", "/v1/health", "/v1/jobs"):
            r = await c.get(path)
            assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["referrer-policy"] == "no-referrer", path
        page = (await c.get("/console/")).text
        # No inline script or style: everything the page runs or styles with is a file of its own.
        assert "<script src=\"/console/static/console.js\"" in page and "<script>" not in page
        assert "style=" not in page and "<style" not in page
        script_text = (await c.get("/console/static/console.js")).text
        assert "innerHTML" not in script_text and "insertAdjacentHTML" not in script_text
        assert "document.write" not in script_text and "eval(" not in script_text
        assert (await c.get("/console/static/nope.js")).status_code == 404
        assert (await c.get("/console")).headers["location"] == "/console/"
    assert set(FILES) == {"", "console.js", "console.css"}


async def test_a_live_stream_carries_the_security_headers_and_its_whole_body(agent: Agent) -> None:
    """The event stream's body goes to the server past the middleware; its start does not."""
    job_id = (await submit(agent, agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')]))).json()["job"]["id"]
    async with agent.client("admin") as c, c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
        body = (await r.aread()).decode()
    assert body.startswith("retry: 1000\n\nevent: job\n")
    assert "id: 1\nevent: record\ndata: {" in body and body.endswith("}\n\n")
    assert body.rpartition("event: ")[2].startswith("end\n")


async def test_sign_in_sets_a_strict_cookie_and_never_echoes_the_token(agent: Agent) -> None:
    token = agent.tokens["tenant_a"]
    async with console(agent) as c:
        r = await c.post("/console/session", json={"token": token})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
        assert token not in r.text and token.split("_", 2)[2] not in cookie  # the secret may hold "_"
        me = r.json()
        assert me["name"] == "tenant_a" and me["via"] == "session" and me["vms"] == ["a-*"]
        assert (await c.get("/console/session")).json()["csrf"] == me["csrf"]
        # The cookie alone reads the API, the live stream included.
        assert (await c.get("/v1/jobs")).status_code == 200
    for bad in ({"token": "vmo_000000000000_" + "x" * 43}, {"token": 3}, {"tok": "x"}):
        async with console(agent) as c:
            r = await c.post("/console/session", json=bad)
            assert r.status_code in (400, 401), r.text
            assert "set-cookie" not in r.headers
    async with console(agent) as c:
        r = await c.post("/console/session", content=f"token={token}", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
    assert all(token not in line.get("message", "") and token not in str(line) for line in agent.log_lines())


async def test_a_cookie_changes_nothing_without_the_sessions_csrf_token(agent: Agent) -> None:
    r = await submit(agent, agent.bundle(["a-web01"], [script("wait", LOOP)]), "tenant_a")
    job_id = r.json()["job"]["id"]
    async with console(agent) as c:
        me = await sign_in(c, agent.tokens["tenant_a"])
        r = await c.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = await c.post(f"/v1/jobs/{job_id}/cancel", headers={"X-Vmbusops-CSRF": "not-it"})
        assert r.status_code == 403
        r = await c.post(f"/v1/jobs/{job_id}/cancel", headers={"X-Vmbusops-CSRF": me["csrf"]})
        assert r.status_code == 202, r.text
        # Signing out ends the session on the agent, not only in this client's jar.
        stolen = c.cookies[SESSION_COOKIE]
        assert (await c.delete("/console/session")).status_code == 403
        r = await c.delete("/console/session", headers={"X-Vmbusops-CSRF": me["csrf"]})
        assert r.status_code == 204 and "Max-Age=0" in r.headers["set-cookie"]
    async with console(agent) as c:
        r = await c.get("/v1/jobs", headers={"Cookie": f"{SESSION_COOKIE}={stolen}"})
        assert r.status_code == 401


async def test_no_browser_request_from_another_origin_changes_anything(agent: Agent) -> None:
    r = await submit(agent, agent.bundle(["a-web01"], [script("wait", LOOP)]), "admin")
    job_id = r.json()["job"]["id"]
    async with agent.client("admin") as c:
        # A client certificate or a token is refused alike when a browser says another site asked.
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            r = await c.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
            assert r.status_code == 403, headers
        assert (await c.get(f"/v1/jobs/{job_id}", headers={"Origin": "https://evil.example"})).status_code == 200
        r = await c.post(f"/v1/jobs/{job_id}/cancel", headers={"Origin": agent.url, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 202


async def test_revoking_the_token_ends_its_console_sessions(agent: Agent) -> None:
    async with console(agent) as c:
        me = await sign_in(c, agent.tokens["tenant_b"])
        assert (await c.get("/v1/jobs")).status_code == 200
        with PrincipalStore(agent.home / "agent" / "principals.sqlite") as store:
            store.revoke(me["id"])
        assert (await c.get("/v1/jobs")).status_code == 401
        assert (await c.get("/console/session")).status_code == 401


async def test_the_hosts_vms_are_those_in_scope(agent: Agent) -> None:
    async with agent.client("tenant_b") as c:
        vms = (await c.get("/v1/vms")).json()["vms"]
    assert [v["vm"] for v in vms] == ["b-db01"]
    assert set(vms[0]) == {"vm", "id", "state", "heartbeat", "guest_services", "uptime"}
    assert vms[0]["state"] == "Running" and vms[0]["guest_services"] is True
    async with agent.client("admin") as c:
        assert sorted(v["vm"] for v in (await c.get("/v1/vms")).json()["vms"]) == ["a-web01", "a-web02", "b-db01"]
    async with agent.client(None) as c:
        assert (await c.get("/v1/vms")).status_code == 401


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {"origin": "https://evil.example"}, False),
        ("POST", {}, False),
        ("POST", {"sec-fetch-site": "none"}, False),
        ("POST", {"sec-fetch-site": "same-origin", "origin": "http://agent:8080"}, False),
        ("POST", {"origin": "http://agent:8080.evil.example"}, True),
        ("DELETE", {"sec-fetch-site": "cross-site"}, True),
        ("POST", {"origin": "null"}, True),
    ],
)
def test_cross_site(method: str, headers: dict[str, str], refused: bool) -> None:
    assert (cross_site(method, headers, "http", "agent:8080") is not None) is refused


def test_sessions_expire_idle_and_old() -> None:
    now = [1000.0]
    with PrincipalStore() as store:
        who, _ = store.create_token(name="t", operations=frozenset({Operation.READ}), vms=["*"], expires_at=None)
        sessions = ConsoleSessions(store, clock=lambda: now[0])
        sid, csrf = sessions.open(who)
        got = sessions.authenticate(sid)
        assert isinstance(got, tuple) and got[0].id == who.id and got[1] == csrf
        now[0] += 2 * 3600 - 1
        assert isinstance(sessions.authenticate(sid), tuple)  # a request keeps it alive
        now[0] += 2 * 3600 + 1
        assert isinstance(sessions.authenticate(sid), Refusal)  # idle too long
        sid, _ = sessions.open(who)
        for _ in range(13):
            now[0] += 3600
            sessions.authenticate(sid)
        assert isinstance(sessions.authenticate(sid), Refusal)  # older than its lifetime
        assert isinstance(sessions.authenticate("made-up"), Refusal)
