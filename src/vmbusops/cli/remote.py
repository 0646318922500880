"""Clients of a remote agent: ``vmbusops submit`` and ``vmbusops logs ID --agent URL``.

They print exactly what the local commands print (``run`` in its non-terminal form, ``logs``),
from the agent's API. The token comes from ``$VMBUSOPS_TOKEN`` or ``--token-file``, never from
an argument (arguments are visible to every user of the machine). A follower that loses the
connection reconnects with ``Last-Event-ID`` and continues exactly where it was.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import httpx
import trio

from vmbusops.cli import exitcodes
from vmbusops.cli.common import require_run, run_trio
from vmbusops.cli.output import console, terminal_safe
from vmbusops.cli.record_lines import print_records, record_text
from vmbusops.engine.journal import RecordView
from vmbusops.errors import BundleError, ConfigError, TransportError, VmbusOpsError
from vmbusops.times import iso_time, seconds_of
from vmbusops.urls import has_userinfo, shown_url

ENV_AGENT = "VMBUSOPS_AGENT"
ENV_TOKEN = "VMBUSOPS_TOKEN"  # noqa: S105 - the name of the variable, not a token
DEFAULT_AGENT = "http://127.0.0.1:8421"
RECONNECTS = 30


def _pause(failures: int) -> float:
    """How long a follower waits after its ``failures``-th failed try in a row."""
    return min(5.0, 0.2 * failures)


#: How long, in all, a follower waits between those tries: what it says it will keep trying for.
RECONNECT_SECONDS = sum(_pause(n) for n in range(1, RECONNECTS + 1))


def agent_option(fn: Any) -> Any:
    """``--agent URL`` and ``--token-file`` for a command that only talks to an agent (submit)."""
    return _agent_options(fn, f"The agent's URL (default: ${ENV_AGENT} or {DEFAULT_AGENT}).")


def agent_read_option(instead_of: str) -> Callable[[Any], Any]:
    """``--agent URL`` and ``--token-file`` for a command that reads ``instead_of`` without one."""
    return lambda fn: _agent_options(fn, f"Ask the agent at this URL instead of {instead_of}.")


def _agent_options(fn: Any, agent_help: str) -> Any:
    fn = click.option(
        "--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help=f"File holding the agent's API token (default: ${ENV_TOKEN}).",
    )(fn)  # fmt: skip
    return click.option("--agent", "agent_url", default=None, metavar="URL", help=agent_help)(fn)


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(ENV_TOKEN, "").strip()
    if not token:
        raise ConfigError(
            "no API token",
            hint=f"set ${ENV_TOKEN} or pass --token-file (create one with: vmbusops agent token create)",
        )
    return token


@dataclass
class AgentClient:
    url: str
    token: str

    def client(self, timeout: float | None = 60.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.token}", "User-Agent": "vmbusops-cli"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )


def _one_line(text: object) -> str:
    """A server's text as one line of a message: it is the agent's, or whatever answered at its
    URL, so its control characters are shown as escapes and its line breaks as spaces."""
    return terminal_safe(str(text)).replace("\n", " ")[:500]


def problem(response: httpx.Response) -> VmbusOpsError:
    """The error an answer that is not a success says: the agent's problem document, or, for an
    answer that is not one (another server at the URL), that the URL is not an agent's."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        pass
    if not isinstance(body, dict) or not ("detail" in body or "title" in body):
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return TransportError(
            f"the server at {_shown(str(response.request.url))} answered HTTP {response.status_code}"
            f" ({_one_line(kind)}), not as a vmbusops agent answers",
            hint=f"check --agent or ${ENV_AGENT}: the URL of a vmbusops agent, such as {DEFAULT_AGENT}",
        )
    detail = _one_line(body.get("detail") or body.get("title") or response.reason_phrase)
    hint = _one_line(body["hint"]) if body.get("hint") else None
    status = response.status_code
    if status == 422 and str(body.get("type", "")).endswith("bundle-rejected"):
        return BundleError(f"the agent rejected the bundle: {detail}", hint=hint)
    if status in (401, 403):
        return ConfigError(
            f"the agent refused: {detail}",
            hint=f"check the token (--token-file, else ${ENV_TOKEN}) and its scope",
        )
    if status == 404:
        return ConfigError(f"the agent says: {detail}")
    if status >= 500:
        return TransportError(f"the agent failed ({status}): {detail}")
    return ConfigError(f"the agent refused ({status}): {detail}", hint=hint)


