"""Property-based tests: random bytes and random valid-shaped requests at every RPC.

Requests are generated from the message descriptors, so every field of every
request (nested messages, oneofs, maps, enums with unknown numbers, Struct
values, out-of-range times) is exercised, and a new RPC or field is fuzzed
without touching this file. Whatever arrives, the server answers with a
status that is not INTERNAL or UNKNOWN, every error carries an ErrorInfo and
no internals, the server stays healthy, and what it stored stays consistent.

The examples are derandomized (the same on every run, so CI never flakes);
``HYPOTHESIS_PROFILE=explore`` runs many more random ones.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import (
    admin_service_pb2_grpc,
    execution_service_pb2_grpc,
    prompt_service_pb2_grpc,
)
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.config import Settings
from promptgate.server import PromptgateServer
from tests.conftest import error_details
from tests.test_auth_hostile import RPCS, Rpc, assert_no_internals, bearer

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = 40 if PROFILE == "explore" else 1

BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}
CALL_TIMEOUT_S = 5.0
T = FieldDescriptor

# Strings that mean something to the server, so random requests reach past
# "not found" into real prompts, versions, tags and templates.
MEANINGFUL = (
    "demo",
    "latest",
    "production",
    "question",
    "mock-1",
    "mock",
    "openai",
    "mock-cut-1",
    "user",
    "{{ question }}",
    "{{ question | upper }} {% for i in range(3) %}{{ i }}{% endfor %}",
    "{{ undefined_thing }}",
    "{% if %}",
    "{{ ''.__class__ }}",
    "{{ question * 1000 }}",
    '{"type": "object"}',
    '{"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}',
    "https://example.com/hook",
    "http://169.254.169.254/latest",
    "exe_00000000000000000000000000",
    "bat_00000000000000000000000000",
    "",
)
# Ids of things that exist (executions, batches, prompts, versions, keys),
# filled in by the fixture and drawn from at generation time.
POOL: list[str] = list(MEANINGFUL)
pooled = st.integers(0, 10**6).map(lambda i: POOL[i % len(POOL)])
texts = st.one_of(pooled, st.text(max_size=40))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**53), 2**53),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
# What the mock provider obeys; short latencies so calls finish quickly.
mock_controls = st.fixed_dictionaries(
    {},
    optional={
        "text": texts,
        "output_tokens": st.integers(-5, 50),
        "input_tokens": st.integers(-5, 50),
        "latency_ms": st.integers(-10, 30),
        "chunks": st.integers(-2, 8),
        "chunk_interval_ms": st.integers(-1, 5),
        "error_status": st.sampled_from([400, 401, 404, 429, 500, 503, 999, -1]),
        "retry_after_s": st.floats(allow_nan=True, allow_infinity=True),
        "cut_after": st.integers(-1, 4),
        "function_call": json_values,
    },
)
INT_RANGES = {
    T.TYPE_INT32: (-(2**31), 2**31 - 1),
    T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1),
    T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1),
    T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_UINT64: (0, 2**64 - 1),
    T.TYPE_FIXED64: (0, 2**64 - 1),
}


def _struct(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(value, dict):
        out.struct_value.update(value)
    elif isinstance(value, list):
        out.list_value.extend(value)
    elif value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = float(value)
    else:
        out.string_value = value
    return out


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        return st.one_of(st.integers(-3, 100), st.integers(low, high))
    if field.type in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64)
    if field.type == T.TYPE_BOOL:
        return st.booleans()
    if field.type == T.TYPE_STRING:
        return texts
    if field.type == T.TYPE_BYTES:
        return st.binary(max_size=20)
    if field.type == T.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 1000))
    raise AssertionError(f"unhandled field type {field.type}")


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random messages of ``descriptor``'s type, every field optional."""
    if depth == 0 and descriptor.full_name in VALID:
        # Mostly valid requests, some with a field or two made random, reach
        # deeper than wholly random ones (which fail validation at once).
        valid = VALID[descriptor.full_name]()
        return st.one_of(
            _fields(descriptor, 0),
            valid,
            st.tuples(valid, st.lists(one_field(descriptor), min_size=1, max_size=2)).map(_merged),
        )
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        return st.dictionaries(texts, json_values, max_size=3).map(lambda d: _filled(cls, struct=d))
    if name == "google.protobuf.Value":
        return json_values.map(_struct)
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.one_of(st.integers(-100, 10**10), st.integers(-(2**63), 2**63 - 1)),
            st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)),
        )
    if depth > 3:
        return st.just(cls())
    if name == "promptgate.v1.ModelParameters":
        base = _fields(descriptor, depth)
        return st.tuples(base, st.one_of(st.none(), mock_controls)).map(_with_mock)
    return _fields(descriptor, depth)


