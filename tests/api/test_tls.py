"""TLS, and TLS client certificates as credentials (registered by fingerprint, with a scope)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.api.conftest import Agent
from tests.builders import script

from vmbusops.api.auth import Operation, PrincipalStore


def issue(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def write(
    directory: Path, name: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pair[1].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


async def test_tls_with_client_certificates(agent_factory: Any, tmp_path: Path) -> None:
    ca = issue("vmbusops test CA", None, ca=True)
    server_cert, server_key = write(tmp_path, "server", issue("agent", ca, server=True))
    ca_pem, _ = write(tmp_path, "ca", ca)
    tenant_a = issue("runbook-a", ca)
    stranger = issue("stranger", ca)
    a_cert, a_key = write(tmp_path, "a", tenant_a)
    s_cert, s_key = write(tmp_path, "s", stranger)
    with PrincipalStore() as store:
        fingerprint = hashlib.sha256(tenant_a[0].public_bytes(serialization.Encoding.DER)).hexdigest()
        store.allow_certificate(name="runbook-a", fingerprint=fingerprint, operations=frozenset({Operation.READ}),
                                vms=["a-*"], expires_at=None)  # fmt: skip
    agent: Agent = agent_factory(
        config=f'[agent]\ntls_cert = "{server_cert}"\ntls_key = "{server_key}"\nclient_ca = "{ca_pem}"\n'
    )
    assert agent.url.startswith("https://127.0.0.1:")

    def client(cert: Path | None = None, key: Path | None = None, **kw: Any) -> httpx.AsyncClient:
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return httpx.AsyncClient(base_url=agent.url, verify=ctx, **kw)

    async with client(a_cert, a_key) as c:
        r = await c.get("/v1/jobs")
        assert r.status_code == 200, r.text
        assert (await c.post("/v1/jobs/1/cancel")).status_code == 403  # read-only scope
        # The web console needs no sign-in with a certificate: it is who the browser is.
        me = (await c.get("/console/session")).json()
        assert (me["via"], me["name"], me["csrf"]) == ("certificate", "runbook-a", None)
    async with client(s_cert, s_key) as c:
        r = await c.get("/v1/jobs")
        assert r.status_code == 401 and "not registered" in r.json()["detail"]
    async with client() as c:
        assert (await c.get("/v1/jobs")).status_code == 401
        assert (await c.get("/v1/jobs", headers=agent.headers("admin"))).status_code == 200
        # Over TLS, the console's session cookie is Secure as well.
        r = await c.post("/console/session", json={"token": agent.tokens["reader"]})
        assert r.status_code == 200 and "; Secure" in r.headers["set-cookie"]
    refused = [line for line in agent.log_lines() if line.get("event") == "refused"]
    assert any(line["who"].startswith("cert:sha256=") for line in refused)

    # A follower let in by its certificate is asked again while it follows (a revoked principal's
    # stream ends), in its own request's context: a job longer than the recheck is followed whole.
    steps = [script("tick", 'foreach ($i in 1..12) { "line $i"; Start-Sleep -Milliseconds 250 }')]
    async with client(headers=agent.headers("admin"), timeout=60) as c:
        r = await c.post("/v1/jobs", content=agent.bundle(["a-web01"], steps).read_bytes(),
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]
    lines: list[str] = []
    async with client(a_cert, a_key, timeout=60) as c, c.stream("GET", f"/v1/jobs/{job_id}/events") as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            lines.append(line)  # to the response's end, which comes after the job's
    assert sum('"stream":"output"' in line for line in lines) == 12
    assert any(line.startswith("event: end") for line in lines)