def _transport(exc: httpx.HTTPError, url: str) -> TransportError:
    why = _one_line(exc) or type(exc).__name__
    hint = None
    if url.startswith("https://") and isinstance(exc, httpx.ConnectError):
        hint = "if the agent serves plain HTTP (started without --tls-cert), use http://"
    return TransportError(f"cannot reach the agent at {_shown(url)}: {why}", hint=hint)


def _shown(url: str) -> str:
    return _one_line(shown_url(url))[:200]


#: For the other clients of an agent (:mod:`.jobs_view`): an answer's refusal, and no answer.
problem_of = problem
transport_error = _transport


def _agent_of(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised outside a request
        return "its URL"
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


async def follow_events(
    agent: AgentClient, job_id: int, on_event: Callable[[str, dict[str, Any]], None]
) -> dict[str, Any]:
    """Follow a job's events to its end, reconnecting after a lost connection; returns ``end``'s data."""
    last_id: str | None = None
    failures = 0
    async with agent.client(timeout=None) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id is not None else {}
            try:
                async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise problem(response)
                    if failures:
                        click.echo(f"vmbusops: connected to the agent at {agent.url} again; going on where it stopped",
                                   err=True)  # fmt: skip
                    async for name, data, ident in _sse(response.aiter_lines()):
                        failures = 0
                        if ident is not None:
                            last_id = ident
                        if name == "end":
                            return data
                        on_event(name, data)
            except httpx.HTTPError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise _transport(exc, agent.url) from exc
                if failures == 1:  # said once per outage, not once per try
                    click.echo(f"vmbusops: lost the connection to the agent at {agent.url}; trying again for up to "
                               f"{RECONNECT_SECONDS:g} s", err=True)  # fmt: skip
                await trio.sleep(_pause(failures))


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any], str | None]]:
    name, data, ident = "message", "", None
    async for line in lines:
        if not line:
            if data:
                yield name, json.loads(data), ident
            name, data, ident = "message", "", None
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line.startswith("id: "):
            ident = line[4:]


#: What an interrupted client of an agent says: it stopped itself, not what the agent runs.
CLIENT_INTERRUPTED = "interrupted; nothing was stopped at the agent, its jobs go on"


def run_client(fn: Callable[[], Awaitable[int]], *, saying: str = CLIENT_INTERRUPTED) -> int:
    """:func:`run_trio`, with our errors raised as themselves (not inside an exception group), so
    the command line maps them to their exit codes. An agent that cannot be reached (refused,
    reset, timed out) is a :class:`TransportError` naming its URL, whichever request met it.
    Interrupted, it says ``saying``."""
    failed: list[VmbusOpsError] = []

    async def main() -> int:
        try:
            return await fn()
        except VmbusOpsError as exc:
            failed.append(exc)
        except httpx.HTTPError as exc:
            failed.append(_transport(exc, _agent_of(exc)))
        return exitcodes.HOST_FAILURE

    code = run_trio(main, saying=saying)
    if failed:
        raise failed[0]
    return code


# --- submit ---------------------------------------------------------------------------------


