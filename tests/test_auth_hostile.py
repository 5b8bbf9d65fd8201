"""Hostile callers through real gRPC: keys, scopes, workspaces and what errors leak.

Every RPC of ExecutionService, PromptService, AdminService and ChainService is enumerated
from the service descriptors, so a new RPC is covered by the unauthenticated
matrix at once and must be given its scopes in ``ALLOWED_SCOPES`` below.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import (
    admin_service_pb2_grpc,
    execution_service_pb2_grpc,
    prompt_service_pb2_grpc,
)
from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel, error_details

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
AUTH_REFUSALS = {UNAUTHENTICATED, PERMISSION_DENIED}
CALL_TIMEOUT_S = 20.0

SERVICES = (
    epb.DESCRIPTOR.services_by_name["ExecutionService"],
    ppb.DESCRIPTOR.services_by_name["PromptService"],
    apb.DESCRIPTOR.services_by_name["AdminService"],
    cpb.DESCRIPTOR.services_by_name["ChainService"],
)

# The scopes that let a key call each RPC, besides admin.manage (which implies
# every scope). An empty set: any valid key. This is the contract written down
# independently of promptgate.api.auth.scopes_for, so a change there shows here.
_EXECUTE_OR_TEMPLATES = frozenset({Scope.EXECUTE, Scope.TEMPLATES})
ALLOWED_SCOPES: dict[str, frozenset[Scope]] = {
    **{
        f"ExecutionService/{name}": frozenset({Scope.EXECUTE})
        for name in (
            "ExecutePrompt",
            "ExecutePromptStream",
            "GetExecution",
            "ListExecutions",
            "SubmitActuals",
            "ExecuteBatch",
            "GetBatch",
            "WatchBatch",
            "ListBatchResults",
            "CancelBatch",
        )
    },
    **{
        f"PromptService/{name}": frozenset({Scope.TEMPLATES})
        for name in (
            "CreatePrompt",
            "ArchivePrompt",
            "UnarchivePrompt",
            "CreatePromptVersion",
            "SetReleaseTag",
            "CreatePartial",
            "CreatePartialVersion",
            "ArchivePartial",
            "UnarchivePartial",
        )
    },
    **{
        f"PromptService/{name}": _EXECUTE_OR_TEMPLATES
        for name in (
            "GetPrompt",
            "ListPrompts",
            "GetPromptVersion",
            "ListPromptVersions",
            "ListReleaseTags",
            "ListReleaseTagHistory",
            "RenderPrompt",
            "GetPartial",
            "ListPartials",
            "GetPartialVersion",
            "ListPartialVersions",
        )
    },
    **{
        f"AdminService/{name}": frozenset({Scope.ADMIN})
        for name in (
            "CreateApiKey",
            "ListApiKeys",
            "RevokeApiKey",
            "GetWebhookSecret",
            "ListAuditEvents",
        )
    },
    "AdminService/WhoAmI": frozenset(),
    "AdminService/ListModels": frozenset(),
    "AdminService/GetUsage": frozenset({Scope.ANALYTICS}),
    **{
        f"ChainService/{name}": frozenset({Scope.TEMPLATES})
        for name in (
            "CreateChain",
            "ArchiveChain",
            "UnarchiveChain",
            "CreateChainVersion",
            "SetChainReleaseTag",
        )
    },
    **{
        f"ChainService/{name}": _EXECUTE_OR_TEMPLATES
        for name in (
            "GetChain",
            "ListChains",
            "GetChainVersion",
            "ListChainVersions",
            "ListChainReleaseTags",
            "ListChainReleaseTagHistory",
            "GetChainExecution",
            "ListChainExecutions",
        )
    },
    **{
        f"ChainService/{name}": frozenset({Scope.EXECUTE})
        for name in ("ExecuteChain", "ExecuteChainStream")
    },
}


@dataclass(frozen=True)
class Rpc:
    """One RPC of a promptgate service, from its descriptor."""

    descriptor: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def short(self) -> str:
        return f"{self.descriptor.containing_service.name}/{self.descriptor.name}"

    @property
    def request_type(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    @property
    def response_type(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.output_type)


RPCS = tuple(Rpc(method) for service in SERVICES for method in service.methods)


def _question(text: str = "Who goes there?") -> list[pb.PromptInput]:
    return [pb.PromptInput(name="question", string_value=text)]


def _chain() -> cpb.InlineChain:
    prompt = pb.InlinePrompt(model="mock-1", prompt="Say {{ question }}")
    return cpb.InlineChain(
        steps=[cpb.ChainStep(name="say", inline_prompt=prompt, output_variable="said")]
    )


def _chain_version() -> cpb.ChainVersion:
    return cpb.ChainVersion(steps=_chain().steps)


def _version_body() -> ppb.PromptVersion:
    return ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="Hello")],
    )


# A minimal valid-shaped request per RPC and the outcome the admin key gets for
# it. Requests that change things aim at resources that do not exist (NOT_FOUND)
# or create fresh ones, so the matrix can run them in any order and many times.
Factory = Callable[[], Message]
MINIMAL: dict[str, tuple[Factory, grpc.StatusCode]] = {
    "ExecutionService/ExecutePrompt": (
        lambda: epb.ExecutePromptRequest(prompt="demo", inputs=_question()),
        OK,
    ),
    "ExecutionService/ExecutePromptStream": (
        lambda: epb.ExecutePromptRequest(prompt="demo", inputs=_question()),
        OK,
    ),
    "ExecutionService/GetExecution": (
        lambda: epb.GetExecutionRequest(execution_id="exe_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "ExecutionService/ListExecutions": (lambda: epb.ListExecutionsRequest(), OK),
    "ExecutionService/SubmitActuals": (
        lambda: epb.SubmitActualsRequest(
            actuals=[epb.Actual(execution_id="exe_00000000000000000000000000", quality=1.0)]
        ),
        NOT_FOUND,
    ),
    "ExecutionService/ExecuteBatch": (
        lambda: epb.ExecuteBatchRequest(
            prompt="demo", items=[epb.BatchItem(custom_id="only", inputs=_question())]
        ),
        OK,
    ),
    "ExecutionService/GetBatch": (
        lambda: epb.GetBatchRequest(batch_id="bat_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "ExecutionService/WatchBatch": (
        lambda: epb.WatchBatchRequest(batch_id="bat_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "ExecutionService/ListBatchResults": (
        lambda: epb.ListBatchResultsRequest(batch_id="bat_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "ExecutionService/CancelBatch": (
        lambda: epb.CancelBatchRequest(batch_id="bat_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "PromptService/CreatePrompt": (
        lambda: ppb.CreatePromptRequest(name=f"matrix-{uuid.uuid4().hex[:12]}"),
        OK,
    ),
    "PromptService/GetPrompt": (lambda: ppb.GetPromptRequest(prompt="demo"), OK),
    "PromptService/ListPrompts": (lambda: ppb.ListPromptsRequest(), OK),
    "PromptService/ArchivePrompt": (
        lambda: ppb.ArchivePromptRequest(prompt="no-such-prompt"),
        NOT_FOUND,
    ),
    "PromptService/UnarchivePrompt": (
        lambda: ppb.UnarchivePromptRequest(prompt="no-such-prompt"),
        NOT_FOUND,
    ),
    "PromptService/CreatePromptVersion": (
        lambda: ppb.CreatePromptVersionRequest(prompt="no-such-prompt", version=_version_body()),
        NOT_FOUND,
    ),
    "PromptService/GetPromptVersion": (
        lambda: ppb.GetPromptVersionRequest(prompt="demo", version=1),
        OK,
    ),
    "PromptService/ListPromptVersions": (
        lambda: ppb.ListPromptVersionsRequest(prompt="demo"),
        OK,
    ),
    "PromptService/SetReleaseTag": (
        lambda: ppb.SetReleaseTagRequest(prompt="no-such-prompt", tag="staging", version=1),
        NOT_FOUND,
    ),
    "PromptService/ListReleaseTags": (lambda: ppb.ListReleaseTagsRequest(prompt="demo"), OK),
    "PromptService/ListReleaseTagHistory": (
        lambda: ppb.ListReleaseTagHistoryRequest(prompt="demo"),
        OK,
    ),
    "PromptService/RenderPrompt": (
        lambda: ppb.RenderPromptRequest(prompt="demo", inputs=_question()),
        OK,
    ),
    "PromptService/CreatePartial": (
        lambda: ppb.CreatePartialRequest(name=f"matrix-{uuid.uuid4().hex[:12]}", content="Hi"),
        OK,
    ),
    "PromptService/GetPartial": (
        lambda: ppb.GetPartialRequest(partial="no-such-partial"),
        NOT_FOUND,
    ),
    "PromptService/ListPartials": (lambda: ppb.ListPartialsRequest(), OK),
    "PromptService/ArchivePartial": (
        lambda: ppb.ArchivePartialRequest(partial="no-such-partial"),
        NOT_FOUND,
    ),
    "PromptService/UnarchivePartial": (
        lambda: ppb.UnarchivePartialRequest(partial="no-such-partial"),
        NOT_FOUND,
    ),
    "PromptService/CreatePartialVersion": (
        lambda: ppb.CreatePartialVersionRequest(partial="no-such-partial", content="Hi"),
        NOT_FOUND,
    ),
    "PromptService/GetPartialVersion": (
        lambda: ppb.GetPartialVersionRequest(partial="no-such-partial"),
        NOT_FOUND,
    ),
    "PromptService/ListPartialVersions": (
        lambda: ppb.ListPartialVersionsRequest(partial="no-such-partial"),
        NOT_FOUND,
    ),
    "AdminService/CreateApiKey": (
        lambda: apb.CreateApiKeyRequest(name="matrix", scopes=["prompt.execute"], plan="free"),
        OK,
    ),
    "AdminService/ListApiKeys": (lambda: apb.ListApiKeysRequest(), OK),
    "AdminService/RevokeApiKey": (
        lambda: apb.RevokeApiKeyRequest(key_id="00000000000000000000000000"),
        NOT_FOUND,
    ),
    "AdminService/WhoAmI": (lambda: apb.WhoAmIRequest(), OK),
    "AdminService/ListModels": (lambda: apb.ListModelsRequest(), OK),
    "AdminService/GetUsage": (lambda: apb.GetUsageRequest(), OK),
    "AdminService/ListAuditEvents": (lambda: apb.ListAuditEventsRequest(), OK),
    # The test servers have no webhook secret configured.
    "AdminService/GetWebhookSecret": (
        lambda: apb.GetWebhookSecretRequest(),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    "ChainService/CreateChain": (
        lambda: cpb.CreateChainRequest(name=f"matrix-{uuid.uuid4().hex[:12]}"),
        OK,
    ),
    "ChainService/GetChain": (lambda: cpb.GetChainRequest(chain="no-such-chain"), NOT_FOUND),
    "ChainService/ListChains": (lambda: cpb.ListChainsRequest(), OK),
    "ChainService/ArchiveChain": (
        lambda: cpb.ArchiveChainRequest(chain="no-such-chain"),
        NOT_FOUND,
    ),
    "ChainService/UnarchiveChain": (
        lambda: cpb.UnarchiveChainRequest(chain="no-such-chain"),
        NOT_FOUND,
    ),
    "ChainService/CreateChainVersion": (
        lambda: cpb.CreateChainVersionRequest(chain="no-such-chain", version=_chain_version()),
        NOT_FOUND,
    ),
    "ChainService/GetChainVersion": (
        lambda: cpb.GetChainVersionRequest(chain="no-such-chain", version=1),
        NOT_FOUND,
    ),
    "ChainService/ListChainVersions": (
        lambda: cpb.ListChainVersionsRequest(chain="no-such-chain"),
        NOT_FOUND,
    ),
    "ChainService/SetChainReleaseTag": (
        lambda: cpb.SetChainReleaseTagRequest(chain="no-such-chain", tag="staging", version=1),
        NOT_FOUND,
    ),
    "ChainService/ListChainReleaseTags": (
        lambda: cpb.ListChainReleaseTagsRequest(chain="no-such-chain"),
        NOT_FOUND,
    ),
    "ChainService/ListChainReleaseTagHistory": (
        lambda: cpb.ListChainReleaseTagHistoryRequest(chain="no-such-chain"),
        NOT_FOUND,
    ),
    "ChainService/ExecuteChain": (
        lambda: cpb.ExecuteChainRequest(inline_chain=_chain(), inputs=_question()),
        OK,
    ),
    "ChainService/ExecuteChainStream": (
        lambda: cpb.ExecuteChainRequest(inline_chain=_chain(), inputs=_question()),
        OK,
    ),
    "ChainService/GetChainExecution": (
        lambda: cpb.GetChainExecutionRequest(chain_execution_id="chx_00000000000000000000000000"),
        NOT_FOUND,
    ),
    "ChainService/ListChainExecutions": (lambda: cpb.ListChainExecutionsRequest(), OK),
}


def minimal_request(rpc: Rpc) -> Message:
    """The RPC's minimal request; an empty one for an RPC this file does not know yet."""
    entry = MINIMAL.get(rpc.short)
    return entry[0]() if entry else rpc.request_type()


