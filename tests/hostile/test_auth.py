"""Hostile callers against auth and limits: key floods, conflicting headers,
dead replicas' leases and streams dropped without reading.

Redis is the real one on 127.0.0.1:6379; each test keeps its limits under a
key prefix of its own and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy import event

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from promptgate.auth.limits import RedisLimiter
from promptgate.auth.model import Scope
from promptgate.errors import Unauthenticated
from tests.conftest import Running, authed_channel, error_details
from tests.hostile.probe import while_attacking

REDIS_URL = "redis://127.0.0.1:6379/0"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
ALNUM = string.ascii_lowercase + string.digits


def demo(**mock: Any) -> epb.ExecutePromptRequest:
    request = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="hostile?")]
    )
    if mock:
        request.parameters.extra.update({"mock": mock})
    return request


async def issue(running: Running, **overrides: int) -> str:
    """A fresh key of the default workspace with every scope (unlimited unless overridden)."""
    issued = await running.server.keys.create(
        "default", name="hostile", scopes=list(Scope), plan="unlimited", overrides=overrides
    )
    return issued.secret


async def running_executions(address: str, key: str) -> int:
    async with authed_channel(address, key) as channel:
        me = await apb_grpc.AdminServiceStub(channel).WhoAmI(apb.WhoAmIRequest(), timeout=10)
    return me.concurrent_executions


async def eventually_zero(address: str, key: str, within_s: float = 10.0) -> int:
    """The key's running executions, polled until 0 or ``within_s`` passed."""
    deadline = time.monotonic() + within_s
    while True:
        running = await running_executions(address, key)
        if running == 0 or time.monotonic() > deadline:
            return running
        await asyncio.sleep(0.1)


@pytest.fixture
def redis_prefix() -> str:
    return f"promptgate-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_cleanup(redis_prefix: str) -> AsyncIterator[None]:
    yield
    redis = Redis.from_url(REDIS_URL)
    try:
        names = [name async for name in redis.scan_iter(match=f"{redis_prefix}*")]
        if names:
            await redis.delete(*names)
    finally:
        await redis.aclose()


# Floods of bogus keys


def _well_formed(rng: random.Random) -> str:
    key_id = "".join(rng.choices(ALNUM, k=26))
    secret = "".join(rng.choices(ALNUM + "_-", k=rng.randint(20, 64)))
    return f"pgk_{key_id}.{secret}"


def _malformed(rng: random.Random, i: int) -> str:
    key_id = "".join(rng.choices(ALNUM, k=26))
    shapes = (
        f"junk-{i}-{rng.random()}",
        f"pgk_{key_id}",  # no secret
        f"pgk_{key_id.upper()}.{'s' * 30}-{i}",  # upper-case id
        f"sk_{key_id}.{'s' * 30}-{i}",  # another service's prefix
        f"pgk_{key_id}.{'s' * 200}{i}",  # secret too long
        f"pgk_{key_id}x.{'s' * 30}{i}",  # id too long
        f"pgk_{key_id}.short{i}",  # secret too short
        "pgk_" + "z" * (2000 + i % 500),  # oversized
    )
    return shapes[i % len(shapes)]


