"""ChainService: thin mapping between gRPC and the ChainCatalog and ChainRunner."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from promptgate.api.context import CallContext
from promptgate.api.convert.chains import (
    chain_execution_to_proto,
    chain_request_from_proto,
    chain_to_proto,
    execute_response,
    finished_event,
    release_tag_to_proto,
    spec_from_proto,
    stream_event,
    tag_event_to_proto,
    version_to_proto,
)
from promptgate.api.convert.executions import state_from_proto
from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.chains.catalog import ChainCatalog
from promptgate.chains.model import ChainFinished, ChainRequest
from promptgate.chains.runner import ChainRunner
from promptgate.chains.store import ChainExecutionStore
from promptgate.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]


class ChainServicer(cpb_grpc.ChainServiceServicer):
    """Serves promptgate.v1.ChainService."""

    def __init__(
        self,
        catalog: ChainCatalog,
        runner: ChainRunner,
        executions: ChainExecutionStore,
        calls: CallContext,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._executions = executions
        self._calls = calls

    # Stored chains

    async def CreateChain(
        self, request: cpb.CreateChainRequest, context: Context
    ) -> cpb.CreateChainResponse:
        chain = await self._catalog.create_chain(
            self._calls.workspace(context), request.name, request.description, dict(request.labels)
        )
        return cpb.CreateChainResponse(chain=chain_to_proto(chain))

    async def GetChain(
        self, request: cpb.GetChainRequest, context: Context
    ) -> cpb.GetChainResponse:
        chain = await self._catalog.get_chain(self._calls.workspace(context), request.chain)
        return cpb.GetChainResponse(chain=chain_to_proto(chain))

    async def ListChains(
        self, request: cpb.ListChainsRequest, context: Context
    ) -> cpb.ListChainsResponse:
        chains, token = await self._catalog.list_chains(
            self._calls.workspace(context),
            size=request.page_size,
            token=request.page_token,
            show_archived=request.show_archived,
            name_prefix=request.name_prefix,
        )
        return cpb.ListChainsResponse(
            chains=[chain_to_proto(c) for c in chains], next_page_token=token
        )

    async def ArchiveChain(
        self, request: cpb.ArchiveChainRequest, context: Context
    ) -> cpb.ArchiveChainResponse:
        chain = await self._catalog.set_archived(
            self._calls.workspace(context), request.chain, True
        )
        return cpb.ArchiveChainResponse(chain=chain_to_proto(chain))

    async def UnarchiveChain(
        self, request: cpb.UnarchiveChainRequest, context: Context
    ) -> cpb.UnarchiveChainResponse:
        chain = await self._catalog.set_archived(
            self._calls.workspace(context), request.chain, False
        )
        return cpb.UnarchiveChainResponse(chain=chain_to_proto(chain))

    async def CreateChainVersion(
        self, request: cpb.CreateChainVersionRequest, context: Context
    ) -> cpb.CreateChainVersionResponse:
        if not request.HasField("version"):
            raise InvalidArgument.field(
                "version", "the version's content is required", reason="INVALID_CHAIN"
            )
        spec = spec_from_proto(request.version.steps, request.version.input_variables, "version")
        version = await self._catalog.create_version(
            self._calls.workspace(context),
            request.chain,
            spec,
            request.version.description,
            list(request.release_tags),
            validate_only=request.validate_only,
        )
        response = cpb.CreateChainVersionResponse(version=version_to_proto(version))
        if request.validate_only:
            response.version.ClearField("create_time")
        return response

    async def GetChainVersion(
        self, request: cpb.GetChainVersionRequest, context: Context
    ) -> cpb.GetChainVersionResponse:
        which = request.WhichOneof("selector")
        if which is None:
            raise InvalidArgument.field("version", "give a version, version_id or release_tag")
        if which == "version" and request.version <= 0:
            raise InvalidArgument.field("version", "must be positive")
        if which == "version_id" and not request.version_id:
            raise InvalidArgument.field("version_id", "must not be empty")
        version = await self._catalog.get_version(
            self._calls.workspace(context),
            request.chain,
            version=request.version,
            version_id=request.version_id,
            tag=request.release_tag,
        )
        return cpb.GetChainVersionResponse(version=version_to_proto(version))

    async def ListChainVersions(
        self, request: cpb.ListChainVersionsRequest, context: Context
    ) -> cpb.ListChainVersionsResponse:
        versions, token = await self._catalog.list_versions(
            self._calls.workspace(context),
            request.chain,
            size=request.page_size,
            token=request.page_token,
        )
        return cpb.ListChainVersionsResponse(
            versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    async def SetChainReleaseTag(
        self, request: cpb.SetChainReleaseTagRequest, context: Context
    ) -> cpb.SetChainReleaseTagResponse:
        tag = await self._catalog.set_release_tag(
            self._calls.workspace(context),
            request.chain,
            request.tag,
            version=request.version,
            version_id=request.version_id,
        )
        return cpb.SetChainReleaseTagResponse(release_tag=release_tag_to_proto(tag))

    async def ListChainReleaseTags(
        self, request: cpb.ListChainReleaseTagsRequest, context: Context
    ) -> cpb.ListChainReleaseTagsResponse:
        tags = await self._catalog.list_release_tags(self._calls.workspace(context), request.chain)
        return cpb.ListChainReleaseTagsResponse(
            release_tags=[release_tag_to_proto(t) for t in tags]
        )

    async def ListChainReleaseTagHistory(
        self, request: cpb.ListChainReleaseTagHistoryRequest, context: Context
    ) -> cpb.ListChainReleaseTagHistoryResponse:
        events, token = await self._catalog.tag_history(
            self._calls.workspace(context),
            request.chain,
            tag=request.tag,
            size=request.page_size,
            token=request.page_token,
        )
        return cpb.ListChainReleaseTagHistoryResponse(
            events=[tag_event_to_proto(e) for e in events], next_page_token=token
        )

    # Executions

    def _request(self, request: cpb.ExecuteChainRequest, context: Context) -> ChainRequest:
        return chain_request_from_proto(
            request,
            workspace=self._calls.workspace(context),
            deadline=self._calls.deadline(context),
            api_key_id=self._calls.api_key_id(context),
        )

    async def ExecuteChain(
        self, request: cpb.ExecuteChainRequest, context: Context
    ) -> cpb.ExecuteChainResponse:
        execution = await self._runner.execute(self._request(request, context))
        return execute_response(execution)

    async def ExecuteChainStream(
        self, request: cpb.ExecuteChainRequest, context: Context
    ) -> AsyncIterator[cpb.ExecuteChainStreamResponse]:
        domain = self._request(request, context)
        async with contextlib.aclosing(self._runner.stream(domain)) as events:
            async for event in events:
                if isinstance(event, ChainFinished):
                    yield finished_event(event.execution)
                else:
                    yield stream_event(event)

    async def GetChainExecution(
        self, request: cpb.GetChainExecutionRequest, context: Context
    ) -> cpb.GetChainExecutionResponse:
        execution = await self._executions.get(
            self._calls.workspace(context),
            chain_execution_id=request.chain_execution_id,
            external_id=request.external_id,
        )
        return cpb.GetChainExecutionResponse(chain_execution=chain_execution_to_proto(execution))

    async def ListChainExecutions(
        self, request: cpb.ListChainExecutionsRequest, context: Context
    ) -> cpb.ListChainExecutionsResponse:
        workspace = self._calls.workspace(context)
        chain_id = ""
        if request.chain:
            chain_id = (await self._catalog.get_chain(workspace, request.chain)).id
        executions, token = await self._executions.list(
            workspace,
            size=request.page_size,
            token=request.page_token,
            chain_id=chain_id,
            state=state_from_proto(request.state),
        )
        return cpb.ListChainExecutionsResponse(
            chain_executions=[chain_execution_to_proto(e) for e in executions],
            next_page_token=token,
        )