async def invoke(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Message,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError | None, list[Message]]:
    """Call ``rpc`` and return its status code, the error if any and the responses."""
    serializer = rpc.request_type.SerializeToString
    deserializer = rpc.response_type.FromString
    try:
        if rpc.descriptor.server_streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=serializer, response_deserializer=deserializer
            )
            responses = [
                r async for r in stream(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
            ]
        else:
            unary = channel.unary_unary(
                rpc.path, request_serializer=serializer, response_deserializer=deserializer
            )
            responses = [await unary(request, metadata=metadata, timeout=CALL_TIMEOUT_S)]
    except grpc.aio.AioRpcError as err:
        return err.code(), err, []
    return OK, None, responses


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def x_api_key(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


LEAK_MARKERS = ("Traceback", 'File "', ".py", "<class", "Error:", "sqlalchemy", "sqlite")


def assert_no_internals(err: grpc.aio.AioRpcError, where: str) -> None:
    """The status carries no stack trace, exception text or storage details."""
    texts = [err.details() or ""]
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        texts.append(status.message)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                texts.extend(info.metadata.values())
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                texts.extend(v.description for v in bad.field_violations)
    for key, value in err.trailing_metadata() or ():
        if not key.endswith("-bin"):
            texts.append(str(value))
    for text in texts:
        for marker in LEAK_MARKERS:
            assert marker not in text, f"{where}: {marker!r} leaks in {text!r}"


def refusal(err: grpc.aio.AioRpcError | None) -> tuple[str, str]:
    """(reason, domain) of an auth refusal, checking it leaks nothing."""
    assert err is not None
    info, bad = error_details(err)
    assert bad is None
    return info.reason, info.domain


async def scoped_key(pg: Running, *scopes: Scope, workspace: str = "default", **kw: Any) -> str:
    issued = await pg.server.keys.create(
        workspace, name=f"{'+'.join(scopes)} key", scopes=list(scopes), plan="unlimited", **kw
    )
    return issued.secret


@pytest.fixture
async def bare(pg: Running) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to ``pg`` that sends no key unless a call adds one."""
    async with grpc.aio.insecure_channel(pg.address) as channel:
        yield channel


# The RPC table


def test_every_rpc_is_enumerated_and_has_a_declared_scope_and_request() -> None:
    shorts = [rpc.short for rpc in RPCS]
    assert len(shorts) == len(set(shorts))
    # The services as the protos define them today; more is fine, fewer is not.
    assert {"ExecutionService/ExecutePrompt", "PromptService/RenderPrompt"} <= set(shorts)
    assert len(shorts) >= 27
    undeclared = sorted(set(shorts) - set(ALLOWED_SCOPES))
    assert not undeclared, f"declare the scopes of new RPCs in ALLOWED_SCOPES: {undeclared}"
    without_request = sorted(set(shorts) - set(MINIMAL))
    assert not without_request, f"give new RPCs a minimal request in MINIMAL: {without_request}"
    assert not set(ALLOWED_SCOPES) - set(shorts), "ALLOWED_SCOPES names RPCs that do not exist"


async def test_the_minimal_requests_are_valid_shaped_for_the_admin_key(pg: Running) -> None:
    """Each request gets its expected domain answer: the matrix tests auth, not typos."""
    wrong: list[str] = []
    for rpc in RPCS:
        expected = MINIMAL[rpc.short][1] if rpc.short in MINIMAL else None
        code, err, responses = await invoke(pg.channel, rpc, minimal_request(rpc))
        if expected is not None and code != expected:
            wrong.append(f"{rpc.short}: {code} {err.details() if err else ''}")
        if code == OK:
            assert responses, rpc.short
        elif err is not None:
            assert_no_internals(err, rpc.short)
    assert not wrong, wrong


# Missing and bad keys


async def test_no_key_is_unauthenticated_missing_authorization_on_every_rpc(pg: Running) -> None:
    executions_before = len(
        (await pg.executions.ListExecutions(epb.ListExecutionsRequest())).executions
    )
    async with grpc.aio.insecure_channel(pg.address) as bare:
        wrong: list[str] = []
        for rpc in RPCS:
            for metadata in ((), (("authorization", ""),), (("x-api-key", ""),)):
                code, err, _ = await invoke(bare, rpc, minimal_request(rpc), metadata)
                if code != UNAUTHENTICATED:
                    wrong.append(f"{rpc.short} {metadata}: {code}")
                    continue
                assert err is not None
                assert_no_internals(err, rpc.short)
                if refusal(err) != ("MISSING_AUTHORIZATION", "promptgate"):
                    wrong.append(f"{rpc.short} {metadata}: reason {refusal(err)}")
                assert "Bearer" in (err.details() or "")  # tells the caller how to send a key
    assert not wrong, wrong
    # Nothing ran: refused executions and batches are not recorded.
    after = (await pg.executions.ListExecutions(epb.ListExecutionsRequest())).executions
    assert len(after) == executions_before


async def test_malformed_unknown_revoked_and_expired_keys_are_refused_on_every_rpc(
    pg: Running,
    bare: grpc.aio.Channel,
) -> None:
    admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
    good = await scoped_key(pg, Scope.ADMIN)
    key_id, secret = good.removeprefix("pgk_").split(".", 1)

    # A revoked key: used first (so the server has it cached), then revoked through the API.
    revoked = await scoped_key(pg, Scope.ADMIN)
    async with authed_channel(pg.address, revoked) as channel:
        who = await admin_service_pb2_grpc.AdminServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
        await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=who.api_key.id))

    # An expired key: it works until its expiry time, then stops even though cached.
    expires_at = datetime.now(UTC) + timedelta(seconds=1.0)
    expired = await scoped_key(pg, Scope.ADMIN, expires_at=expires_at)
    async with authed_channel(pg.address, expired) as channel:
        who = await admin_service_pb2_grpc.AdminServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
        assert who.api_key.HasField("expire_time")
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)

    invalid_keys = {
        "nope": "nope",
        "wrong prefix": f"sk_{key_id}.{secret}",
        "no secret": f"pgk_{key_id}",
        "empty secret": f"pgk_{key_id}.",
        "wrong secret": f"pgk_{key_id}.{secret[::-1]}",
        "secret of another id": f"pgk_{'0' * 26}.{secret}",
        "unknown well-formed": f"pgk_{'a' * 26}.{'b' * 43}",
        "upper-case id": f"pgk_{key_id.upper()}.{secret}" if key_id.upper() != key_id else "x",
        "trailing junk": f"{good}x",
        "revoked": revoked,
        "expired": expired,
    }
    missing = {
        "empty bearer": (("authorization", "Bearer "),),
        "bearer only": (("authorization", "Bearer"),),
    }
    # An authorization header that is not "Bearer <key>" is refused as such,
    # even though it holds the good key.
    malformed = {
        "other scheme": (("authorization", f"Basic {good}"),),
        "bare key in authorization": (("authorization", good),),
    }
    wrong: list[str] = []
    for rpc in RPCS:
        for label, key in invalid_keys.items():
            for form in (bearer, x_api_key):
                code, err, _ = await invoke(bare, rpc, minimal_request(rpc), form(key))
                if code != UNAUTHENTICATED:
                    wrong.append(f"{rpc.short} {label} via {form.__name__}: {code}")
                    continue
                assert err is not None
                assert_no_internals(err, rpc.short)
                if refusal(err) != ("INVALID_API_KEY", "promptgate"):
                    wrong.append(f"{rpc.short} {label}: reason {refusal(err)}")
                # The key (or any part of its secret) is never echoed back.
                assert secret not in (err.details() or "")
        for label, metadata in missing.items():
            code, err, _ = await invoke(bare, rpc, minimal_request(rpc), metadata)
            if code != UNAUTHENTICATED:
                wrong.append(f"{rpc.short} {label}: {code}")
                continue
            assert err is not None
            if refusal(err) != ("MISSING_AUTHORIZATION", "promptgate"):
                wrong.append(f"{rpc.short} {label}: reason {refusal(err)}")
        for label, metadata in malformed.items():
            code, err, _ = await invoke(bare, rpc, minimal_request(rpc), metadata)
            if code != UNAUTHENTICATED:
                wrong.append(f"{rpc.short} {label}: {code}")
                continue
            assert err is not None
            if refusal(err) != ("INVALID_AUTHORIZATION", "promptgate"):
                wrong.append(f"{rpc.short} {label}: reason {refusal(err)}")
            assert secret not in (err.details() or "")
    assert not wrong, wrong

    # The control: the same good key works in both header forms.
    for form in (bearer, x_api_key):
        code, err, responses = await invoke(
            bare, _rpc("AdminService/WhoAmI"), apb.WhoAmIRequest(), form(good)
        )
        assert code == OK, err
        assert responses[0].api_key.id == key_id  # type: ignore[attr-defined]


def _rpc(short: str) -> Rpc:
    return next(rpc for rpc in RPCS if rpc.short == short)


async def test_both_header_forms_carry_the_key(pg: Running, bare: grpc.aio.Channel) -> None:
    key = await scoped_key(pg, Scope.EXECUTE)
    execute = _rpc("ExecutionService/ExecutePrompt")
    for metadata in (
        bearer(key),
        (("authorization", f"bearer {key}"),),
        (("authorization", f"  Bearer   {key}  "),),
        x_api_key(key),
        (("x-api-key", f" {key} "),),
    ):
        code, err, responses = await invoke(bare, execute, minimal_request(execute), metadata)
        assert code == OK, (metadata, err)
        assert responses[0].state == pb.EXECUTION_STATE_FULFILLED  # type: ignore[attr-defined]
        # The answer carries the rate-limit metadata of an admitted call.


# Scopes


async def test_each_single_scope_key_is_refused_exactly_where_its_scope_does_not_reach(
    pg: Running, bare: grpc.aio.Channel
) -> None:
    keys = {scope: await scoped_key(pg, scope) for scope in Scope}
    prompts_before = {
        p.name for p in (await pg.prompts.ListPrompts(ppb.ListPromptsRequest())).prompts
    }
    executions_before = len(
        (await pg.executions.ListExecutions(epb.ListExecutionsRequest(page_size=1000))).executions
    )
    admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
    keys_before = len((await admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys)

    wrong: list[str] = []
    allowed_runs: dict[str, int] = {}
    for rpc in RPCS:
        allowed = ALLOWED_SCOPES[rpc.short]
        expected_ok = MINIMAL[rpc.short][1]
        for scope, key in keys.items():
            permitted = not allowed or scope in allowed or scope == Scope.ADMIN
            code, err, _ = await invoke(bare, rpc, minimal_request(rpc), bearer(key))
            if permitted:
                # Not refused for auth reasons: the same answer the admin key gets.
                if code != expected_ok:
                    wrong.append(f"{rpc.short} with {scope}: {code} (expected {expected_ok})")
                allowed_runs[rpc.short] = allowed_runs.get(rpc.short, 0) + (code == OK)
                continue
            if code != PERMISSION_DENIED:
                wrong.append(f"{rpc.short} with {scope}: {code}, expected PERMISSION_DENIED")
                continue
            assert err is not None
            assert_no_internals(err, rpc.short)
            info, bad = error_details(err)
            if (info.reason, info.domain) != ("INSUFFICIENT_PERMISSIONS", "promptgate"):
                wrong.append(f"{rpc.short} with {scope}: reason {info.reason}")
            assert bad is None
            needed = set(info.metadata.get("required_scope", "").split(" or "))
            if needed != {s.value for s in allowed}:
                wrong.append(f"{rpc.short}: required_scope {needed} != {allowed}")
    assert not wrong, wrong

    # Calls refused for scope changed nothing: CreatePrompt, ExecutePrompt,
    # ExecuteBatch and CreateApiKey ran only for the keys allowed to run them.
    prompts_after = {
        p.name for p in (await pg.prompts.ListPrompts(ppb.ListPromptsRequest())).prompts
    }
    assert len(prompts_after - prompts_before) == allowed_runs["PromptService/CreatePrompt"] == 2
    keys_after = len((await admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys)
    assert keys_after - keys_before == allowed_runs["AdminService/CreateApiKey"] == 1
    await asyncio.sleep(0)  # batch items run in the background; the direct executions:
    executions = (
        await pg.executions.ListExecutions(epb.ListExecutionsRequest(page_size=1000))
    ).executions
    direct = [e for e in executions if "batch_id" not in e.metadata and not e.chain_execution_id]
    assert allowed_runs["ExecutionService/ExecutePrompt"] == 2
    assert allowed_runs["ExecutionService/ExecutePromptStream"] == 2
    assert len(direct) - executions_before == 4
    # Each admitted one-step chain ran one step.
    steps = [e for e in executions if e.chain_execution_id]
    assert allowed_runs["ChainService/ExecuteChain"] == 2
    assert allowed_runs["ChainService/ExecuteChainStream"] == 2
    assert len(steps) == 4


async def test_the_specific_scope_refusals(pg: Running, bare: grpc.aio.Channel) -> None:
    """The cases named in the brief, spelled out."""
    cases = [
        (Scope.ANALYTICS, "ExecutionService/ExecutePrompt"),
        (Scope.TEMPLATES, "ExecutionService/ExecutePrompt"),
        (Scope.EXECUTE, "PromptService/CreatePrompt"),
        (Scope.EXECUTE, "AdminService/CreateApiKey"),
        (Scope.TEMPLATES, "AdminService/RevokeApiKey"),
        (Scope.ANALYTICS, "PromptService/GetPrompt"),
    ]
    for scope, short in cases:
        key = await scoped_key(pg, scope)
        rpc = _rpc(short)
        code, err, _ = await invoke(bare, rpc, minimal_request(rpc), x_api_key(key))
        assert code == PERMISSION_DENIED, (scope, short, code)
        assert refusal(err) == ("INSUFFICIENT_PERMISSIONS", "promptgate")
    # A key with two scopes gets the union.
    both = await scoped_key(pg, Scope.EXECUTE, Scope.TEMPLATES)
    for short in ("ExecutionService/ExecutePrompt", "PromptService/CreatePrompt"):
        rpc = _rpc(short)
        code, err, _ = await invoke(bare, rpc, minimal_request(rpc), bearer(both))
        assert code == OK, (short, err)


async def test_a_key_made_through_create_api_key_works_with_exactly_its_scopes(
    pg: Running, bare: grpc.aio.Channel
) -> None:
    admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
    created = await admin.CreateApiKey(
        apb.CreateApiKeyRequest(name="runner", scopes=["prompt.execute"], plan="unlimited")
    )
    assert created.secret.startswith(f"pgk_{created.api_key.id}.")
    assert created.api_key.workspace == "default"
    listed = (await admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys
    assert created.secret.split(".", 1)[1] not in str(listed)  # secrets are never listed
    execute = _rpc("ExecutionService/ExecutePrompt")
    code, _, _ = await invoke(bare, execute, minimal_request(execute), bearer(created.secret))
    assert code == OK
    create = _rpc("PromptService/CreatePrompt")
    code, err, _ = await invoke(bare, create, minimal_request(create), bearer(created.secret))
    assert code == PERMISSION_DENIED
    assert refusal(err) == ("INSUFFICIENT_PERMISSIONS", "promptgate")


# Open services


async def test_health_and_reflection_need_no_key(pg: Running) -> None:
    async with grpc.aio.insecure_channel(pg.address) as bare:
        health = health_pb2_grpc.HealthStub(bare)
        for service in ("", *(s.full_name for s in SERVICES)):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        reflection = reflection_pb2_grpc.ServerReflectionStub(bare)
        responses = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        names = {s.name for s in responses[0].list_services_response.service}
        assert {s.full_name for s in SERVICES} <= names
        # An unknown promptgate method is UNIMPLEMENTED, not an auth answer that
        # would tell a caller which names exist.
        unknown = bare.unary_unary("/promptgate.v1.ExecutionService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# Workspace isolation


@dataclass
class DefaultWorkspace:
    """Resources made in "default", which "other" must not see."""

    prompt_id: str
    version_id: str
    execution_id: str
    external_id: str
    batch_id: str
    key_id: str

    def identifiers(self) -> set[str]:
        return {
            self.prompt_id,
            self.version_id,
            self.execution_id,
            self.external_id,
            self.batch_id,
            self.key_id,
        }


async def _seed_default(pg: Running) -> DefaultWorkspace:
    admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
    prompt = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))).prompt
    version = (
        await pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="demo", version=1))
    ).version
    external_id = f"default-ext-{uuid.uuid4().hex[:8]}"
    execution = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="demo", inputs=_question(), external_id=external_id)
    )
    await pg.executions.SubmitActuals(
        epb.SubmitActualsRequest(
            actuals=[epb.Actual(execution_id=execution.execution_id, quality=0.5)]
        )
    )
    batch = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=[epb.BatchItem(custom_id="one", inputs=_question())]
            )
        )
    ).batch
    key = await admin.CreateApiKey(
        apb.CreateApiKeyRequest(name="default reader", scopes=["prompt.execute"], plan="unlimited")
    )
    return DefaultWorkspace(
        prompt_id=prompt.id,
        version_id=version.id,
        execution_id=execution.execution_id,
        external_id=external_id,
        batch_id=batch.id,
        key_id=key.api_key.id,
    )


async def _other_channel(pg: Running) -> grpc.aio.Channel:
    assert await pg.server.keys.ensure_workspace("other")
    issued = await pg.server.keys.create(
        "other", name="other admin", scopes=[Scope.ADMIN], plan="unlimited"
    )
    return authed_channel(pg.address, issued.secret)


def _shape(err: grpc.aio.AioRpcError, sent: str) -> tuple[Any, ...]:
    """The error with the identifier the caller sent replaced by a placeholder."""
    info, bad = error_details(err)

    def blank(text: str) -> str:
        return text.replace(sent, "<sent>") if sent else text

    return (
        err.code(),
        info.reason,
        info.domain,
        tuple(sorted((k, blank(v)) for k, v in info.metadata.items())),
        None
        if bad is None
        else tuple((v.field, blank(v.description)) for v in bad.field_violations),
        blank(err.details() or ""),
    )


async def test_other_workspace_cannot_see_or_touch_default_resources(pg: Running) -> None:
    seen = await _seed_default(pg)
    async with await _other_channel(pg) as other:
        fake_prompt_id = "prm_" + "0" * 26
        fake_execution_id = "exe_" + "0" * 26
        fake_batch_id = "bat_" + "0" * 26
        fake_key_id = "0" * 26
        body = _version_body()
        # (rpc, request naming a default resource, sent value, same request naming a never-existing one, sent value)
        probes: list[tuple[str, Message, str, Message, str]] = []

        def probe(short: str, build: Callable[[str], Message], real: str, fake: str) -> None:
            probes.append((short, build(real), real, build(fake), fake))

        for ref, fake in (("demo", "never-existed"), (seen.prompt_id, fake_prompt_id)):
            probe("PromptService/GetPrompt", lambda r: ppb.GetPromptRequest(prompt=r), ref, fake)
            probe(
                "PromptService/ArchivePrompt",
                lambda r: ppb.ArchivePromptRequest(prompt=r),
                ref,
                fake,
            )
            probe(
                "PromptService/UnarchivePrompt",
                lambda r: ppb.UnarchivePromptRequest(prompt=r),
                ref,
                fake,
            )
            probe(
                "PromptService/CreatePromptVersion",
                lambda r: ppb.CreatePromptVersionRequest(prompt=r, version=body),
                ref,
                fake,
            )
            probe(
                "PromptService/GetPromptVersion",
                lambda r: ppb.GetPromptVersionRequest(prompt=r, version=1),
                ref,
                fake,
            )
            probe(
                "PromptService/ListPromptVersions",
                lambda r: ppb.ListPromptVersionsRequest(prompt=r),
                ref,
                fake,
            )
            probe(
                "PromptService/SetReleaseTag",
                lambda r: ppb.SetReleaseTagRequest(prompt=r, tag="hijack", version=1),
                ref,
                fake,
            )
            probe(
                "PromptService/ListReleaseTags",
                lambda r: ppb.ListReleaseTagsRequest(prompt=r),
                ref,
                fake,
            )
            probe(
                "PromptService/ListReleaseTagHistory",
                lambda r: ppb.ListReleaseTagHistoryRequest(prompt=r),
                ref,
                fake,
            )
            probe(
                "PromptService/RenderPrompt",
                lambda r: ppb.RenderPromptRequest(prompt=r, inputs=_question()),
                ref,
                fake,
            )
            for short in ("ExecutionService/ExecutePrompt", "ExecutionService/ExecutePromptStream"):
                probe(
                    short,
                    lambda r: epb.ExecutePromptRequest(prompt=r, inputs=_question()),
                    ref,
                    fake,
                )
            probe(
                "ExecutionService/ExecuteBatch",
                lambda r: epb.ExecuteBatchRequest(
                    prompt=r, items=[epb.BatchItem(custom_id="x", inputs=_question())]
                ),
                ref,
                fake,
            )
            probe(
                "ExecutionService/ListExecutions",
                lambda r: epb.ListExecutionsRequest(prompt=r),
                ref,
                fake,
            )
        probe(
            "ExecutionService/GetExecution",
            lambda r: epb.GetExecutionRequest(execution_id=r),
            seen.execution_id,
            fake_execution_id,
        )
        probe(
            "ExecutionService/GetExecution",
            lambda r: epb.GetExecutionRequest(external_id=r),
            seen.external_id,
            "never-existed-ext",
        )
        probe(
            "ExecutionService/SubmitActuals",
            lambda r: epb.SubmitActualsRequest(actuals=[epb.Actual(execution_id=r, quality=0.0)]),
            seen.execution_id,
            fake_execution_id,
        )
        probe(
            "ExecutionService/SubmitActuals",
            lambda r: epb.SubmitActualsRequest(actuals=[epb.Actual(external_id=r, quality=0.0)]),
            seen.external_id,
            "never-existed-ext",
        )
        probe(
            "ExecutionService/GetBatch",
            lambda r: epb.GetBatchRequest(batch_id=r),
            seen.batch_id,
            fake_batch_id,
        )
        probe(
            "ExecutionService/WatchBatch",
            lambda r: epb.WatchBatchRequest(batch_id=r),
            seen.batch_id,
            fake_batch_id,
        )
        probe(
            "ExecutionService/ListBatchResults",
            lambda r: epb.ListBatchResultsRequest(batch_id=r),
            seen.batch_id,
            fake_batch_id,
        )
        probe(
            "ExecutionService/CancelBatch",
            lambda r: epb.CancelBatchRequest(batch_id=r),
            seen.batch_id,
            fake_batch_id,
        )
        probe(
            "AdminService/RevokeApiKey",
            lambda r: apb.RevokeApiKeyRequest(key_id=r),
            seen.key_id,
            fake_key_id,
        )

        wrong: list[str] = []
        for short, real_request, real, fake_request, fake in probes:
            rpc = _rpc(short)
            real_code, real_err, _ = await invoke(other, rpc, real_request)
            fake_code, fake_err, _ = await invoke(other, rpc, fake_request)
            if real_code != NOT_FOUND or fake_code != NOT_FOUND:
                wrong.append(f"{short}({real!r}): {real_code}, never-existing: {fake_code}")
                continue
            assert real_err is not None and fake_err is not None
            assert_no_internals(real_err, short)
            if _shape(real_err, real) != _shape(fake_err, fake):
                wrong.append(
                    f"{short}: {_shape(real_err, real)} differs from {_shape(fake_err, fake)}"
                )
            leaked = [
                i
                for i in seen.identifiers() - {real}
                if i in (real_err.details() or "") or i in str(error_details(real_err))
            ]
            if leaked:
                wrong.append(f"{short}({real!r}) leaks {leaked}")
        assert not wrong, "\n".join(wrong)

        # Nothing in "default" changed through "other".
        executions = (
            await pg.executions.GetExecution(
                epb.GetExecutionRequest(execution_id=seen.execution_id)
            )
        ).execution
        assert [a.quality for a in executions.actuals] == [0.5]
        prompt = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))).prompt
        assert not prompt.archived and prompt.latest_version == 1
        assert "hijack" not in {t.tag for t in prompt.release_tags}
        batch = (await pg.executions.GetBatch(epb.GetBatchRequest(batch_id=seen.batch_id))).batch
        assert batch.state != epb.BATCH_STATE_CANCELLED
        admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
        default_keys = {
            k.id: k for k in (await admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys
        }
        assert not default_keys[seen.key_id].HasField("revoke_time")


async def test_other_workspace_lists_show_nothing_of_default(pg: Running) -> None:
    seen = await _seed_default(pg)
    async with await _other_channel(pg) as other:
        prompts = prompt_service_pb2_grpc.PromptServiceStub(other)
        executions = execution_service_pb2_grpc.ExecutionServiceStub(other)
        admin = admin_service_pb2_grpc.AdminServiceStub(other)
        listed = await prompts.ListPrompts(
            ppb.ListPromptsRequest(show_archived=True, page_size=1000)
        )
        assert list(listed.prompts) == [] and not listed.next_page_token
        by_prefix = await prompts.ListPrompts(ppb.ListPromptsRequest(name_prefix="de"))
        assert list(by_prefix.prompts) == []
        runs = await executions.ListExecutions(epb.ListExecutionsRequest(page_size=1000))
        assert list(runs.executions) == [] and not runs.next_page_token
        for state in (pb.EXECUTION_STATE_FULFILLED, pb.EXECUTION_STATE_REJECTED):
            filtered = await executions.ListExecutions(epb.ListExecutionsRequest(state=state))
            assert list(filtered.executions) == []
        keys = (await admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys
        assert [k.name for k in keys] == ["other admin"]
        assert all(k.workspace == "other" for k in keys)
        assert seen.key_id not in {k.id for k in keys}
        who = await admin.WhoAmI(apb.WhoAmIRequest())
        assert who.workspace == "other" and who.api_key.workspace == "other"
        # A key made through "other" lands in "other" only.
        made = await admin.CreateApiKey(
            apb.CreateApiKeyRequest(name="o2", scopes=["prompt.execute"])
        )
        assert made.api_key.workspace == "other"
    default_admin = admin_service_pb2_grpc.AdminServiceStub(pg.channel)
    default_keys = (await default_admin.ListApiKeys(apb.ListApiKeysRequest())).api_keys
    assert made.api_key.id not in {k.id for k in default_keys}
    assert all(k.workspace == "default" for k in default_keys)


async def test_same_prompt_name_lives_independently_in_two_workspaces(pg: Running) -> None:
    seen = await _seed_default(pg)
    async with await _other_channel(pg) as other:
        prompts = prompt_service_pb2_grpc.PromptServiceStub(other)
        executions = execution_service_pb2_grpc.ExecutionServiceStub(other)
        created = (await prompts.CreatePrompt(ppb.CreatePromptRequest(name="demo"))).prompt
        assert created.id != seen.prompt_id
        version = (
            await prompts.CreatePromptVersion(
                ppb.CreatePromptVersionRequest(
                    prompt="demo",
                    release_tags=["production"],
                    version=ppb.PromptVersion(
                        model="mock-1",
                        messages=[
                            pb.PromptTemplateMessage(
                                role=pb.MESSAGE_ROLE_USER, template="Other says: {{ question }}"
                            )
                        ],
                        input_variables=[
                            pb.InputVariable(name="question", type=pb.INPUT_TYPE_STRING)
                        ],
                    ),
                )
            )
        ).version
        assert version.version == 1 and version.id != seen.version_id
        ran = await executions.ExecutePrompt(
            epb.ExecutePromptRequest(prompt="demo", inputs=_question("hi"))
        )
        assert ran.outputs[0].string_value == "Mock reply to: Other says: hi"
        assert ran.meta.prompt_id == created.id
        # default's version id is not a version of other's "demo" either: it is
        # answered exactly like a version id that never existed.
        fake_version_id = "ver_" + "0" * 26
        for short, build in (
            (
                "PromptService/GetPromptVersion",
                lambda v: ppb.GetPromptVersionRequest(prompt="demo", version_id=v),
            ),
            (
                "PromptService/SetReleaseTag",
                lambda v: ppb.SetReleaseTagRequest(prompt="demo", tag="staging", version_id=v),
            ),
        ):
            real_code, real_err, _ = await invoke(other, _rpc(short), build(seen.version_id))
            fake_code, fake_err, _ = await invoke(other, _rpc(short), build(fake_version_id))
            assert real_code == fake_code == NOT_FOUND, (short, real_code, fake_code)
            assert real_err is not None and fake_err is not None
            assert_no_internals(real_err, short)
            assert _shape(real_err, seen.version_id) == _shape(fake_err, fake_version_id)
            assert seen.prompt_id not in (real_err.details() or "")
        tags = (
            await prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="demo"))
        ).release_tags
        assert {(t.tag, t.version_id) for t in tags} == {
            ("latest", version.id),
            ("production", version.id),
        }
        # The external_id of default's execution is free in other: a new run, not a replay.
        fresh = await executions.ExecutePrompt(
            epb.ExecutePromptRequest(
                prompt="demo", inputs=_question("again"), external_id=seen.external_id
            )
        )
        assert not fresh.replayed and fresh.execution_id != seen.execution_id
        assert fresh.outputs[0].string_value == "Mock reply to: Other says: again"
        # Creating the name again in other conflicts, as it would in default.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prompts.CreatePrompt(ppb.CreatePromptRequest(name="demo"))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        listed = (await prompts.ListPrompts(ppb.ListPromptsRequest())).prompts
        assert [(p.name, p.id) for p in listed] == [("demo", created.id)]
    # default's demo is untouched and still answers with its own template.
    prompt = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))).prompt
    assert (prompt.id, prompt.latest_version) == (seen.prompt_id, 1)
    again = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="demo", inputs=_question("hi"))
    )
    assert again.outputs[0].string_value == "Mock reply to: Answer in one sentence: hi"
    replay = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="demo", inputs=_question(), external_id=seen.external_id)
    )
    assert replay.replayed and replay.execution_id == seen.execution_id
    listed = (await pg.prompts.ListPrompts(ppb.ListPromptsRequest())).prompts
    assert [p.id for p in listed if p.name == "demo"] == [seen.prompt_id]
    assert created.id not in {p.id for p in listed}


async def test_the_response_cache_is_not_shared_across_workspaces(pg: Running) -> None:
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="cache me {{ n }}"),
        inputs=[pb.PromptInput(name="n", string_value="1")],
        cache=pb.CachePolicy(mode=pb.CachePolicy.MODE_ENABLED),
    )
    first = await pg.executions.ExecutePrompt(request)
    second = await pg.executions.ExecutePrompt(request)
    assert first.meta.cache_status == pb.CACHE_STATUS_MISS
    assert second.meta.cache_status == pb.CACHE_STATUS_HIT  # the cache is on
    async with await _other_channel(pg) as other:
        answer = await execution_service_pb2_grpc.ExecutionServiceStub(other).ExecutePrompt(request)
    assert answer.meta.cache_status == pb.CACHE_STATUS_MISS
    assert not answer.meta.cache_hit