class TestBogusKeyFlood:
    """Random bogus keys neither evict valid ones from the cache nor stall the server.

    20,000 distinct bogus keys, half well-formed, half malformed: more than the
    10,000 entries at which the old cache cleared itself. ``OVER_GRPC`` of them
    go through real calls; the rest go at the same time straight to the
    server's own KeyStore (what the auth interceptor calls), because 20,000
    gRPC calls alone take this in-process server 8-25 s on a 2-core machine.
    """

    FLOOD = 20_000
    OVER_GRPC = 3_000
    CONCURRENCY = 64
    DIRECT_CHUNK = 500

    async def test_a_flood_of_bogus_keys_does_not_evict_a_valid_key(
        self, start_server: Callable[..., Any]
    ) -> None:
        # A long cache ttl, so that only eviction (not expiry) could make the
        # valid key read the store again after the flood.
        running: Running = await start_server(auth_cache_ttl_s=600)
        valid = await issue(running)
        key_reads: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "api_keys" in statement:
                key_reads.append(statement)

        event.listen(running.server.engine.sync_engine, "before_cursor_execute", count)
        rng = random.Random(20_000)
        tokens = [_well_formed(rng) if i % 2 else _malformed(rng, i) for i in range(self.FLOOD)]
        assert len(set(tokens)) == self.FLOOD
        over_grpc, direct = tokens[: self.OVER_GRPC], tokens[self.OVER_GRPC :]
        async with (
            authed_channel(running.address, valid) as good,
            grpc.aio.insecure_channel(running.address) as bare,
        ):
            good_admin = apb_grpc.AdminServiceStub(good)
            await good_admin.WhoAmI(apb.WhoAmIRequest())  # now cached
            who = bare.unary_unary(
                "/promptgate.v1.AdminService/WhoAmI",
                request_serializer=apb.WhoAmIRequest.SerializeToString,
                response_deserializer=apb.WhoAmIResponse.FromString,
            )
            refused: dict[str, int] = {}

            async def through_grpc() -> None:
                queue = iter(over_grpc)

                async def sender() -> None:
                    for token in queue:
                        try:
                            await who(
                                apb.WhoAmIRequest(), metadata=(("x-api-key", token),), timeout=30
                            )
                        except grpc.aio.AioRpcError as err:
                            reason = error_details(err)[0].reason
                            refused[reason] = refused.get(reason, 0) + 1

                await asyncio.gather(*(sender() for _ in range(self.CONCURRENCY)))

            async def straight_to_the_key_store() -> None:
                keys = running.server.keys
                for start in range(0, len(direct), self.DIRECT_CHUNK):
                    chunk = direct[start : start + self.DIRECT_CHUNK]
                    results = await asyncio.gather(
                        *(keys.authenticate(token) for token in chunk), return_exceptions=True
                    )
                    for result in results:
                        assert isinstance(result, Unauthenticated), result
                        refused[result.reason] = refused.get(result.reason, 0) + 1

            async def flood() -> float:
                started = time.perf_counter()
                await asyncio.gather(through_grpc(), straight_to_the_key_store())
                return time.perf_counter() - started

            flood_s, probe = await while_attacking(running, flood())
            probe.assert_responsive()
            assert refused == {"INVALID_API_KEY": self.FLOOD}, refused
            flood_reads = len(key_reads)
            key_reads.clear()
            for _ in range(5):
                me = await good_admin.WhoAmI(apb.WhoAmIRequest())
                assert me.api_key.id in valid
            assert key_reads == [], "the valid key was evicted by the flood"
            # A recent bogus key costs no store read either.
            with pytest.raises(grpc.aio.AioRpcError):
                await who(apb.WhoAmIRequest(), metadata=(("x-api-key", tokens[-1]),))
            assert key_reads == []
        # Malformed keys never reach the store; the well-formed ones are read
        # in batches, so the store saw far fewer queries than keys.
        assert 0 < flood_reads < self.FLOOD // 4, flood_reads
        print(f"flood of {self.FLOOD} keys: {flood_s:.1f} s, {flood_reads} store queries")

    async def test_revoking_a_key_stops_it_at_once_and_keeps_the_others_cached(
        self, start_server: Callable[..., Any]
    ) -> None:
        running: Running = await start_server(auth_cache_ttl_s=600)
        kept, revoked = await issue(running), await issue(running)
        key_reads: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "api_keys" in statement and statement.lstrip().upper().startswith("SELECT"):
                key_reads.append(statement)

        event.listen(running.server.engine.sync_engine, "before_cursor_execute", count)
        async with (
            authed_channel(running.address, kept) as kept_channel,
            authed_channel(running.address, revoked) as revoked_channel,
        ):
            kept_admin = apb_grpc.AdminServiceStub(kept_channel)
            revoked_admin = apb_grpc.AdminServiceStub(revoked_channel)
            await kept_admin.WhoAmI(apb.WhoAmIRequest())
            me = await revoked_admin.WhoAmI(apb.WhoAmIRequest())
            await kept_admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=me.api_key.id))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await revoked_admin.WhoAmI(apb.WhoAmIRequest())
            assert error_details(caught.value)[0].reason == "INVALID_API_KEY"
            key_reads.clear()
            await kept_admin.WhoAmI(apb.WhoAmIRequest())
            assert key_reads == [], "revoking one key dropped the others from the cache"


# Which header carries the key


def _conflict_cases(good: str, other: str) -> dict[str, tuple[tuple[str, str], ...]]:
    bogus = f"pgk_{'a' * 26}.{'b' * 43}"
    return {
        "bad x-api-key, good bearer": (("x-api-key", bogus), ("authorization", f"Bearer {good}")),
        "good x-api-key, bad bearer": (("x-api-key", good), ("authorization", f"Bearer {bogus}")),
        "two good keys": (("x-api-key", good), ("authorization", f"Bearer {other}")),
        "two x-api-key headers": (("x-api-key", good), ("x-api-key", other)),
        "two bearer headers": (
            ("authorization", f"Bearer {good}"),
            ("authorization", f"Bearer {bogus}"),
        ),
    }


