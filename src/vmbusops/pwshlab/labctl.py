"""``python -m vmbusops.pwshlab.labctl --state-dir DIR [--lab FILE]``: the lab's Hyper-V host, one request at a time.

The lab module's PowerShell functions (``VmbusOpsLab.psm1``) leave every decision about VMs to
this entry point, so that the ``pwsh-lab`` host and the simulator share one state directory, one
set of rules and one set of error texts: it uses the simulator's own lab file reader, its
:class:`~vmbusops.sim.state.HostStore` (the fcntl-locked ``state.json`` and the guests' ``C:``
folders) and the error records of :mod:`vmbusops.sim.pserrors`.

One request per process: a JSON object on stdin (``{"op": "get-vm", ...}``), one JSON object on
stdout (the ``dsc`` operation streams JSON lines instead: see :mod:`vmbusops.pwshlab.labdsc`)::

    {"objects": [...], "errors": [{"message", "fqid", "category", "exception_type",
     "target_name", "target_object", "activity"}], "warnings": ["..."], "guest": {...}}

A request it cannot read, or a lab it cannot load, gives ``{"fatal": "..."}`` and exit code 2.
Guest passwords arrive only in the stdin request (``open-guest``); nothing here prints them.
The imports are kept to what the answer needs: this runs once per lab cmdlet call.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from vmbusops.errors import VmbusOpsError
from vmbusops.pwshlab.labjson import error_json
from vmbusops.sim import pserrors
from vmbusops.sim.hostrules import (
    copy_target,
    resolve_vms,
    vm_facts,
    wildcard_match,
    write_copy,
)
from vmbusops.sim.lab import Lab, VMSpec, VMState, lab_password, load_lab
from vmbusops.sim.state import (
    INTEGRATION_SERVICES,
    HostStore,
    VMRuntime,
)
from vmbusops.sim.streams import SimError

EXIT_FATAL = 2
# A guest that hangs on restart never finishes booting (ten years is never, for a lab).
_HUNG_BOOT_SECONDS = 10 * 365 * 86400.0


class BadRequest(Exception):
    """The request is not one this entry point answers."""


class Answer:
    """What one request produces: objects, non-terminating errors, warnings, a guest to open."""

    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.guest: dict[str, Any] | None = None

    def error(self, error: SimError) -> None:
        self.errors.append(error_json(error))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"objects": self.objects, "errors": self.errors, "warnings": self.warnings}
        if self.guest is not None:
            body["guest"] = self.guest
        return body


def _names(request: dict[str, Any], key: str) -> list[str]:
    value = request.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


class LabHost:
    """The host-level rules, as the simulator's ``HyperVHost`` applies them, over a JSON answer."""

    def __init__(self, lab: Lab, store: HostStore, *, clock: Callable[[], float] = time.time) -> None:
        self.lab = lab
        self.store = store
        self.clock = clock

    def resolve(self, cmdlet: str, names: list[str], answer: Answer) -> list[VMSpec]:
        return resolve_vms(self.lab, cmdlet, names, answer.error)

    def vm_object(self, spec: VMSpec, rt: VMRuntime, now: float) -> dict[str, Any]:
        from vmbusops.sim.checkpoints import vm_checkpoint_facts

        return {**vm_facts(self.lab, spec, rt, now), **vm_checkpoint_facts(spec, rt)}

    # ---- cmdlets -------------------------------------------------------------------------

    def get_vm(self, request: dict[str, Any], answer: Answer) -> None:
        now = self.clock()
        snapshot = self.store.snapshot()
        ids = _names(request, "ids")
        if ids:
            specs = []
            for vm_id in ids:
                spec = self.lab.find_by_id(vm_id)
                if spec is None:
                    answer.error(pserrors.vm_id_not_found("Get-VM", vm_id))
                else:
                    specs.append(spec)
        else:
            specs = self.resolve("Get-VM", _names(request, "names"), answer)
        answer.objects.extend(self.vm_object(spec, snapshot[spec.name.casefold()], now) for spec in specs)

    def get_vm_group(self, request: dict[str, Any], answer: Answer) -> None:
        from vmbusops.sim.group_cmdlets import group_facts, select_groups

        group_id = request.get("id")
        groups = select_groups(self.lab, _names(request, "names"), str(group_id) if group_id else None, answer.error)
        answer.objects.extend(group_facts(self.lab, g) for g in groups)

    def get_integration(self, request: dict[str, Any], answer: Answer) -> None:
        now = self.clock()
        wanted = _names(request, "names")
        for spec in self.resolve("Get-VMIntegrationService", _names(request, "vm_names"), answer):
            rt = self.store.runtime(spec)
            for name, enabled in rt.integration:
                if wanted and not any(wildcard_match(name, w) for w in wanted):
                    continue
                primary = None if not enabled else "OK" if rt.booted(now) else "No Contact"
                answer.objects.append(
                    {
                        "VMName": spec.name,
                        "VMId": spec.id,
                        "Name": name,
                        "Enabled": enabled,
                        "PrimaryStatusDescription": primary,
                        "SecondaryStatusDescription": None,
                    }
                )

    def set_integration(self, request: dict[str, Any], answer: Answer) -> None:
        enabled = bool(request.get("enabled"))
        cmdlet = "Enable-VMIntegrationService" if enabled else "Disable-VMIntegrationService"
        services = _names(request, "names")
        for spec in self.resolve(cmdlet, _names(request, "vm_names"), answer):
            for service in services:
                known = [s for s in INTEGRATION_SERVICES if wildcard_match(s, service)]
                if not known:
                    answer.error(pserrors.integration_service_not_found(cmdlet, spec.name, service))
                    continue
                for name in known:
                    self.store.update(
                        spec, functools.partial(VMRuntime.with_integration, name=name, enabled=enabled)
                    )

    def copy(self, request: dict[str, Any], answer: Answer) -> None:
        source = Path(str(request["source"]))
        destination = str(request["destination"])
        for spec in self.resolve("Copy-VMFile", _names(request, "names"), answer):
            detail = self._copy_one(
                spec, source, destination, bool(request.get("create_full_path")), bool(request.get("force"))
            )
            if detail is not None:
                answer.error(pserrors.copy_failed(spec.name, detail))

    def _copy_one(self, spec: VMSpec, source: Path, destination: str, full_path: bool, force: bool) -> str | None:
        target = copy_target(self.store, spec, self.clock(), source, destination, full_path=full_path, force=force)
        if isinstance(target, str):
            return target
        write_copy(spec, source, target, destination)
        return None

    def start(self, request: dict[str, Any], answer: Answer) -> None:
        boot = self.lab.host.boot_seconds
        for spec in self.resolve("Start-VM", _names(request, "names"), answer):
            if self.store.runtime(spec).state is VMState.RUNNING:
                answer.warnings.append(f"The virtual machine '{spec.name}' is already in the specified state.")
                continue
            self.store.update(spec, functools.partial(VMRuntime.started, now=self.clock(), boot_seconds=boot))

    def stop(self, request: dict[str, Any], answer: Answer) -> None:
        for spec in self.resolve("Stop-VM", _names(request, "names"), answer):
            rt = self.store.runtime(spec)
            if rt.state is VMState.OFF:
                answer.warnings.append(f"The virtual machine '{spec.name}' is already in the specified state.")
                continue
            if request.get("save"):
                self.store.update(spec, _saved)
            else:
                self.store.update(spec, VMRuntime.stopped)

    def restart(self, request: dict[str, Any], answer: Answer) -> None:
        boot = self.lab.host.boot_seconds
        for spec in self.resolve("Restart-VM", _names(request, "names"), answer):
            if self.store.runtime(spec).state is not VMState.RUNNING:
                answer.error(pserrors.vm_state_change_failed("Restart-VM", spec.name))
                continue
            boot_for = _HUNG_BOOT_SECONDS if spec.faults.hang_on_restart else boot
            self.store.update(spec, functools.partial(VMRuntime.started, now=self.clock(), boot_seconds=boot_for))
            if request.get("wait"):
                # -Wait returns once the guest heartbeats again.
                time.sleep(boot)

    def open_guest(self, request: dict[str, Any], answer: Answer) -> None:
        """PowerShell Direct's checks before a session opens, in the simulator's order.

        The VM exists, it is running, a session opens (``session_open_ms``), the guest has
        booted, the session connects (the lab fault ``connect_fails``), the credential matches;
        then the VM's ``latency_ms`` passes and ``guest`` says where its ``C:`` drive is and who
        it is. The faults that break a session after N records are not modelled here.
        """
        if request.get("vm_id"):
            vm_id = str(request["vm_id"])
            spec = self.lab.find_by_id(vm_id)
            if spec is None:
                answer.error(pserrors.invoke_vm_id_not_found(vm_id))
                return
        else:
            name = str(request.get("vm_name", ""))
            spec = self.lab.find(name)
            if spec is None:
                answer.error(pserrors.invoke_vm_name_not_found(name))
                return
        rt = self.store.runtime(spec)
        if rt.state is not VMState.RUNNING:
            answer.error(pserrors.invoke_vm_not_running(spec.name))
            return
        if self.lab.host.session_open_ms:
            time.sleep(self.lab.host.session_open_ms / 1000)
            # The VM may have been stopped or restarted while the session opened.
            rt = self.store.runtime(spec)
        if not rt.booted(self.clock()):
            answer.error(pserrors.remote_session_ended(spec.name))
            return
        if spec.faults.connect_fails:
            answer.error(pserrors.session_connect_failed(spec.name))
            return
        user = str(request.get("user", ""))
        if not _credential_matches(self.lab, spec, user, str(request.get("password", ""))):
            answer.error(pserrors.credential_invalid(spec.name))
            return
        if spec.latency_ms:
            time.sleep(spec.latency_ms / 1000)
        answer.guest = {
            "name": spec.name,
            "id": spec.id,
            "root": str(self.store.guest_root(spec) / "C"),
            "computer_name": spec.guest_computer_name,
            "user": spec.username,
        }


