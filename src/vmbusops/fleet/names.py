"""The fleet's names on the broker: streams, subjects, buckets, consumers.

Host names are subject tokens, so they are restricted to ``[A-Za-z0-9_-]{1,64}``
(:func:`check_host_name`): no dots, no wildcards, nothing a host could use to reach another host's
subjects.
"""

from __future__ import annotations

import re

from vmbusops.errors import ConfigError

#: Facts and decisions, kept (limits retention): the controllers' journals are projections of it.
LOG_STREAM = "VMBUSOPS_LOG"
LOG_SUBJECTS = "vmbusops.log.>"
CTL_SUBJECT = "vmbusops.log.ctl"
HOST_LOG_PREFIX = "vmbusops.log.host."

#: What each host must do (work-queue retention: a message is gone once its host acked it).
WORK_STREAM = "VMBUSOPS_WORK"
WORK_SUBJECTS = "vmbusops.work.*"
WORK_PREFIX = "vmbusops.work."

HOSTS_BUCKET = "vmbusops_hosts"
PLACEMENT_BUCKET = "vmbusops_placement"
LEASES_BUCKET = "vmbusops_leases"
BUNDLES_STORE = "vmbusops_bundles"

CONTROLLER_LEASE_KEY = "controller"

#: How long JetStream remembers a message id to drop a second publish of it.
DUPLICATE_WINDOW_SECONDS = 120.0

_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_host_name(name: str) -> str:
    """``name`` if it may be a fleet host's name, else :class:`ConfigError`."""
    if not _HOST_NAME.fullmatch(name):
        raise ConfigError(
            f"fleet host name {name!r} is not valid",
            hint="use 1 to 64 letters, digits, '-' or '_' (it is a NATS subject token)",
        )
    return name


def host_log_subject(host: str) -> str:
    return HOST_LOG_PREFIX + check_host_name(host)


def work_subject(host: str) -> str:
    return WORK_PREFIX + check_host_name(host)


def work_consumer(host: str) -> str:
    """The durable pull consumer through which ``host`` takes its work."""
    return "host-" + check_host_name(host)


def host_of_log_subject(subject: str) -> str | None:
    """The host a host-fact subject belongs to (None: not a host subject)."""
    if not subject.startswith(HOST_LOG_PREFIX):
        return None
    host = subject[len(HOST_LOG_PREFIX) :]
    return host if _HOST_NAME.fullmatch(host) else None
