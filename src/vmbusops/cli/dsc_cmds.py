"""``vmbusops dsc``: DSC helpers that need no host, such as reading an LCM transcript."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import click

from vmbusops.cli.output import terminal_safe
from vmbusops.dsc.lcm import (
    Event,
    JobCompleted,
    LcmError,
    LcmParser,
    LcmWarning,
    Message,
    MethodInvoked,
    OperationEnded,
    OperationSkipped,
    OperationStarted,
    RebootRequired,
    ResourceMessage,
)


def describe(event: Event) -> str:
    """One line an operator reads: what happened, to which resource, how long it took."""
    match event:
        case OperationStarted(operation=op, resource=res):
            return f"start  {op.value:<8} {res or '(configuration)'}"
        case OperationEnded(operation=op, resource=res, seconds=sec, result=result):
            took = f"  {sec:.3f}s" if sec is not None else ""
            verdict = "" if result is None else f"  in desired state: {result}"
            return f"end    {op.value:<8} {res or '(configuration)'}{took}{verdict}"
        case OperationSkipped(operation=op, resource=res):
            return f"skip   {op.value:<8} {res or ''}  (in desired state)"
        case ResourceMessage(resource=res, message=msg):
            return f"       {'':<8} {res}: {msg}"
        case RebootRequired():
            return "REBOOT REQUIRED"
        case LcmWarning(message=msg, resource=res):
            return f"WARNING {res + ': ' if res else ''}{msg}"
        case LcmError(message=msg, fqid=fqid):
            return f"ERROR  {msg}" + (f"  [{fqid}]" if fqid else "")
        case MethodInvoked(method=method):
            return f"invoke {method or '?'}"
        case JobCompleted(seconds=sec):
            return f"job completed in {sec}s"
        case Message():
            return f"       {event.text}"
        case _:
            return f"       {event.text}"


def _emit(event: Event, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
    else:
        out.write(terminal_safe(describe(event)) + "\n")  # a transcript is guest text


@click.group("dsc")
def dsc() -> None:
    """DSC helpers: read LCM verbose output."""


@dsc.command("parse-lcm")
@click.argument("file", type=click.File("r", encoding="utf-8-sig", errors="replace"))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def parse_lcm(file: TextIO, as_json: bool) -> None:
    """Turn LCM verbose output (a console transcript, or one record per line; '-' for stdin) into events.

    Wrapped console lines are joined back; lines that are not LCM output pass through as messages.
    """
    parser = LcmParser()
    out = sys.stdout
    for line in file:
        parser.receive_line(line)
        for event in parser.events():
            _emit(event, as_json, out)
    parser.close()
    for event in parser.events():
        _emit(event, as_json, out)
