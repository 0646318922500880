"""A WS-Management endpoint on loopback whose PowerShell plugin is the simulator.

What the WinRM service does on a Hyper-V host, in miniature: HTTP with SPNEGO/NTLM
authentication (pyspnego as the acceptor, users from a file), WinRM message encryption
(``multipart/encrypted``, ``application/HTTP-SPNEGO-session-encrypted``) when the client is on
plain HTTP, and the WinRS shell operations - Create, Command, Send, Receive, Signal, Delete -
carrying PSRP fragments. Behind each shell runs ``python -m vmbusops.sim`` and the fragments go to
it over OutOfProc framing, as wsmprovhost hands them to PowerShell. Only the HTTP and SOAP
surface is written here; PSRP is the simulator's real server and NTLM is pyspnego's.

It records, per request, whether the body arrived encrypted, so a test can check that nothing
crossed the wire in clear.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import spnego
from pypsrp.encryption import WinRMEncryption

from vmbusops.psrp.framing import POOL_GUID, DataStream, Packet, PacketKind, PacketReader, encode

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmanfault": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "pwsh": "http://schemas.microsoft.com/powershell",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

TIMED_OUT = 2150858793
PIPELINE_STATE = 0x00041006
_FINAL_STATES = (3, 4, 5)  # Stopped, Completed, Failed
_BOUNDARY = "Encrypted Boundary"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


@dataclass
class _Command:
    guid: uuid.UUID
    data: queue.Queue[bytes] = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)


class _Shell:
    """One WinRS shell: a simulator process spoken to in OutOfProc framing."""

    def __init__(self, argv: list[str]) -> None:
        self.id = str(uuid.uuid4()).upper()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pool = _Command(POOL_GUID)
        self.commands: dict[uuid.UUID, _Command] = {}
        self._acks: dict[tuple[PacketKind, uuid.UUID], threading.Event] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        reader = PacketReader()
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(65536):
            reader.feed(chunk)
            while (packet := reader.next_packet()) is not None:
                if packet.kind is PacketKind.DATA:
                    target = self.pool if packet.guid == POOL_GUID else self.commands.get(packet.guid)
                    if target is not None:
                        target.data.put(packet.data)
                        if target is not self.pool and _has_final_state(packet.data):
                            target.done.set()
                else:
                    with self._lock:
                        event = self._acks.pop((packet.kind, packet.guid), None)
                    if event is not None:
                        event.set()
        self.pool.done.set()
        for command in self.commands.values():
            command.done.set()

    def exchange(self, packet: Packet, timeout: float = 30) -> None:
        """Write one packet and wait for its ack, as wsmprovhost does."""
        event = threading.Event()
        with self._lock:
            self._acks[(packet.kind.ack, packet.guid)] = event
        with self._write_lock:
            assert self.process.stdin is not None
            self.process.stdin.write(encode(packet))
            self.process.stdin.flush()
        if not event.wait(timeout):
            raise TimeoutError(f"no {packet.kind.ack.value} from the simulator")

    def close(self) -> None:
        try:
            self.exchange(Packet(kind=PacketKind.CLOSE, guid=POOL_GUID), timeout=10)
        except (TimeoutError, OSError):
            pass
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._reader.join(5)


def _has_final_state(fragments: bytes) -> bool:
    """Whether these PSRP fragments hold a PipelineState message with a final state."""
    offset = 0
    while offset + 21 <= len(fragments):
        length = struct.unpack(">I", fragments[offset + 17 : offset + 21])[0]
        blob = fragments[offset + 21 : offset + 21 + length]
        start = fragments[offset + 16] & 0x1
        if start and len(blob) >= 40 and struct.unpack("<I", blob[4:8])[0] == PIPELINE_STATE:
            match = re.search(rb'<I32 N="PipelineState">(\d+)</I32>', blob[40:])
            if match and int(match.group(1)) in _FINAL_STATES:
                return True
        offset += 21 + length
    return False


class WSManDouble:
    """Start with :meth:`start`; ``url`` is where clients connect; stop with :meth:`stop`."""

    def __init__(self, directory: Path, *, users: dict[str, str], lab: Path, require_encryption: bool = True) -> None:
        self.directory = directory
        self.lab = lab
        self.require_encryption = require_encryption
        self.shells: dict[str, _Shell] = {}
        self.requests: list[tuple[str, bool]] = []  # (action, arrived encrypted)
        self.raw: bytearray = bytearray()
        self.failed_logins = 0
        user_file = directory / "ntlm-users"
        user_file.write_text("".join(f"{u.split(chr(92))[0] if chr(92) in u else ''}:{u.split(chr(92))[-1]}:{p}\n" for u, p in users.items()))
        os.environ["NTLM_USER_FILE"] = str(user_file)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> WSManDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for shell in list(self.shells.values()):
            shell.close()
        self.shells.clear()

    def sim_argv(self) -> list[str]:
        return [sys.executable, "-m", "vmbusops.sim", "--lab", str(self.lab), "--state-dir", str(self.directory / "state")]

    # ---------------------------------------------------------------- SOAP
    def handle_soap(self, body: bytes) -> tuple[int, bytes]:
        envelope = ET.fromstring(body)
        header = envelope.find("s:Header", NS)
        assert header is not None
        action = (header.findtext("wsa:Action", "", NS) or "").strip()
        message_id = (header.findtext("wsa:MessageID", "", NS) or "").strip()
        timeout_text = header.findtext("wsman:OperationTimeout", "PT20S", NS) or "PT20S"
        timeout = float(re.sub(r"[^0-9.]", "", timeout_text) or 20)
        shell_id = ""
        for selector in header.iterfind("wsman:SelectorSet/wsman:Selector", NS):
            if selector.attrib.get("Name") == "ShellId":
                shell_id = selector.text or ""
        request = envelope.find("s:Body", NS)
        assert request is not None
        verb = action.rsplit("/", 1)[-1]
        try:
            status, reply = getattr(self, f"_op_{verb.lower()}")(request, shell_id, timeout)
        except _Fault as fault:
            return 500, self._fault(message_id, fault)
        return status, self._envelope(action + "Response", message_id, reply)

    def _shell(self, shell_id: str) -> _Shell:
        shell = self.shells.get(shell_id)
        if shell is None:
            raise _Fault(2150858843, "The request for the Windows Remote Shell with ShellId "
                         f"{shell_id} failed because the shell was not found on the server.")
        return shell

    def _op_create(self, body: ET.Element, _: str, __: float) -> tuple[int, ET.Element | None]:
        creation = body.find("rsp:Shell/pwsh:creationXml", NS)
        assert creation is not None and creation.text
        shell = _Shell(self.sim_argv())
        self.shells[shell.id] = shell
        shell.exchange(Packet(kind=PacketKind.DATA, guid=POOL_GUID, data=base64.b64decode(creation.text)))
        created = ET.Element(_q("wst", "ResourceCreated"))
        ET.SubElement(created, _q("wsa", "Address")).text = f"http://127.0.0.1:{self.port}/wsman"
        params = ET.SubElement(created, _q("wsa", "ReferenceParameters"))
        ET.SubElement(params, _q("wsman", "ResourceURI")).text = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
        selectors = ET.SubElement(params, _q("wsman", "SelectorSet"))
        ET.SubElement(selectors, _q("wsman", "Selector"), Name="ShellId").text = shell.id
        holder = ET.Element("holder")
        holder.append(created)
        shell_xml = ET.SubElement(holder, _q("rsp", "Shell"))
        ET.SubElement(shell_xml, _q("rsp", "ShellId")).text = shell.id
        ET.SubElement(shell_xml, _q("rsp", "OutputStreams")).text = "stdout"
        return 200, holder

    def _op_command(self, body: ET.Element, shell_id: str, _: float) -> tuple[int, ET.Element | None]:
        shell = self._shell(shell_id)
        line = body.find("rsp:CommandLine", NS)
        assert line is not None
        guid = uuid.UUID(line.attrib["CommandId"])
        command = _Command(guid)
        shell.commands[guid] = command
        shell.exchange(Packet(kind=PacketKind.COMMAND, guid=guid))
        shell.exchange(Packet(kind=PacketKind.DATA, guid=guid, data=base64.b64decode(line.findtext("rsp:Arguments", "", NS))))
        reply = ET.Element(_q("rsp", "CommandResponse"))
        ET.SubElement(reply, _q("rsp", "CommandId")).text = str(guid).upper()
        return 200, reply

    def _op_send(self, body: ET.Element, shell_id: str, _: float) -> tuple[int, ET.Element | None]:
        shell = self._shell(shell_id)
        stream = body.find("rsp:Send/rsp:Stream", NS)
        assert stream is not None
        guid = uuid.UUID(stream.attrib["CommandId"]) if "CommandId" in stream.attrib else POOL_GUID
        kind = DataStream.PROMPT_RESPONSE if stream.attrib.get("Name") == "pr" else DataStream.DEFAULT
        shell.exchange(Packet(kind=PacketKind.DATA, guid=guid, data=base64.b64decode(stream.text or ""), stream=kind))
        return 200, ET.Element(_q("rsp", "SendResponse"))

    def _op_receive(self, body: ET.Element, shell_id: str, timeout: float) -> tuple[int, ET.Element | None]:
        shell = self._shell(shell_id)
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        assert desired is not None
        target = shell.pool
        if "CommandId" in desired.attrib:
            target = shell.commands[uuid.UUID(desired.attrib["CommandId"])]
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not chunks:
            try:
                chunks.append(target.data.get(timeout=max(0.0, min(0.25, deadline - time.monotonic()))))
            except queue.Empty:
                if target.done.is_set() and target.data.empty():
                    break
                if time.monotonic() >= deadline:
                    raise _Fault(TIMED_OUT, "The WS-Management service cannot complete the operation within "
                                 "the time specified in OperationTimeout.") from None
        while True:
            try:
                chunks.append(target.data.get_nowait())
            except queue.Empty:
                break
        reply = ET.Element(_q("rsp", "ReceiveResponse"))
        attrs = {"Name": "stdout"}
        if target is not shell.pool:
            attrs["CommandId"] = str(target.guid).upper()
        ET.SubElement(reply, _q("rsp", "Stream"), attrs).text = base64.b64encode(b"".join(chunks)).decode()
        if target is not shell.pool:
            done = target.done.is_set() and target.data.empty()
            state = "Done" if done else "Running"
            ET.SubElement(reply, _q("rsp", "CommandState"), CommandId=str(target.guid).upper(),
                          State=f"http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/{state}")
        return 200, reply

    def _op_signal(self, body: ET.Element, shell_id: str, _: float) -> tuple[int, ET.Element | None]:
        shell = self._shell(shell_id)
        signal = body.find("rsp:Signal", NS)
        assert signal is not None
        guid = uuid.UUID(signal.attrib["CommandId"])
        code = signal.findtext("rsp:Code", "", NS) or ""
        command = shell.commands.get(guid)
        if code == "powershell/signal/ctrl_c":
            shell.exchange(Packet(kind=PacketKind.SIGNAL, guid=guid))
        elif code.endswith("/Terminate"):
            shell.exchange(Packet(kind=PacketKind.CLOSE, guid=guid))
            if command is not None:
                command.done.set()
                shell.commands.pop(guid, None)
        return 200, ET.Element(_q("rsp", "SignalResponse"))

    def _op_delete(self, _: ET.Element, shell_id: str, __: float) -> tuple[int, ET.Element | None]:
        shell = self.shells.pop(shell_id, None)
        if shell is not None:
            shell.close()
        return 200, None

    def _envelope(self, action: str, relates_to: str, body: ET.Element | None) -> bytes:
        envelope = ET.Element(_q("s", "Envelope"))
        header = ET.SubElement(envelope, _q("s", "Header"))
        ET.SubElement(header, _q("wsa", "Action")).text = action
        ET.SubElement(header, _q("wsa", "MessageID")).text = f"uuid:{uuid.uuid4()}"
        ET.SubElement(header, _q("wsa", "RelatesTo")).text = relates_to
        soap_body = ET.SubElement(envelope, _q("s", "Body"))
        if body is not None:
            if body.tag == "holder":
                for child in body:
                    soap_body.append(child)
            else:
                soap_body.append(body)
        return ET.tostring(envelope, encoding="utf-8")

    def _fault(self, relates_to: str, fault: _Fault) -> bytes:
        envelope = ET.Element(_q("s", "Envelope"))
        header = ET.SubElement(envelope, _q("s", "Header"))
        ET.SubElement(header, _q("wsa", "Action")).text = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
        ET.SubElement(header, _q("wsa", "RelatesTo")).text = relates_to
        body = ET.SubElement(envelope, _q("s", "Body"))
        soap_fault = ET.SubElement(body, _q("s", "Fault"))
        reason = ET.SubElement(soap_fault, _q("s", "Reason"))
        ET.SubElement(reason, _q("s", "Text")).text = fault.message
        detail = ET.SubElement(soap_fault, _q("s", "Detail"))
        wsman_fault = ET.SubElement(detail, _q("wsmanfault", "WSManFault"), Code=str(fault.code), Machine="127.0.0.1")
        ET.SubElement(wsman_fault, _q("wsmanfault", "Message")).text = fault.message
        return ET.tostring(envelope, encoding="utf-8")

    # ---------------------------------------------------------------- HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            context: Any = None

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                double.raw += body
                auth = self.headers.get("Authorization", "")
                out_header: dict[str, str] = {}
                if self.context is None or not self.context.complete:
                    if not auth.startswith("Negotiate "):
                        self._reply(401, headers={"WWW-Authenticate": "Negotiate"})
                        return
                    if self.context is None:
                        self.context = spnego.server(protocol="negotiate")
                    try:
                        token = self.context.step(base64.b64decode(auth.split(" ", 1)[1]))
                    except spnego.exceptions.SpnegoError:
                        double.failed_logins += 1
                        self.context = None
                        self._reply(401, headers={"WWW-Authenticate": "Negotiate", "Connection": "close"})
                        self.close_connection = True
                        return
                    if token:
                        out_header["WWW-Authenticate"] = "Negotiate " + base64.b64encode(token).decode()
                    if not self.context.complete:
                        self._reply(401, headers=out_header)
                        return
                if not body:
                    self._reply(200, headers=out_header)
                    return
                content_type = self.headers.get("Content-Type", "")
                encrypted = content_type.startswith("multipart/encrypted")
                crypt = WinRMEncryption(self.context, WinRMEncryption.SPNEGO)
                if encrypted:
                    body = crypt.unwrap_message(body, _BOUNDARY)
                elif double.require_encryption:
                    double.requests.append(("unencrypted", False))
                    self._reply(400, headers=out_header)
                    return
                status, reply = double.handle_soap(body)
                double.requests.append((ET.fromstring(body).findtext("s:Header/wsa:Action", "", NS) or "", encrypted))
                if encrypted:
                    kind, wrapped = crypt.wrap_message(reply)
                    out_header["Content-Type"] = (
                        f'{kind};protocol="{WinRMEncryption.SPNEGO}";boundary="{_BOUNDARY}"'
                    )
                    self._reply(status, wrapped, out_header)
                else:
                    out_header["Content-Type"] = "application/soap+xml;charset=UTF-8"
                    self._reply(status, reply, out_header)

        return Handler


class _Fault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