def _lab_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """Facts as JSON: datetimes as ISO 8601 text (the module makes them [datetime] again)."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in facts.items()}


def _checkpoint(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    # Checkpoint-VM reports an unknown VM as ObjectNotFound (Get-VM: InvalidParameter).
    specs = resolve_vms(
        host.lab, "Checkpoint-VM", _names(request, "names"),
        lambda e: answer.error(pserrors.checkpoint_vm_not_found(e.target_name)),
    )
    name = request.get("snapshot_name")
    checkpoints.checkpoint_vm(
        host.store, host.lab, specs, None if name is None else str(name), host.clock(),
        passthru=bool(request.get("passthru")), output=lambda f: answer.objects.append(_lab_facts(f)),
        report=answer.error,
    )


def _get_snapshot(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    if request.get("id"):
        wanted = str(request["id"])
        for spec in host.lab.vms:
            rt = host.store.runtime(spec)
            for c in rt.checkpoints:
                if c.id == wanted:
                    answer.objects.append(_lab_facts(checkpoints.snapshot_facts(host.lab, spec, rt, c)))
                    return
        answer.error(pserrors.snapshot_not_found("Get-VMSnapshot", wanted))
        return
    name = request.get("name")
    kind = request.get("snapshot_type")
    checkpoints.get_snapshots(
        host.store, host.lab, host.resolve("Get-VMSnapshot", _names(request, "vm_names"), answer),
        None if name is None else str(name), None if kind is None else str(kind),
        output=lambda f: answer.objects.append(_lab_facts(f)), report=answer.error,
    )


def _restore_snapshot(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    for spec in host.resolve("Restore-VMSnapshot", _names(request, "vm_names"), answer):
        checkpoints.restore_snapshot(
            host.store, host.lab, spec, str(request["name"]), passthru=bool(request.get("passthru")),
            output=lambda f: answer.objects.append(_lab_facts(f)), report=answer.error,
        )


def _remove_snapshot(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    checkpoints.remove_snapshots(
        host.store, host.lab, host.resolve("Remove-VMSnapshot", _names(request, "vm_names"), answer),
        _names(request, "names") or None, children=bool(request.get("children")),
        passthru=False, output=answer.objects.append, report=answer.error,
    )


def _get_hard_disk(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    for spec in host.resolve("Get-VMHardDiskDrive", _names(request, "vm_names"), answer):
        answer.objects.append(
            {"VMName": spec.name, "VMId": spec.id, "Path": checkpoints.vhd_path(spec),
             "ComputerName": host.store.runtime(spec).host or host.lab.host.name}
        )


def _get_volume(host: LabHost, request: dict[str, Any], answer: Answer) -> None:
    from vmbusops.sim import checkpoints

    path = str(request.get("file_path") or "")
    facts = checkpoints.volume_facts(host.lab, host.store, path)
    if facts is None:
        answer.error(pserrors.volume_not_found(path))
    else:
        answer.objects.append(facts)


def _saved(rt: VMRuntime) -> VMRuntime:
    return replace(rt, state=VMState.SAVED, running_since=None, boot_until=0.0)


def _credential_matches(lab: Lab, spec: VMSpec, user: str, password: str) -> bool:
    # Guests accept "user", ".\\user" and "COMPUTER\\user" for a local account.
    domain, _, name = user.rpartition("\\")
    if domain not in ("", ".") and domain.casefold() not in (
        spec.guest_computer_name.casefold(),
        spec.name.casefold(),
    ):
        return False
    return name.casefold() == spec.username.casefold() and password == lab_password(lab, spec.name)


OPERATIONS: dict[str, Callable[[LabHost, dict[str, Any], Answer], None]] = {
    "get-vm": LabHost.get_vm,
    "get-vm-group": LabHost.get_vm_group,
    "get-integration": LabHost.get_integration,
    "set-integration": LabHost.set_integration,
    "copy": LabHost.copy,
    "start": LabHost.start,
    "stop": LabHost.stop,
    "restart": LabHost.restart,
    "open-guest": LabHost.open_guest,
    "checkpoint": _checkpoint,
    "get-snapshot": _get_snapshot,
    "restore-snapshot": _restore_snapshot,
    "remove-snapshot": _remove_snapshot,
    "get-hard-disk": _get_hard_disk,
    "get-volume": _get_volume,
}


def _stream_dsc(host: LabHost, request: dict[str, Any], out: IO[str]) -> None:
    # Imported here: the LCM's modules (trio, the guest's PowerShell subset) cost every other
    # operation start-up time it does not need.
    from vmbusops.pwshlab.labdsc import stream_dsc

    stream_dsc(host.lab, host.store, request, out, clock=host.clock)


#: Operations whose answer is a stream of JSON lines, written as they happen (see labdsc).
STREAMING_OPERATIONS: dict[str, Callable[[LabHost, dict[str, Any], IO[str]], None]] = {
    "dsc": _stream_dsc,
}


def answer_request(host: LabHost, request: dict[str, Any]) -> Answer:
    op = request.get("op")
    handler = OPERATIONS.get(str(op))
    if handler is None:
        raise BadRequest(f"unknown operation {op!r}")
    answer = Answer()
    try:
        handler(host, request, answer)
    except KeyError as exc:
        raise BadRequest(f"{op}: missing {exc.args[0]!r}") from None
    return answer


def _parse_argv(argv: list[str]) -> tuple[Path, str | None]:
    state_dir: Path | None = None
    lab: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--state-dir":
            state_dir = Path(next(it, ""))
        elif arg == "--lab":
            lab = next(it, "") or None
        else:
            raise BadRequest(f"unexpected argument {arg!r}")
    if state_dir is None or not str(state_dir):
        raise BadRequest("--state-dir is required")
    return state_dir, lab


def _read_request(data: bytes) -> dict[str, Any]:
    request = json.loads(data)
    if not isinstance(request, dict):
        raise BadRequest("the request must be a JSON object")
    return request


def main(argv: list[str] | None = None) -> int:
    out = sys.stdout
    try:
        state_dir, lab_path = _parse_argv(sys.argv[1:] if argv is None else argv)
        request = _read_request(sys.stdin.buffer.read())
        lab = load_lab(lab_path)
        host = LabHost(lab, HostStore(lab, state_dir))
        streaming = STREAMING_OPERATIONS.get(str(request.get("op")))
        if streaming is not None:
            try:
                streaming(host, request, out)
            except KeyError as exc:
                raise BadRequest(f"{request.get('op')}: missing {exc.args[0]!r}") from None
            return 0
        body = answer_request(host, request).to_json()
        code = 0
    except (BadRequest, VmbusOpsError, ValueError, OSError) as exc:
        # A stream ends with this line instead of its "end".
        body = {"fatal": str(exc)}
        code = EXIT_FATAL
    out.write(json.dumps(body))
    out.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
