"""A submission whose job cannot be made uses nothing up: the same bundle can be submitted again."""

from __future__ import annotations

from tests.api.conftest import Agent, submit
from tests.builders import PASSWORD
from tests.engine.test_accept_once import QUICK, bundle

from vmbusops.bundle.errors import ReplayedBundleError
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
from vmbusops.credentials import CredentialStore, Secret
from vmbusops.errors import FailureCode
from vmbusops.fleet.agent_bundles import REPLAYED_BUNDLE


async def test_a_submission_refused_for_its_credential_can_be_made_again(agent: Agent) -> None:
    scope = Scope(keys=(), credentials=("*",))
    save_trust_policy(
        TrustPolicy().with_key(TrustedKey(name="tests", public=agent.key.public_key()), scope), trust_policy_path()
    )
    path = bundle(agent.bundles, agent.key, credential="ops-admin", steps=[QUICK], vms=("a-web01",))
    for _ in range(2):
        r = await submit(agent, path)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == "no credential named 'ops-admin' on this host"
        assert str(agent.home) not in r.text, "a remote caller is not told the host's paths"
    CredentialStore().set("ops-admin", "Administrator", Secret(PASSWORD))
    r = await submit(agent, path)
    assert r.status_code == 201, r.text
    again = await submit(agent, path)
    assert again.status_code != 201 and "already accepted" in again.json()["detail"]
    # One name for the refusal everywhere: the code (as a fleet host's refusal says it too), the
    # class it is raised as, with Error, and the reason `bundle verify --json` gives.
    assert again.json()["code"] == FailureCode.REPLAYED_BUNDLE == REPLAYED_BUNDLE == "ReplayedBundle"
    assert ReplayedBundleError.code is FailureCode.REPLAYED_BUNDLE
    assert ReplayedBundleError.__name__ == f"{FailureCode.REPLAYED_BUNDLE}Error"
