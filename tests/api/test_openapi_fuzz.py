"""The served OpenAPI document, exercised by schemathesis against the real agent: no 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from tests.api.conftest import Agent, submit
from tests.builders import script

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.slow
async def test_no_server_errors_under_schema_driven_fuzzing(agent: Agent, tmp_path: Path) -> None:
    # A finished job, so that some generated ids exist.
    r = await submit(agent, agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')]))
    assert r.status_code == 201
    # The token reaches schemathesis through the environment, never the command line; its
    # reports mask the Authorization header.
    (tmp_path / "schemathesis.toml").write_text(
        '[headers]\nAuthorization = "Bearer ${VMBUSOPS_FUZZ_TOKEN}"\n'
    )
    env = {**os.environ, "VMBUSOPS_FUZZ_TOKEN": agent.tokens["admin"]}
    cmd = [
        SCHEMATHESIS, "run", f"{agent.url}/v1/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", "12", "--seed", "20240613",
        "--phases", "examples,coverage,fuzzing", "--workers", "2", "--request-timeout", "10",
        "--no-shrink",
    ]  # fmt: skip
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
        )
    )
    output = done.stdout + done.stderr
    assert agent.tokens["admin"] not in output
    assert done.returncode == 0, output[-4000:]
    assert "Tested: 18" in output  # every operation of the document was exercised
    server_errors = [line for line in agent.log_lines() if line.get("level") == "error"]
    assert server_errors == []
