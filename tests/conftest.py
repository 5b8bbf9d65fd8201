"""Shared fixtures: a real promptgate server on port 0 with real stubs."""

from __future__ import annotations

import contextlib
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from promptgate.api.v1 import execution_service_pb2_grpc, prompt_service_pb2_grpc
from promptgate.config import Settings
from promptgate.providers.upstream import UpstreamClient, UpstreamSettings
from promptgate.server import PromptgateServer
from tests.live import LiveServer, start_live_server

PG_ADMIN_DSN = os.environ.get("PROMPTGATE_TEST_PG", "postgresql://root@127.0.0.1:5432/test")


@dataclass
class Running:
    """A started server, a channel to it and its stubs."""

    server: PromptgateServer
    address: str
    channel: grpc.aio.Channel
    executions: execution_service_pb2_grpc.ExecutionServiceStub
    prompts: prompt_service_pb2_grpc.PromptServiceStub
    key: str = ""


ServerFactory = Callable[..., "AsyncIterator[Running]"]


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test server: port 0, SQLite in tmp_path, demo prompt seeded."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'promptgate.db'}",
            "dev": True,
            "grace_period_s": 1.0,
            # One call per target unless a test asks for retries: provider failures
            # then show up at once instead of after a Retry-After wait.
            "retry_max_attempts": 1,
            "openai_api_key": None,
            "openai_base_url": "https://api.openai.com/v1",
            "azure_openai_endpoint": None,
            "azure_openai_api_key": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


class _WithKey:
    def __init__(self, key: str) -> None:
        self.key = key

    def _with_key(self, details: Any) -> Any:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(("authorization", f"Bearer {self.key}"))
        return details._replace(metadata=metadata)


class _UnaryAuth(_WithKey, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _StreamAuth(_WithKey, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


def authed_channel(address: str, key: str) -> grpc.aio.Channel:
    """A channel whose calls carry ``authorization: Bearer <key>``.

    (grpc.aio files each interceptor under one call type, hence two.)
    """
    return grpc.aio.insecure_channel(address, interceptors=[_UnaryAuth(key), _StreamAuth(key)])


@pytest.fixture
async def start_server(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """Start servers with setting overrides; all are stopped after the test.

    Each server's channel carries the dev admin key made at the first start on
    its database (later servers on the same database reuse it).
    """
    started: list[Running] = []
    keys: dict[str, str] = {}

    async def start(**overrides: Any) -> Running:
        server = PromptgateServer(settings_factory(**overrides))
        port = await server.start()
        address = f"127.0.0.1:{port}"
        database = server.settings.database_url
        if server.dev_key:
            keys[database] = server.dev_key
        key = keys.get(database, "")
        channel = authed_channel(address, key)
        running = Running(
            server=server,
            address=address,
            channel=channel,
            executions=execution_service_pb2_grpc.ExecutionServiceStub(channel),
            prompts=prompt_service_pb2_grpc.PromptServiceStub(channel),
            key=key,
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.server.stop(grace=0)


@pytest.fixture
async def pg(start_server: Callable[..., Any]) -> Running:
    """A server on SQLite with the demo prompt (the common case)."""
    running: Running = await start_server()
    return running


def error_details(
    err: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    """The ErrorInfo and BadRequest details of a status error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    bad: error_details_pb2.BadRequest | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    assert info.reason, "every status error carries an ErrorInfo reason"
    return info, bad


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database; yield its URL; drop it afterwards."""
    import asyncio

    import asyncpg

    name = f"pg_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One ``promptgate serve --dev --port 0`` process shared by the client tests."""
    server = start_live_server(tmp_path_factory.mktemp("live"))
    try:
        yield server
    finally:
        server.stop()


# One TLS context for every adapter test's client: building one costs ~20 ms.
_TLS = ssl.create_default_context()


@contextlib.asynccontextmanager
async def provider_http_client(**settings: Any) -> AsyncIterator[UpstreamClient]:
    """The server's provider HTTP client, with ``UpstreamSettings`` overrides; closed after."""
    values: dict[str, Any] = {"connect_timeout_s": 5.0, **settings}
    context = None if values.get("ca_bundle") else _TLS
    client = await UpstreamClient.open(UpstreamSettings(**values), ssl_context=context)
    try:
        yield client
    finally:
        await client.aclose()