def _fields(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            values = (
                message(value_field.message_type, depth + 1)
                if value_field.message_type is not None
                else _scalar(value_field)
            )
            parts[field.name] = st.dictionaries(_scalar(key_field), values, max_size=2)
        elif field.message_type is not None:
            one = message(field.message_type, depth + 1)
            parts[field.name] = (
                st.lists(one, max_size=3) if field.is_repeated else st.one_of(st.none(), one)
            )
        else:
            one = _scalar(field)
            parts[field.name] = (
                st.lists(one, max_size=3) if field.is_repeated else st.one_of(st.none(), one)
            )
    return st.fixed_dictionaries({}, optional=parts).map(lambda values: _build(cls, values))


def one_field(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with one random field set."""
    cls = message_factory.GetMessageClass(descriptor)

    def single(field: FieldDescriptor) -> st.SearchStrategy[Message]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return _fields(descriptor, 1)
        if field.message_type is not None:
            one: st.SearchStrategy[Any] = message(field.message_type, 1)
        else:
            one = _scalar(field)
        if field.is_repeated:
            one = st.lists(one, min_size=1, max_size=3)
        return one.map(lambda value: _build(cls, {field.name: value}))

    return st.sampled_from(list(descriptor.fields)).flatmap(single)


def _merged(parts: tuple[Message, list[Message]]) -> Message:
    base, extra = parts
    out = type(base)()
    out.CopyFrom(base)
    for part in extra:
        out.MergeFrom(part)
    return out


def _inputs() -> st.SearchStrategy[list[pb.PromptInput]]:
    value = st.one_of(
        texts.map(lambda t: pb.PromptInput(name="question", string_value=t)),
        message(pb.PromptInput.DESCRIPTOR, 2),
    )
    return st.lists(value, min_size=1, max_size=2)


def _parameters() -> st.SearchStrategy[Any]:
    return st.tuples(st.just(pb.ModelParameters()), st.one_of(st.none(), mock_controls)).map(
        _with_mock
    )


def _inline() -> st.SearchStrategy[pb.InlinePrompt]:
    return st.builds(
        pb.InlinePrompt,
        model=st.sampled_from(["mock-1", "mock-fast", "mock-cut-1", "mock-error-503"]),
        prompt=texts,
        parameters=_parameters(),
    )


def _execute() -> st.SearchStrategy[Message]:
    return st.one_of(
        st.builds(
            epb.ExecutePromptRequest,
            prompt=st.just("demo"),
            release_tag=st.sampled_from(["", "latest", "production"]),
            inputs=_inputs(),
            parameters=_parameters(),
            external_id=st.one_of(st.just(""), texts),
        ),
        st.builds(epb.ExecutePromptRequest, inline_prompt=_inline(), parameters=_parameters()),
    )


def _version() -> st.SearchStrategy[ppb.PromptVersion]:
    template = st.builds(pb.PromptTemplateMessage, role=st.sampled_from([1, 2, 3]), template=texts)
    return st.builds(
        ppb.PromptVersion,
        model=st.sampled_from(["mock-1", "gpt-4o-mini", "claude-3-5-haiku-latest"]),
        messages=st.lists(template, min_size=1, max_size=3),
        input_variables=st.lists(message(pb.InputVariable.DESCRIPTOR, 2), max_size=2),
    )


def _numbered(items: list[epb.BatchItem]) -> list[epb.BatchItem]:
    for i, item in enumerate(items):
        item.custom_id = f"item-{i}"
    return items


VALID: dict[str, Any] = {
    "promptgate.v1.ExecutePromptRequest": _execute,
    "promptgate.v1.ExecuteBatchRequest": lambda: st.builds(
        epb.ExecuteBatchRequest,
        prompt=st.just("demo"),
        items=st.lists(
            st.builds(epb.BatchItem, inputs=_inputs(), parameters=_parameters()),
            min_size=1,
            max_size=3,
        ).map(_numbered),
        max_concurrency=st.integers(0, 4),
    ),
    "promptgate.v1.SubmitActualsRequest": lambda: st.builds(
        epb.SubmitActualsRequest,
        actuals=st.lists(
            st.builds(
                epb.Actual,
                execution_id=pooled,
                quality=st.floats(allow_nan=True, allow_infinity=True),
                desired_output=texts,
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    "promptgate.v1.CreatePromptRequest": lambda: st.builds(
        ppb.CreatePromptRequest, name=texts, description=texts
    ),
    "promptgate.v1.CreatePromptVersionRequest": lambda: st.builds(
        ppb.CreatePromptVersionRequest,
        prompt=st.sampled_from(["demo", "fuzzed"]),
        version=_version(),
        release_tags=st.lists(texts, max_size=2),
        allow_breaking_changes=st.booleans(),
        validate_only=st.booleans(),
    ),
    "promptgate.v1.SetReleaseTagRequest": lambda: st.builds(
        ppb.SetReleaseTagRequest,
        prompt=st.sampled_from(["demo", "fuzzed"]),
        tag=texts,
        version=st.integers(-1, 4),
        allow_breaking_changes=st.booleans(),
        validate_only=st.booleans(),
    ),
    "promptgate.v1.RenderPromptRequest": lambda: st.builds(
        ppb.RenderPromptRequest, prompt=st.just("demo"), inputs=_inputs()
    ),
}


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    out = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = out.DESCRIPTOR.fields_by_name[name]
        target = getattr(out, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(out, name, value)  # the last oneof member set wins
    return out


def _filled(cls: type[Message], struct: dict[str, Any]) -> Message:
    out = cls()
    out.update(struct)  # type: ignore[attr-defined]
    return out


def _with_mock(pair: tuple[Message, dict[str, Any] | None]) -> Message:
    params, mock = pair
    if mock is not None:
        params.extra.update({"mock": mock})  # type: ignore[attr-defined]
    return params


def call(channel: grpc.Channel, rpc: Rpc, request: bytes) -> grpc.RpcError | None:
    """Send serialized ``request`` to ``rpc``; the error, or None when it succeeded."""
    metadata = bearer(_KEY[0])
    try:
        if rpc.descriptor.server_streaming:
            for _ in channel.unary_stream(rpc.path)(
                request, metadata=metadata, timeout=CALL_TIMEOUT_S
            ):
                pass
        else:
            channel.unary_unary(rpc.path)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        return err
    return None


_KEY: list[str] = []


def check(err: grpc.RpcError | None, rpc: Rpc, sent: Any) -> None:
    if err is None:
        return
    where = f"{rpc.short} <- {sent!r:.2000}"
    code = err.code()  # type: ignore[attr-defined]
    assert code not in BROKEN, f"{where}: {code} {err.details()}"  # type: ignore[attr-defined]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return  # may be the client's own deadline, which has no details
    info, _ = error_details(err)  # type: ignore[arg-type]
    assert info.reason, where
    assert_no_internals(err, where)  # type: ignore[arg-type]


@dataclass
class Live:
    """A server on its own event loop in a thread, and a blocking channel to it."""

    server: PromptgateServer
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module: the fuzzed traffic accumulates in one store."""
    path = tmp_path_factory.mktemp("fuzz") / "promptgate.db"
    settings_ = Settings(
        host="127.0.0.1",
        port=0,
        database_url=f"sqlite+aiosqlite:///{path}",
        dev=True,
        grace_period_s=1.0,
        retry_max_attempts=1,
        openai_api_key=None,
        openai_base_url="http://127.0.0.1:9/v1",
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = PromptgateServer(settings_)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    assert server.dev_key
    _KEY[:] = [server.dev_key]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    _seed_pool(channel)
    try:
        yield Live(server=server, loop=loop, channel=channel)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(grace=0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _seed_pool(channel: grpc.Channel) -> None:
    """Real resources for random requests to hit."""
    metadata = bearer(_KEY[0])
    executions = execution_service_pb2_grpc.ExecutionServiceStub(channel)
    prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    question = [pb.PromptInput(name="question", string_value="seed")]
    done = executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="demo", inputs=question, external_id="seed-external"),
        metadata=metadata,
    )
    batch = executions.ExecuteBatch(
        epb.ExecuteBatchRequest(
            prompt="demo", items=[epb.BatchItem(custom_id="seed", inputs=question)]
        ),
        metadata=metadata,
    ).batch
    prompt = prompts.CreatePrompt(ppb.CreatePromptRequest(name="fuzzed"), metadata=metadata)
    version = prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt="fuzzed",
            version=ppb.PromptVersion(
                model="mock-1",
                messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="hi")],
            ),
        ),
        metadata=metadata,
    ).version
    key = admin.CreateApiKey(
        apb.CreateApiKeyRequest(name="fuzz", scopes=["prompt.execute"]), metadata=metadata
    )
    POOL.extend(
        [
            done.execution_id,
            "seed-external",
            batch.id,
            prompt.prompt.id,
            version.id,
            key.api_key.id,
        ]
    )


