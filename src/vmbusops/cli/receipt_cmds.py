"""``vmbusops receipt``: the host's signed execution receipts (:mod:`vmbusops.receipts`).

The provider's side: ``host-key`` (the public key to publish), ``show``, ``export`` and
``transcript`` (from the local journal, or from an agent's API with ``--agent``). The tenant's
side: ``verify``, which needs nothing but the receipt, the published host key and, optionally, the
run's transcript. A receipt that does not verify exits 4, as a rejected bundle does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from vmbusops.cli import exitcodes
from vmbusops.cli.remote import AgentClient, agent_read_option, problem, resolve_agent, run_client
from vmbusops.errors import ConfigError, TransportError

JOB_ID = click.IntRange(1, 2**63 - 1)


@click.group("receipt", epilog=exitcodes.EXIT_CODES_HELP)
def receipt() -> None:
    """Signed execution receipts: what the host did in each VM, signed with the host's own key."""


@receipt.command("host-key")
def host_key_cmd() -> None:
    """Print the host's receipt-signing public key (PEM, as `vmbusops keys new` writes NAME.pub) for
    tenants to verify receipts with; its key id goes to stderr. The key is made on first use."""
    from vmbusops.receipts import host_key

    key = host_key().public_key()
    click.echo(key.to_pem().decode("ascii"), nl=False)
    click.echo(f"host key id: {key.keyid}", err=True)


def _journal() -> Any:
    from vmbusops.engine.journal import Journal, journal_path

    if not journal_path().exists():
        raise ConfigError("there is no journal here yet: no job has run", hint="list jobs with: vmbusops jobs")
    return Journal()


def _local_receipts(job_id: int, vm: str | None) -> list[bytes]:
    from vmbusops.receipts import receipts_of

    journal = _journal()
    try:
        return receipts_of(journal, job_id, vm)
    finally:
        journal.close()


def _fetch(agent: AgentClient, path: str) -> bytes:
    import httpx

    async def main() -> int:
        async with agent.client() as client:
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                raise TransportError(f"cannot reach the agent at {agent.url}: {exc}") from exc
        if response.status_code != 200:
            raise problem(response)
        got.append(response.content)
        return exitcodes.OK

    got: list[bytes] = []
    run_client(main)
    return got[0]


