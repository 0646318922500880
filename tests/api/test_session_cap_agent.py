"""The agent runs its engine under ``[host] max_sessions`` and says so when it is ready."""

from __future__ import annotations

from tests.api.conftest import Agent


def test_the_agent_takes_its_session_cap_from_the_configuration(agent_factory: object) -> None:
    agent: Agent = agent_factory(config="[host]\nmax_sessions = 7\n")  # type: ignore[operator]
    ready = [line for line in agent.log_lines() if line.get("event") == "ready"]
    assert len(ready) == 1
    assert ready[0]["max_sessions"] == 7


def test_max_sessions_on_the_command_line_overrides_the_configuration(agent_factory: object) -> None:
    agent: Agent = agent_factory(config="[host]\nmax_sessions = 7\n", args=("--max-sessions", "120"))  # type: ignore[operator]
    ready = [line for line in agent.log_lines() if line.get("event") == "ready"]
    assert [line["max_sessions"] for line in ready] == [120]
