"""Shared checks for the example programs of the TypeScript and Go clients.

Each example prints one JSON object per step; these assert what every client
must show against the live ``--dev`` server.
"""

from __future__ import annotations

import json
from typing import Any

DEMO_HI_REPLY = "Mock reply to: Answer in one sentence: hi"


def steps(stdout: str) -> dict[str, dict[str, Any]]:
    """The example's output, by step name."""
    result: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            result[event.pop("step")] = event
    return result


def assert_tour(out: dict[str, dict[str, Any]]) -> None:
    """execute, stream, actual, batch, chain, error reason and deadline all as expected."""
    assert set(out) == {"execute", "stream", "actual", "batch", "chain", "error", "deadline"}, out
    execute = out["execute"]
    assert execute["state"] in ("FULFILLED", "EXECUTION_STATE_FULFILLED"), execute
    assert execute["executionId"].startswith("exe_")
    assert execute["text"] == DEMO_HI_REPLY
    assert execute["model"] == "mock-1"

    stream = out["stream"]
    assert len(stream["deltas"]) == 4, stream
    assert stream["text"] == DEMO_HI_REPLY
    assert stream["last"] == "fulfilled"

    actual = out["actual"]
    assert actual["id"].startswith("act_")
    assert actual["executionId"] == execute["executionId"]

    batch = out["batch"]
    assert batch["id"].startswith("bat_")
    assert batch["state"] in ("SUCCEEDED", "BATCH_STATE_SUCCEEDED"), batch
    assert batch["results"] == [
        ["a", "Mock reply to: Answer in one sentence: first"],
        ["b", "Mock reply to: Answer in one sentence: second"],
    ]

    chain = out["chain"]
    assert chain["state"] in ("FULFILLED", "EXECUTION_STATE_FULFILLED"), chain
    assert chain["chainExecutionId"].startswith("chx_")
    assert chain["steps"] == ["shout", "answer"]
    assert all(i.startswith("exe_") for i in chain["executionIds"]), chain
    assert chain["text"] == "Mock reply to: Answer in one sentence: Mock reply to: Shout hi"

    error = out["error"]
    assert error["code"].replace("_", "").lower() == "notfound", error
    assert (error["reason"], error["domain"]) == ("PROMPT_NOT_FOUND", "promptgate")
    assert "no-such-prompt" in error["message"]

    # The 600 ms deadline against a 5 s provider: DEADLINE_EXCEEDED, or the
    # REJECTED EXECUTION_TIMEOUT promptgate sends just before the deadline.
    deadline = out["deadline"]
    outcome = deadline["outcome"].replace("_", "").lower()
    if outcome in ("rejected", "executionstaterejected"):
        assert deadline["errorCode"] == "EXECUTION_TIMEOUT", deadline
    else:
        assert outcome == "deadlineexceeded", deadline
    assert 300 <= deadline["elapsedMs"] < 2000, deadline