def assert_healthy_and_consistent(live: Live) -> None:
    """The server answers, and what it stored obeys the invariants."""
    health = health_pb2_grpc.HealthStub(live.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    live.run(live.server.executor.wait_idle(10))
    metadata = bearer(_KEY[0])
    prompts = prompt_service_pb2_grpc.PromptServiceStub(live.channel)
    listed = prompts.ListPrompts(
        ppb.ListPromptsRequest(page_size=1000, show_archived=True), metadata=metadata
    )
    assert any(p.name == "demo" for p in listed.prompts)
    for prompt in listed.prompts:
        versions = prompts.ListPromptVersions(
            ppb.ListPromptVersionsRequest(prompt=prompt.id, page_size=1000), metadata=metadata
        )
        numbers = sorted(v.version for v in versions.versions)
        assert numbers == list(range(1, len(numbers) + 1)), (prompt.name, numbers)
        tags = prompts.ListReleaseTags(
            ppb.ListReleaseTagsRequest(prompt=prompt.id), metadata=metadata
        )
        for tag in tags.release_tags:
            assert 1 <= tag.version <= len(numbers), (prompt.name, tag)
    executions = execution_service_pb2_grpc.ExecutionServiceStub(live.channel).ListExecutions(
        epb.ListExecutionsRequest(page_size=1000), metadata=metadata
    )
    for execution in executions.executions:
        assert execution.state in (pb.EXECUTION_STATE_FULFILLED, pb.EXECUTION_STATE_REJECTED)


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.short for rpc in RPCS])
def test_random_bytes_never_break_the_server(live: Live, rpc: Rpc) -> None:
    @settings(max_examples=15 * SCALE)
    @given(body=st.binary(max_size=200))
    def run(body: bytes) -> None:
        check(call(live.channel, rpc, body), rpc, body)

    run()
    assert_healthy_and_consistent(live)


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.short for rpc in RPCS])
def test_random_requests_never_break_the_server(live: Live, rpc: Rpc) -> None:
    @settings(max_examples=25 * SCALE)
    @given(request=message(rpc.descriptor.input_type))
    def run(request: Message) -> None:
        check(call(live.channel, rpc, request.SerializeToString()), rpc, request)

    run()
    assert_healthy_and_consistent(live)


def test_usage_agrees_with_the_executions_after_random_traffic(live: Live) -> None:
    execute = next(r for r in RPCS if r.short == "ExecutionService/ExecutePrompt")

    @settings(max_examples=30 * SCALE)
    @given(request=message(execute.descriptor.input_type))
    def run(request: Message) -> None:
        check(call(live.channel, execute, request.SerializeToString()), execute, request)

    run()
    live.run(live.server.executor.wait_idle(10))
    metadata = bearer(_KEY[0])
    listed = execution_service_pb2_grpc.ExecutionServiceStub(live.channel).ListExecutions(
        epb.ListExecutionsRequest(page_size=1000), metadata=metadata
    )
    usage = admin_service_pb2_grpc.AdminServiceStub(live.channel).GetUsage(
        apb.GetUsageRequest(), metadata=metadata
    )
    assert len(listed.executions) > 0
    assert usage.total.executions == len(listed.executions)
    assert usage.total.fulfilled == sum(
        e.state == pb.EXECUTION_STATE_FULFILLED for e in listed.executions
    )
