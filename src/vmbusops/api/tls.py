"""TLS for the agent, and who the client certificate says the caller is.

Hypercorn terminates TLS but does not pass the client's certificate to the application. The
agent serves with :class:`PeerCertTCPServer`, which finishes the handshake itself (Hypercorn's
own handshake call then returns at once), reads the peer certificate and puts its DER bytes in a
context variable. Hypercorn starts the application's tasks from the connection's task, and trio
tasks inherit their parent's context, so :func:`peer_certificate` answers inside a request.
"""

from __future__ import annotations

import contextvars
import ssl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer

_PEER_CERT: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("vmbusops_peer_cert", default=None)


def peer_certificate() -> bytes | None:
    """The DER bytes of the verified client certificate of the current request, if any."""
    return _PEER_CERT.get()


class PeerCertTCPServer(TCPServer):
    async def run(self) -> None:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await stream.aclose()
                return
            der = stream.getpeercert(binary_form=True)
            _PEER_CERT.set(der or None)
        await super().run()


def configure_tls(config: HypercornConfig, *, cert: str, key: str, client_ca: str | None) -> None:
    config.certfile = cert
    config.keyfile = key
    if client_ca is not None:
        config.ca_certs = client_ca
        # Optional: a runbook may still use a bearer token; a certificate, if sent, must verify.
        config.verify_mode = ssl.CERT_OPTIONAL