class TestHeaderPrecedence:
    """Neither header masks the other: absent when blank, refused when they disagree."""

    async def test_blank_headers_are_absent_and_the_other_header_counts(self, pg: Running) -> None:
        good = await issue(pg)
        accepted = {
            "blank x-api-key, good bearer": (
                ("x-api-key", "   "),
                ("authorization", f"Bearer {good}"),
            ),
            "empty x-api-key, good bearer": (
                ("x-api-key", ""),
                ("authorization", f"Bearer {good}"),
            ),
            "good x-api-key, blank authorization": (
                ("x-api-key", good),
                ("authorization", "  "),
            ),
            "good x-api-key, bearer without a key": (
                ("x-api-key", good),
                ("authorization", "Bearer "),
            ),
            "the same key in both": (("x-api-key", good), ("authorization", f"bearer {good}")),
            "the same key twice": (("x-api-key", f" {good}"), ("x-api-key", good)),
        }
        missing = {
            "blank x-api-key": (("x-api-key", "   "),),
            "blank both": (("x-api-key", " "), ("authorization", " ")),
        }
        async with grpc.aio.insecure_channel(pg.address) as bare:
            admin = apb_grpc.AdminServiceStub(bare)
            for label, metadata in accepted.items():
                me = await admin.WhoAmI(apb.WhoAmIRequest(), metadata=metadata)
                assert me.api_key.id in good, label
            for label, metadata in missing.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await admin.WhoAmI(apb.WhoAmIRequest(), metadata=metadata)
                assert caught.value.code() == UNAUTHENTICATED, label
                assert error_details(caught.value)[0].reason == "MISSING_AUTHORIZATION", label

    async def test_conflicting_and_malformed_headers_are_refused_clearly(self, pg: Running) -> None:
        good, other = await issue(pg), await issue(pg)
        refusals: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
            label: (metadata, "CONFLICTING_CREDENTIALS")
            for label, metadata in _conflict_cases(good, other).items()
        }
        refusals |= {
            "basic scheme beside a good x-api-key": (
                (("x-api-key", good), ("authorization", f"Basic {good}")),
                "INVALID_AUTHORIZATION",
            ),
            "bare key in authorization": ((("authorization", good),), "INVALID_AUTHORIZATION"),
            "token scheme": ((("authorization", f"Token {good}"),), "INVALID_AUTHORIZATION"),
        }
        async with grpc.aio.insecure_channel(pg.address) as bare:
            admin = apb_grpc.AdminServiceStub(bare)
            executions = epb_grpc.ExecutionServiceStub(bare)
            for label, (metadata, reason) in refusals.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await admin.WhoAmI(apb.WhoAmIRequest(), metadata=metadata)
                err = caught.value
                assert err.code() == UNAUTHENTICATED, label
                assert error_details(err)[0].reason == reason, label
                for key in (good, other):
                    assert key.split(".", 1)[1] not in (err.details() or ""), label
                # The streaming execution path refuses the same way, before running.
                stream = executions.ExecutePromptStream(demo(), metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in stream:
                        pass
                assert error_details(caught.value)[0].reason == reason, label
        assert await running_executions(pg.address, good) == 0


# Leases of a replica that died


class TestRedisLeaseExpiry:
    """Concurrency slots are leases: a dead replica's expire, a live execution's are renewed."""

    async def test_a_dead_replicas_lease_expires_while_traffic_keeps_flowing(
        self,
        start_server: Callable[..., Any],
        redis_prefix: str,
        redis_cleanup: None,
    ) -> None:
        running: Running = await start_server(
            limits_backend="redis", limits_redis_prefix=redis_prefix
        )
        secret = await issue(running, concurrent_executions=1)
        key = await running.server.keys.authenticate(secret)

        async def nothing_used(_key_id: str, _since: Any) -> int:
            return 0

        # A replica with a short lease ttl begins an execution and dies (its
        # connection closes, nothing renews or ends the lease).
        lease_ttl_s = 1.5
        dead = RedisLimiter(REDIS_URL, nothing_used, prefix=redis_prefix, lease_ttl_s=lease_ttl_s)
        await dead.begin(key)
        began = time.monotonic()
        await dead.aclose()
        assert await running_executions(running.address, secret) == 1

        async with authed_channel(running.address, secret) as channel:
            stub = epb_grpc.ExecutionServiceStub(channel)

            async def retry_until_admitted() -> tuple[int, float]:
                """Steady traffic on the key: an attempt every 50 ms until one runs."""
                refused = 0
                while time.monotonic() - began < 30:
                    try:
                        answer = await stub.ExecutePrompt(demo(), timeout=10)
                    except grpc.aio.AioRpcError as err:
                        assert error_details(err)[0].reason == "CONCURRENT_LIMIT_EXCEEDED"
                        refused += 1
                        await asyncio.sleep(0.05)
                        continue
                    assert answer.state == pb.EXECUTION_STATE_FULFILLED
                    return refused, time.monotonic() - began
                raise AssertionError("the dead replica's lease never expired")

            (refused, freed_after_s), probe = await while_attacking(running, retry_until_admitted())
        probe.assert_responsive()
        assert refused >= 5, "the slot was free before the lease could have expired"
        # Held for about the lease ttl: not released early, and not kept alive
        # by the traffic (generous upper bound for a busy machine).
        assert lease_ttl_s - 0.3 <= freed_after_s < lease_ttl_s + 8, freed_after_s
        assert await eventually_zero(running.address, secret) == 0

    async def test_a_long_execution_keeps_its_lease_past_the_ttl(
        self,
        start_server: Callable[..., Any],
        redis_prefix: str,
        redis_cleanup: None,
    ) -> None:
        lease_ttl_s = 0.6
        running: Running = await start_server(
            limits_backend="redis",
            limits_redis_prefix=redis_prefix,
            limits_lease_ttl_s=lease_ttl_s,
        )
        secret = await issue(running, concurrent_executions=1)
        async with authed_channel(running.address, secret) as channel:
            stub = epb_grpc.ExecutionServiceStub(channel)
            stream = stub.ExecutePromptStream(
                demo(output_tokens=40, chunks=12, chunk_interval_ms=250)
            )
            first = await stream.read()
            assert first.WhichOneof("event") == "initiated"
            await asyncio.sleep(lease_ttl_s * 3)  # well past the ttl: renewed meanwhile
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ExecutePrompt(demo(), timeout=10)
            assert error_details(caught.value)[0].reason == "CONCURRENT_LIMIT_EXCEEDED"
            assert await running_executions(running.address, secret) == 1
            events = [event async for event in stream]
            assert events[-1].WhichOneof("event") == "fulfilled"
        assert await eventually_zero(running.address, secret) == 0


# Streams their clients never read


LEAK_SIGNS = ("different Context", "never retrieved", "was destroyed but it is pending")


class TestDroppedStreams:
    """Streams dropped unread log nothing and give back every concurrency slot."""

    @pytest.mark.parametrize("backend", ["memory", "redis"])
    async def test_dropped_streams_log_nothing_and_release_their_slots(
        self,
        start_server: Callable[..., Any],
        redis_prefix: str,
        redis_cleanup: None,
        caplog: pytest.LogCaptureFixture,
        backend: str,
    ) -> None:
        running: Running = await start_server(
            limits_backend=backend, limits_redis_prefix=redis_prefix
        )
        secret = await issue(running, concurrent_executions=100)
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        previous = loop.get_exception_handler()

        def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            reported.append(f"{context.get('message')}: {context.get('exception')!r}")

        loop.set_exception_handler(record)
        caplog.set_level(logging.WARNING)
        try:
            slow = demo(output_tokens=80, chunks=40, chunk_interval_ms=100)
            # Cancelled without a single read.
            async with authed_channel(running.address, secret) as channel:
                stub = epb_grpc.ExecutionServiceStub(channel)
                unread = [stub.ExecutePromptStream(slow) for _ in range(10)]
                await asyncio.sleep(0.5)  # they are running on the server
                assert await running_executions(running.address, secret) == 10
                for call in unread:
                    call.cancel()
                # Read once, then cancelled.
                once = [stub.ExecutePromptStream(slow) for _ in range(5)]
                for call in once:
                    await call.read()
                    call.cancel()
            # Never read, the channel closed under them (the client went away).
            channel = authed_channel(running.address, secret)
            stub = epb_grpc.ExecutionServiceStub(channel)
            abandoned = [stub.ExecutePromptStream(slow) for _ in range(5)]
            await asyncio.sleep(0.5)
            await channel.close()
            del abandoned, unread, once
            gc.collect()

            assert await eventually_zero(running.address, secret) == 0
            await asyncio.sleep(0.5)  # finalizers that would complain have run by now
            gc.collect()
            await asyncio.sleep(0.1)
        finally:
            loop.set_exception_handler(previous)
        logged = [r.getMessage() for r in caplog.records] + [
            str(r.exc_info[1]) for r in caplog.records if r.exc_info
        ]
        assert not [m for m in reported + logged if any(s in m for s in LEAK_SIGNS)], (
            reported,
            logged,
        )
        assert not reported, reported
