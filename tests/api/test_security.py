"""Who may do what, through the real agent: every refusal a clear 4xx, logged, nothing run."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import trio
from tests.api.conftest import Agent, submit
from tests.builders import bundle_doc, script, write_bundle_source

from vmbusops.bundle.build import build_bundle, sign_bundle

SLOW = '1..200 | ForEach-Object { Write-Output "tick $_"; Start-Sleep -Milliseconds 50 }'


async def job_count(agent: Agent) -> int:
    async with agent.client("admin") as c:
        return len((await c.get("/v1/jobs")).json()["jobs"])


def is_problem(r: Any, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:vmbusops:problem:") and body["detail"]


async def test_credentials_are_checked_on_every_route_and_refusals_logged(agent: Agent) -> None:
    job_id = (await submit(agent, agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')]))).json()[
        "job"
    ]["id"]
    routes = [
        ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/runs"),
        ("GET", f"/v1/jobs/{job_id}/records"), ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"), ("POST", "/v1/jobs"), ("GET", "/metrics"),
    ]  # fmt: skip
    wrong = agent.tokens["admin"][:-4] + ("AAAA" if not agent.tokens["admin"].endswith("AAAA") else "BBBB")
    credentials: dict[str, dict[str, str]] = {
        "none": {},
        "not bearer": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "wrong secret": {"Authorization": f"Bearer {wrong}"},
        "expired": agent.headers("expired"),
    }
    async with agent.client(None) as c:
        for label, headers in credentials.items():
            for method, path in routes:
                r = await c.request(method, path, headers=headers)
                assert r.status_code == 401, (label, method, path, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                is_problem(r, 401)
        # Health and the OpenAPI document are public.
        assert (await c.get("/v1/health")).status_code == 200
        assert (await c.get("/v1/openapi.json")).json()["openapi"].startswith("3.")
    logs = agent.log_lines()
    refused = [line for line in logs if line.get("event") == "refused"]
    whys = {line["why"] for line in refused}
    assert {"no credentials", "malformed bearer token", "wrong token secret", "token expired"} <= whys
    assert all(line["who"] and line["path"] for line in refused)
    # Secrets never reach the log.
    text = agent.stderr_path.read_text() if agent.stderr_path else ""
    for token in agent.tokens.values():
        assert token.split("_", 2)[2] not in text
    assert wrong.split("_", 2)[2] not in text


async def test_another_tenant_sees_nothing_and_cancels_nothing(agent: Agent) -> None:
    r = await submit(agent, agent.bundle(["a-web01", "a-web02"], [script("s", SLOW)]), who="tenant_a")
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    async with agent.client("tenant_b") as b, agent.client("tenant_a") as a:
        assert [j["id"] for j in (await b.get("/v1/jobs")).json()["jobs"]] == []
        assert [j["id"] for j in (await a.get("/v1/jobs")).json()["jobs"]] == [job_id]
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/runs"),
            ("GET", f"/v1/jobs/{job_id}/runs/a-web01"), ("GET", f"/v1/jobs/{job_id}/records"),
            ("GET", f"/v1/jobs/{job_id}/events"), ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("POST", f"/v1/jobs/{job_id}/runs/a-web01/cancel"),
        ]:  # fmt: skip
            r = await b.request(method, path)
            is_problem(r, 404)  # the same answer as for a job that does not exist
            assert (await b.request(method, path.replace(str(job_id), "99999"))).status_code == 404
        # Still running, nothing cancelled.
        job = (await a.get(f"/v1/jobs/{job_id}")).json()["job"]
        assert job["state"] == "in-progress" and job["cancel_requested"] is False
        # A tenant cannot submit for another tenant's VMs, even with a validly signed bundle.
        r = await submit(agent, agent.bundle(["b-db01"], [script("s", 'Write-Output "x"')]), who="tenant_a")
        is_problem(r, 403)
        # A read-only token cannot submit or cancel.
        r = await submit(agent, agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')]), who="reader")
        is_problem(r, 403)
        async with agent.client("reader") as reader:
            is_problem(await reader.post(f"/v1/jobs/{job_id}/cancel"), 403)
        r = await a.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202
    assert await job_count(agent) == 1
    refused = [line for line in agent.log_lines() if line.get("event") == "refused"]
    assert any("outside the scope" in line["why"] and "tenant_b" in line["who"] for line in refused)
    assert any("b-db01" in line["why"] and "tenant_a" in line["who"] for line in refused)


def tampered(path: Path, out: Path) -> Path:
    """The same archive with one byte of a payload file changed (signature still present)."""
    with tarfile.open(path) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data and member.name.endswith(".ps1"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


async def test_bad_bundles_and_bodies_are_refused_before_anything_runs(
    agent_factory: Any, tmp_path: Path
) -> None:
    agent: Agent = agent_factory(config="[agent]\nmax_bundle_bytes = 200000\n")
    src = write_bundle_source(
        tmp_path / "unsigned-src", bundle_doc(["a-web01"], [script("s", "Write-Output 1")], name="unsigned")
    )
    unsigned = tmp_path / "unsigned.vmb"
    build_bundle(src, unsigned)
    filed_src = write_bundle_source(
        tmp_path / "filed",
        bundle_doc(["a-web01"], [{"kind": "script", "name": "s", "file": "run.ps1"}], name="filed"),
        {"run.ps1": 'Write-Output "original"\n'},
    )
    filed = tmp_path / "filed.vmb"
    build_bundle(filed_src, filed)
    sign_bundle(filed, agent.key)
    bad_copy = tampered(filed, tmp_path / "tampered.vmb")

    async with agent.client("admin") as c:
        octet = {"Content-Type": "application/octet-stream"}
        for label, body, status, reason in [
            ("unsigned", unsigned.read_bytes(), 422, None),
            ("tampered", bad_copy.read_bytes(), 422, "DigestMismatchError"),
            ("garbage", b"this is not a bundle" * 100, 422, None),
            ("empty", b"", 400, None),
        ]:
            r = await c.post("/v1/jobs", content=body, headers=octet)
            is_problem(r, status)
            if reason:
                assert r.json()["reason"] == reason, label
            if status == 422:
                assert r.json()["ran"] is False
        is_problem(
            await c.post("/v1/jobs", content=filed.read_bytes(), headers={"Content-Type": "text/plain"}), 415
        )
        assert (await streamed_upload(agent, 300_000, chunked=True)).startswith(b"HTTP/1.1 413 ")
        assert (await streamed_upload(agent, 300_000, chunked=False)).startswith(b"HTTP/1.1 413 ")
        for body in (b"{not json", b'{"vm": 5}', b'["a"]', b'{"vm": "a-web01", "x": 1}'):
            is_problem(
                await c.post("/v1/jobs/1/cancel", content=body, headers={"Content-Type": "application/json"}),
                400,
            )
        is_problem(await c.get("/v1/jobs?limit=0"), 400)
        is_problem(await c.get("/v1/jobs?limit=%C2%B2"), 400)  # a digit to str.isdigit, not to int()
        is_problem(await c.get("/v1/jobs/1/records?after=x.y"), 404)  # no job 1 yet
        is_problem(await c.get(f"/v1/jobs/{2**70}"), 404)
        assert (await c.get("/v1/jobs")).json()["jobs"] == []
        # The untampered original is accepted afterwards: nothing was burnt by the refusals.
        r = await c.post("/v1/jobs", content=filed.read_bytes(), headers=octet)
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]
        is_problem(await c.get(f"/v1/jobs/{job_id}/records?after=x.y"), 400)
        is_problem(await c.get(f"/v1/jobs/{job_id}/records?limit=%C2%B2"), 400)
        is_problem(await c.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "1.2.3.4.5"}), 400)
        with trio.fail_after(10):
            while (await c.get(f"/v1/jobs/{job_id}")).json()["job"]["state"] != "success":  # noqa: ASYNC110 - polling the API
                await trio.sleep(0.05)
        records = (await c.get(f"/v1/jobs/{job_id}/records")).json()["records"]
        assert [r["value"] for r in records if r["stream"] == "output"] == ["original"]


async def streamed_upload(agent: Agent, size: int, *, chunked: bool) -> bytes:
    """An oversized upload; chunked (no Content-Length), the limit must hold while it streams in."""
    host, port = agent.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: {agent.headers()['Authorization']}\r\n"
        "Content-Type: application/octet-stream\r\n"
        + ("Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n")
    )
    chunk = b"%x\r\n%s\r\n" % (10_000, b"\0" * 10_000) if chunked else b"\0" * 10_000
    try:
        await stream.send_all(head.encode())
        with trio.move_on_after(5):
            for _ in range(size // 10_000):
                await stream.send_all(chunk)
        answer = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in answer:
                data = await stream.receive_some(65536)
                if not data:
                    break
                answer += data
    except trio.BrokenResourceError:
        answer = await stream.receive_some(65536)
    finally:
        await stream.aclose()
    return answer


async def test_submissions_are_rate_limited_per_token(agent_factory: Any) -> None:
    agent: Agent = agent_factory(config="[agent]\nsubmit_burst = 2\nsubmit_rate_per_minute = 1\n")
    bundles = [agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')]) for _ in range(3)]
    assert (await submit(agent, bundles[0], who="tenant_a")).status_code == 201
    assert (await submit(agent, bundles[1], who="tenant_a")).status_code == 201
    r = await submit(agent, bundles[2], who="tenant_a")
    is_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    # Another token has its own bucket.
    assert (await submit(agent, bundles[2], who="admin")).status_code == 201