class RemoteProgress:
    """What ``vmbusops run`` prints when its output is not a terminal, from the event stream."""

    def __init__(self, *, as_json: bool, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.rows: dict[str, tuple[str, str | None]] = {}

    def _json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def created(self, job_id: int) -> None:
        if self.as_json:
            self._json({"event": "job", "job": job_id})
        else:
            self.out.write(f"job {job_id}\n")
        self.out.flush()

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        if name == "record":
            self._record(data)
        elif name == "run":
            previous = self.rows.get(data["vm"])
            current = (data["state"], data.get("step"))
            self.rows[data["vm"]] = current
            if previous == current:
                return
            if self.as_json:
                # The time it is printed, as vmbusops run --json stamps its run lines.
                when = data.get("time") or iso_time(time.time())
                self._json({"event": "run", "vm": data.get("vm"), "time": when,
                            **{k: data.get(k) for k in ("state", "step", "error", "code")}})
            else:
                step = f" ({data['step']})" if data.get("step") else ""
                error = f": {data['error']}" if data.get("error") else ""
                self.out.write(terminal_safe(f"{data['vm']:<10} > {data['state']}{step}{error}") + "\n")
        self.out.flush()

    def _record(self, data: dict[str, Any]) -> None:
        if self.as_json:
            body = {k: v for k, v in data.items() if k not in ("vm", "event", "seq", "time", "step", "stream")}
            head = {"vm": data["vm"], "event": "record", "stream": data["stream"], "seq": data["seq"], "time": data["time"]}
            if data.get("step") is not None:
                head["step"] = data["step"]
            self._json({**head, **body})
            return
        if data["stream"] == "state":
            return
        labels = {
            "error": "ERROR: ",
            "warning": "WARNING: ",
            "verbose": "VERBOSE: ",
            "debug": "DEBUG: ",
            "progress": "PROGRESS: ",
        }
        label = labels.get(data["stream"], "")
        lines = terminal_safe(record_text(_record_view(data))).splitlines() or [""]
        vm = terminal_safe(data["vm"])
        self.out.write("\n".join(f"{vm:<10} | {label}{line}" for line in lines) + "\n")

    async def summary(self, agent: AgentClient, job_id: int, state: str) -> list[str]:
        """Print the job's runs as it ended; returns their states."""
        async with agent.client() as client:
            response = await client.get(f"/v1/jobs/{job_id}/runs")
            if response.status_code != 200:
                raise problem(response)
            runs = response.json()["runs"]
        if self.as_json:
            self._json({"event": "summary", "job": job_id, "state": state, "runs": runs})
            return [r["state"] for r in runs]
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold", title=f"job {job_id}: {state}")
        for col in ("VM", "State", "Duration", "Records", "Error"):
            table.add_column(col)
        for r in runs:
            duration = (
                f"{seconds_of(r['finished_at']) - seconds_of(r['started_at']):.1f}s"
                if r["started_at"] and r["finished_at"]
                else "-"
            )
            table.add_row(
                Text(terminal_safe(r["vm"])), r["state"], duration, str(r["records"]), Text(terminal_safe(r["error"] or ""))
            )
        console(self.out, highlight=False, no_color=True).print(table)
        return [r["state"] for r in runs]


def _record_view(data: dict[str, Any]) -> RecordView:
    content = {k: v for k, v in data.items() if k not in ("vm", "event", "seq", "time", "step")}
    return RecordView(
        run_id=0, vm=data["vm"], seq=data["seq"], step=data.get("step"), attempt=0,
        stream=data["stream"], time=seconds_of(data["time"]), content=content,
    )  # fmt: skip


def resolve_agent(agent_url: str | None, token_file: Path | None) -> AgentClient:
    """The agent to ask (``--agent``, else ``$VMBUSOPS_AGENT``, else the default) and the token.

    A URL that is not an agent's (no http:// or https://, no host) is bad input, said before any
    token is read or any connection tried: nothing could reach it."""
    if agent_url:
        url, given = agent_url, f"--agent {_shown(agent_url)!r}"
    else:
        url = os.environ.get(ENV_AGENT) or DEFAULT_AGENT
        given = f"${ENV_AGENT} {_shown(url)!r}"
    if not _is_agent_url(url):
        raise ConfigError(
            f"{given} is not an agent's URL",
            hint=f"give http:// or https://, a host and a port, such as {DEFAULT_AGENT}",
        )
    if has_userinfo(url):
        # httpx would send it as Basic authentication in place of the token, and the agent
        # takes bearer tokens only; a password there also shows in the process list.
        raise ConfigError(
            f"{given} carries a user name or password; an agent takes a bearer token, not those",
            hint=f"give the URL without user@ and the token in ${ENV_TOKEN} or --token-file",
        )
    return AgentClient(url, read_token(token_file))


def _is_agent_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except (httpx.InvalidURL, ValueError, TypeError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


async def submit_bundle(agent: AgentClient, bundle_file: Path) -> dict[str, Any]:
    try:
        data = await trio.Path(bundle_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {bundle_file}: {exc.strerror}") from None
    async with agent.client() as client:
        try:
            response = await client.post(
                "/v1/jobs", content=data, headers={"Content-Type": "application/octet-stream"}
            )
        except httpx.HTTPError as exc:
            raise _transport(exc, agent.url) from exc
    if response.status_code not in (201, 202):
        raise problem(response)
    result: dict[str, Any] = response.json()
    return result


@click.command("submit", epilog=exitcodes.EXIT_CODES_HELP)
@agent_option
@click.argument("bundle_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--follow", is_flag=True, help="Follow the job's records and states until it ends.")
@click.option("--json", "as_json", is_flag=True, help="NDJSON, as vmbusops run --json prints.")
def submit_cmd(
    agent_url: str | None, token_file: Path | None, bundle_file: Path, follow: bool, as_json: bool
) -> None:
    """Submit a signed bundle to a (remote) agent; it is verified there before anything runs.

    Without --follow, exit code 0 says the job was accepted; with it, the job's outcome, as for
    vmbusops run.
    """
    agent = resolve_agent(agent_url, token_file)
    progress = RemoteProgress(as_json=as_json)

    async def main() -> int:
        answer = await submit_bundle(agent, bundle_file)
        if "schedule" in answer:
            s = answer["schedule"]
            if as_json:
                progress._json({"event": "schedule", **s})
            else:
                click.echo(f"schedule {s['name']} v{s['version']} registered: next run {s['next_run']}")
            return exitcodes.OK
        job_id = int(answer["job"]["id"])
        progress.created(job_id)
        if not follow:
            return exitcodes.OK
        end = await follow_events(agent, job_id, progress)
        states = await progress.summary(agent, job_id, end["state"])
        if end["state"] == "success":
            return exitcodes.OK
        return exitcodes.job_exit_code(states) or exitcodes.GUEST_ERRORS  # 5 when every other run rolled back

    sys.exit(run_client(main))


# --- logs -----------------------------------------------------------------------------------


def remote_logs(
    agent: AgentClient, job_id: int, *, vm: str | None, stream: str | None, follow: bool, as_json: bool
) -> int:
    """``vmbusops logs`` against an agent: the same lines, from its API."""
    async def main() -> int:
        async with agent.client() as client:
            try:
                response = await client.get(f"/v1/jobs/{job_id}/runs")
            except httpx.HTTPError as exc:
                raise _transport(exc, agent.url) from exc
            if response.status_code != 200:
                raise problem(response)
            names = [r["vm"] for r in response.json()["runs"]]
            require_run(vm, names, job_id)
            width = max([len(n) for n in names] + [8])

            def wanted(data: dict[str, Any]) -> bool:
                return (vm is None or data["vm"].casefold() == vm.casefold()) and (
                    stream is None or data["stream"] == stream
                )

            if not follow:
                cursor = ""
                while True:
                    params = {
                        "after": cursor,
                        "limit": "5000",
                        **({"vm": vm} if vm else {}),
                        **({"stream": stream} if stream else {}),
                    }
                    response = await client.get(f"/v1/jobs/{job_id}/records", params=params)
                    if response.status_code != 200:
                        raise problem(response)
                    page = response.json()
                    print_records([_record_view(d) for d in page["records"]], as_json, width)
                    if not page["records"]:
                        return exitcodes.OK
                    cursor = page["cursor"]

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "record" and wanted(data):
                print_records([_record_view(data)], as_json, width)
                sys.stdout.flush()

        end = await follow_events(agent, job_id, on_event)
        say_interrupted(job_id, str(end.get("state")), agent.url)
        return exitcodes.OK

    return run_client(main)


def say_interrupted(job_id: int, state: str, agent_url: str | None = None) -> None:
    """A followed job that ended interrupted (the process running it stopped under it) is said on
    stderr: its records end there, though the job is not over. Followed through an agent, it is
    resumed through that agent (``jobs resume --agent``)."""
    if state == "interrupted":
        through = f" --agent {_shown(agent_url)}" if agent_url is not None else ""
        click.echo(
            f"vmbusops: job {job_id} is interrupted: the process running it stopped before it ended;"
            f" resume it with: vmbusops jobs resume {job_id}{through}",
            err=True,
        )