@receipt.command("show")
@click.argument("job_id", type=JOB_ID)
@click.option("--vm", default=None, metavar="NAME", help="Only this VM's run (default: every finished run).")
@click.option("--json", "as_json", is_flag=True, help="Each receipt's signed payload as one JSON line.")
@click.option(
    "--host-key", "host_key_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
    help="Check against this published host key (default: this host's own; needed with --agent).",
)  # fmt: skip
@agent_read_option("the local journal")
def show_cmd(
    job_id: int, vm: str | None, as_json: bool, host_key_file: Path | None, agent_url: str | None,
    token_file: Path | None,
) -> None:  # fmt: skip
    """The job's receipts, each checked against the host's key, decoded. Locally, a finished run
    whose receipt is missing (the process stopped before writing it) gets it now."""
    from vmbusops.bundle.keys import load_public_key
    from vmbusops.receipts import host_key, verify_receipt

    if agent_url is not None and host_key_file is None:
        raise ConfigError(
            "--agent needs --host-key: a receipt from an agent is checked against the key its provider published",
            hint="the provider prints it with: vmbusops receipt host-key",
        )
    public = load_public_key(host_key_file) if host_key_file is not None else host_key().public_key()
    if agent_url is not None:
        found = _remote_receipts(resolve_agent(agent_url, token_file), job_id, vm)
    else:
        found = _local_receipts(job_id, vm)
    if not found:
        raise ConfigError(f"job {job_id} has no finished run yet", hint=f"see it with: vmbusops jobs show {job_id}")
    for data in found:
        payload = verify_receipt(data, public).payload
        if as_json:
            click.echo(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
        else:
            _print_receipt(payload)


def _remote_receipts(agent: AgentClient, job_id: int, vm: str | None) -> list[bytes]:
    """The receipts of the job's finished runs (or one VM's), from the agent's API."""
    from vmbusops.engine.states import State

    if vm is not None:
        return [_fetch(agent, f"/v1/jobs/{job_id}/runs/{quote(vm, safe='')}/receipt")]
    runs = json.loads(_fetch(agent, f"/v1/jobs/{job_id}/runs"))["runs"]
    return [
        _fetch(agent, f"/v1/jobs/{job_id}/runs/{quote(r['vm'], safe='')}/receipt") for r in runs if State(r["state"]).terminal
    ]


def _print_receipt(p: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from vmbusops.cli.output import console

    out = console(highlight=False)
    bundle = p["bundle"]
    digest = (bundle.get("digest") or {}).get("sha256") or "(no envelope kept)"
    rows = [
        ("receipt", f"job {p['job']}, run {p['run']}, verified with host key {p['host']['key_id'][:16]}"),
        ("vm", f"{p['vm']['name']} ({p['vm']['id'] or 'id not known'})"),
        ("outcome", p["outcome"] + (f" ({p['code']})" if p["code"] else "")),
        ("started / finished", f"{p['started_at'] or '-'} / {p['finished_at'] or '-'}"),
        ("bundle", f"{bundle['name']} v{bundle['version']} ({bundle['id']})"),
        ("bundle sha256", digest),
        ("signers", ", ".join(k[:16] for k in bundle["signers"]) or "-"),
        ("transcript", f"{p['transcript']['records']} records, sha256 {p['transcript']['sha256']}"),
        ("host", f"{p['host']['name']} on {p['host'].get('machine') or '?'}, issued {p['issued_at']}"),
    ]
    for name, value in rows:
        out.print(f"{name:<19} {escape(str(value))}")
    table = Table("step", "kind", "result", "exit", "started", "finished", box=None)
    for s in p["steps"]:
        table.add_row(
            escape(s["name"]), s["kind"], s["result"], "-" if s["exit_code"] is None else str(s["exit_code"]),
            s["started_at"] or "-", s["finished_at"] or "-",
        )  # fmt: skip
    out.print(table)
    for c in p.get("checkpoints") or ():
        done = ", ".join(f"{what} {c[what + '_at']}" for what in ("taken", "restored", "removed") if c.get(what + "_at"))
        out.print(f"{'checkpoint':<19} {escape(str(c['name']))}: {c['type'] or '-'}, {c['outcome'] or c['phase']}; {done}")
    out.print()


@receipt.command("export")
@click.argument("job_id", type=JOB_ID)
@click.option("--vm", required=True, metavar="NAME", help="The VM whose run's receipt to write.")
@agent_read_option("the local journal")
def export_cmd(job_id: int, vm: str, agent_url: str | None, token_file: Path | None) -> None:
    """Write the run's signed receipt (its DSSE envelope, JSON) to stdout, for the tenant."""
    if agent_url is not None:
        data = _fetch(resolve_agent(agent_url, token_file), f"/v1/jobs/{job_id}/runs/{quote(vm, safe='')}/receipt")
    else:
        data = _local_receipts(job_id, vm)[0]
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@receipt.command("transcript")
@click.argument("job_id", type=JOB_ID)
@click.option("--vm", required=True, metavar="NAME", help="The VM whose run's transcript to write.")
@agent_read_option("the local journal")
def transcript_cmd(job_id: int, vm: str, agent_url: str | None, token_file: Path | None) -> None:
    """Write the run's transcript to stdout: its records in order, each the JSON line `vmbusops logs
    --json` prints, the bytes whose SHA-256 its receipt signs."""
    out = sys.stdout.buffer
    if agent_url is not None:
        out.write(_fetch(resolve_agent(agent_url, token_file), f"/v1/jobs/{job_id}/runs/{quote(vm, safe='')}/transcript"))
        out.flush()
        return
    from vmbusops.receipts import find_run, transcript_of

    journal = _journal()
    try:
        [run] = find_run(journal, job_id, vm)
        for chunk in transcript_of(journal, run):
            out.write(chunk)
        out.flush()
    finally:
        journal.close()


@receipt.command("verify", epilog=exitcodes.EXIT_CODES_HELP)
@click.argument("receipt_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--host-key", "host_key_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The host's published public key (PEM, from `vmbusops receipt host-key`).",
)  # fmt: skip
@click.option(
    "--transcript", "transcript_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
    help="The run's transcript (`vmbusops receipt transcript`): its digest is checked too.",
)  # fmt: skip
def verify_cmd(receipt_file: Path, host_key_file: Path, transcript_file: Path | None) -> None:
    """Check a receipt's signature against the host's published key and, given the run's
    transcript, its digest. Prints one line of what was checked; a receipt that fails exits 4."""
    from vmbusops.bundle.keys import load_public_key
    from vmbusops.receipts import load_receipt_file, verify_receipt

    key = load_public_key(host_key_file)
    data = load_receipt_file(receipt_file)
    transcript = None
    if transcript_file is not None:
        try:
            transcript = transcript_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {transcript_file}: {exc.strerror}") from None
    got = verify_receipt(data, key, transcript)
    p = got.payload
    vm = p.get("vm", {}).get("name")
    said = (
        f"receipt verified: job {p.get('job')} on {vm} ({p.get('outcome')}), signed by host key {got.keyid[:16]}"
    )
    if got.transcript_records is not None:
        said += f"; transcript matches ({got.transcript_records} records)"
    else:
        said += "; transcript not checked"
    click.echo(said)


__all__ = ["receipt"]
