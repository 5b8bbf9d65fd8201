"""The spans of a chain execution.

    promptgate.chain            one chain execution (child of the RPC's span or
    │                           of a batch item's)
    └── promptgate.chain.step   one step, in order (its index and name)
        └── promptgate.execution   the step's execution (execution/telemetry.py)

Nothing is created while tracing is off.
"""

from __future__ import annotations

from promptgate.chains.model import ChainExecution, StepResult
from promptgate.execution.model import ExecutionState
from promptgate.observability import tracing
from promptgate.observability.tracing import Span

CHAIN = "promptgate.chain"
STEP = "promptgate.chain.step"


def started(chain: Span, execution: ChainExecution) -> None:
    """The chain execution exists: what it runs, on its span."""
    if not chain.is_recording():
        return
    chain.set_attribute("promptgate.chain_execution.id", execution.id)
    chain.set_attribute("promptgate.workspace", execution.workspace_id)
    if execution.chain_id:
        chain.set_attribute("promptgate.chain.id", execution.chain_id)
        chain.set_attribute("promptgate.chain.name", execution.chain_name)
        chain.set_attribute("promptgate.chain.version", execution.version)


def step(chain: Span, index: int, name: str) -> Span:
    """The span of step ``index`` (not made current: a streamed step yields)."""
    if not chain.is_recording():
        return tracing.INVALID_SPAN
    return tracing.start(
        STEP, parent=chain, attributes={"promptgate.chain.step": name, "promptgate.step": index}
    )


def step_finished(span: Span, result: StepResult) -> None:
    """The step ended: its execution and state; the span ends."""
    if not span.is_recording():
        return
    if result.execution_id:
        span.set_attribute("promptgate.execution.id", result.execution_id)
    span.set_attribute("promptgate.execution.state", result.state.value)
    if result.state is not ExecutionState.FULFILLED:
        tracing.fail(span, result.error.code if result.error else "STEP_REJECTED")
    span.end()


def finished(chain: Span, execution: ChainExecution) -> None:
    """The chain ended (recorded): its state and error code."""
    if not chain.is_recording():
        return
    chain.set_attribute("promptgate.chain_execution.id", execution.id)
    chain.set_attribute("promptgate.execution.state", execution.state.value)
    if execution.state is ExecutionState.REJECTED:
        tracing.fail(chain, execution.error.code if execution.error else "REJECTED")
