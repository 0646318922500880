"""A token's check reads the store again once anyone has changed it: a revocation or a new token
made through another connection (``vmbusops agent token ...``) takes effect at the next request."""

from __future__ import annotations

import time
from pathlib import Path

from vmbusops.api.auth import Operation, Principal, PrincipalStore, Refusal

READ = frozenset({Operation.READ})


def test_revocation_through_another_connection_refuses_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "principals.sqlite"
    with PrincipalStore(path) as agent, PrincipalStore(path) as cli:
        made, token = cli.create_token(name="t", operations=READ, vms=["a-*"], expires_at=None)
        for _ in range(2):
            got = agent.authenticate_token(token, time.time())
            assert isinstance(got, Principal) and got.id == made.id and got.vms == ("a-*",)
        cli.revoke(made.id)
        refused = agent.authenticate_token(token, time.time())
        assert isinstance(refused, Refusal) and refused.why == "token revoked"


def test_a_token_made_after_a_check_is_known_and_a_wrong_secret_stays_wrong(tmp_path: Path) -> None:
    path = tmp_path / "principals.sqlite"
    with PrincipalStore(path) as agent, PrincipalStore(path) as cli:
        first, token = cli.create_token(name="one", operations=READ, vms=["*"], expires_at=None)
        assert isinstance(agent.authenticate_token(token, time.time()), Principal)
        wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for _ in range(2):
            refused = agent.authenticate_token(wrong, time.time())
            assert isinstance(refused, Refusal) and refused.why == "wrong token secret"
        second, other = cli.create_token(name="two", operations=READ, vms=["*"], expires_at=time.time() + 60)
        got = agent.authenticate_token(other, time.time())
        assert isinstance(got, Principal) and got.id == second.id
        expired = agent.authenticate_token(other, time.time() + 120)
        assert isinstance(expired, Refusal) and expired.why == "token expired"
        agent.revoke(first.id)  # through the checking store itself
        refused = agent.authenticate_token(token, time.time())
        assert isinstance(refused, Refusal) and refused.why == "token revoked"
