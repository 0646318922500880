"""A URL as a message may quote it: without the password it may carry.

A URL given on the command line or in the environment (an agent's, a NATS server's) may hold
``user:password@``; every error that names the URL quotes it through :func:`shown_url`.
"""

from __future__ import annotations

import re

#: A URL's user information (``user:password@``), as an error quotes the URL without it.
_USERINFO = re.compile(r"^(?P<head>[^/]*//)?(?P<user>[^/@:]*)(?P<password>:[^/@]*)?@")


def shown_url(url: str) -> str:
    """``url`` as a message may quote it: a password it carries is replaced by ``***``."""
    return _USERINFO.sub(
        lambda m: f"{m['head'] or ''}{m['user']}{':***' if m['password'] is not None else ''}@", url, count=1
    )


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries a user name or a password (``user[:password]@``)."""
    return _USERINFO.match(url) is not None


__all__ = ["has_userinfo", "shown_url"]
