"""ChainKeys: the external_id contract of chain executions.

The same contract as executions have (``execution.records.IdempotencyKeys``),
over ``chain_executions``; keys of chains and of single executions are
separate namespaces.

- The first call with a key inserts the RUNNING chain execution holding the
  key, the request's fingerprint and this process as its owner; a repeat
  while it runs is ABORTED (EXECUTION_IN_PROGRESS).
- A repeat of the same request after it finished replays the recorded chain
  execution, steps included, without calling any provider again.
- The same key with another request is FAILED_PRECONDITION
  (IDEMPOTENCY_KEY_REUSED).
- A chain rejected for a transient reason (its failed step's error is
  transient, or the chain ran out of time or was cancelled) runs again as a
  new chain execution, which takes the key; the earlier one stays recorded
  with the key in ``superseded_key``.
- A RUNNING chain execution whose owner process stopped heartbeating is
  marked REJECTED (ABANDONED) and the repeat runs again at once.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from promptgate.chains.model import ChainExecution
from promptgate.chains.store import ChainExecutionStore
from promptgate.errors import Aborted, FailedPrecondition
from promptgate.execution.model import ExecutionFailure, ExecutionState
from promptgate.execution.outcomes import is_transient
from promptgate.execution.records import error_json, heartbeat_fresh
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import utcnow

CLAIM_ATTEMPTS = 3


class ChainKeys:
    """Takes and checks chain executions' external_ids; see the module docstring."""

    def __init__(
        self,
        store: ChainExecutionStore,
        sessions: SessionFactory,
        *,
        owner: str,
        stale_after_s: float,
        running_limit_s: float,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._owner = owner
        self._stale_after_s = stale_after_s
        self._running_limit_s = running_limit_s

    async def lookup(
        self, workspace: str, key: str, fingerprint: str
    ) -> tuple[ChainExecution | None, ChainExecution | None]:
        """(the recorded chain execution to replay, the earlier one a new run replaces)."""
        if not key:
            return None, None
        existing = await self._store.find(workspace, external_id=key)
        if existing is None:
            return None, None
        return await self._decide(existing, fingerprint)

    async def claim(
        self, execution: ChainExecution, replaced: ChainExecution | None
    ) -> ChainExecution | None:
        """Store ``execution`` RUNNING, holding its key if it has one.

        Returns None once it is stored, or the chain execution to answer with
        instead (one that won a race for the key).
        """
        execution.owner = self._owner
        if not execution.external_id:
            await self._store.insert(execution)
            return None
        for _ in range(CLAIM_ATTEMPTS):
            if replaced is not None and not await self._release(replaced, execution.external_id):
                replaced = None
            else:
                try:
                    await self._store.insert(execution)
                    return None
                except IntegrityError:
                    pass
            existing = await self._store.find(
                execution.workspace_id, external_id=execution.external_id
            )
            if existing is None:
                continue
            replay, replaced = await self._decide(existing, execution.fingerprint)
            if replay is not None:
                return replay
        raise Aborted(
            f"the external_id {execution.external_id!r} is in use by concurrent calls; retry",
            reason="EXECUTION_IN_PROGRESS",
            metadata={"external_id": execution.external_id},
        )

    async def _decide(
        self, existing: ChainExecution, fingerprint: str
    ) -> tuple[ChainExecution | None, ChainExecution | None]:
        if existing.fingerprint and fingerprint and existing.fingerprint != fingerprint:
            raise FailedPrecondition(
                f"the external_id {existing.external_id!r} was used for a different request",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"external_id": existing.external_id, "chain_execution_id": existing.id},
            )
        if existing.state is ExecutionState.RUNNING:
            if await self._alive(existing):
                raise Aborted(
                    f"a chain execution with external_id {existing.external_id!r} is still running",
                    reason="EXECUTION_IN_PROGRESS",
                    metadata={
                        "external_id": existing.external_id,
                        "chain_execution_id": existing.id,
                    },
                )
            return None, existing  # its server stopped: run it again
        if existing.state is ExecutionState.REJECTED and is_transient(existing.error):
            return None, existing
        await self._store.load_steps(existing)
        existing.replayed = True
        return existing, None

    async def _alive(self, running: ChainExecution) -> bool:
        age = (utcnow() - running.created_at).total_seconds()
        if age > self._running_limit_s:
            return False  # longer than any chain may run: its end was never recorded
        if running.owner == self._owner:
            return True
        return await heartbeat_fresh(self._sessions, running.owner, self._stale_after_s)

    async def _release(self, replaced: ChainExecution, key: str) -> bool:
        """Move ``key`` off the chain execution being replaced (ending it if left RUNNING)."""
        values = {}
        if replaced.state is ExecutionState.RUNNING:
            values = {
                "state": ExecutionState.REJECTED.value,
                "error": error_json(
                    ExecutionFailure(
                        "ABANDONED", "the server running this chain stopped before it finished"
                    )
                ),
                "completed_at": utcnow(),
            }
        return await self._store.release_key(replaced, key, values)
