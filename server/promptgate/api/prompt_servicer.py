"""PromptService: thin mapping between gRPC and the PromptCatalog."""

from __future__ import annotations

from typing import Any

import grpc

from promptgate.api.context import CallContext
from promptgate.api.convert.executions import execution_request_from_proto
from promptgate.api.convert.partials import partial_to_proto, partial_version_to_proto
from promptgate.api.convert.prompts import (
    compatibility_to_proto,
    prompt_to_proto,
    release_tag_to_proto,
    rendering_to_proto,
    spec_from_version,
    split_entries_from_proto,
    tag_event_to_proto,
    version_to_proto,
)
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.api.v1 import prompt_service_pb2_grpc as ppb_grpc
from promptgate.errors import InvalidArgument
from promptgate.execution.executor import Executor
from promptgate.prompts.catalog import PromptCatalog

Context = grpc.aio.ServicerContext[Any, Any]


class PromptServicer(ppb_grpc.PromptServiceServicer):
    """Serves promptgate.v1.PromptService."""

    def __init__(self, catalog: PromptCatalog, executor: Executor, calls: CallContext) -> None:
        self._catalog = catalog
        self._executor = executor
        self._calls = calls

    async def CreatePrompt(
        self, request: ppb.CreatePromptRequest, context: Context
    ) -> ppb.CreatePromptResponse:
        prompt = await self._catalog.create_prompt(
            self._calls.workspace(context), request.name, request.description, dict(request.labels)
        )
        return ppb.CreatePromptResponse(prompt=prompt_to_proto(prompt))

    async def GetPrompt(
        self, request: ppb.GetPromptRequest, context: Context
    ) -> ppb.GetPromptResponse:
        prompt = await self._catalog.get_prompt(self._calls.workspace(context), request.prompt)
        return ppb.GetPromptResponse(prompt=prompt_to_proto(prompt))

    async def ListPrompts(
        self, request: ppb.ListPromptsRequest, context: Context
    ) -> ppb.ListPromptsResponse:
        prompts, token = await self._catalog.list_prompts(
            self._calls.workspace(context),
            size=request.page_size,
            token=request.page_token,
            show_archived=request.show_archived,
            name_prefix=request.name_prefix,
        )
        return ppb.ListPromptsResponse(
            prompts=[prompt_to_proto(p) for p in prompts], next_page_token=token
        )

    async def ArchivePrompt(
        self, request: ppb.ArchivePromptRequest, context: Context
    ) -> ppb.ArchivePromptResponse:
        prompt = await self._catalog.set_archived(
            self._calls.workspace(context), request.prompt, True
        )
        return ppb.ArchivePromptResponse(prompt=prompt_to_proto(prompt))

    async def UnarchivePrompt(
        self, request: ppb.UnarchivePromptRequest, context: Context
    ) -> ppb.UnarchivePromptResponse:
        prompt = await self._catalog.set_archived(
            self._calls.workspace(context), request.prompt, False
        )
        return ppb.UnarchivePromptResponse(prompt=prompt_to_proto(prompt))

    async def CreatePromptVersion(
        self, request: ppb.CreatePromptVersionRequest, context: Context
    ) -> ppb.CreatePromptVersionResponse:
        if not request.HasField("version"):
            raise InvalidArgument.field(
                "version", "the version's content is required", reason="INVALID_PROMPT"
            )
        spec = spec_from_version(request.version)
        workspace = self._calls.workspace(context)
        # Against what production serves before the call (a release_tags move
        # may point production at the new version).
        report = await self._catalog.compatibility(workspace, request.prompt, spec)
        version = await self._catalog.create_version(
            workspace,
            request.prompt,
            spec,
            request.version.description,
            list(request.release_tags),
            allow_breaking=request.allow_breaking_changes,
            validate_only=request.validate_only,
        )
        response = ppb.CreatePromptVersionResponse(
            version=version_to_proto(version),
            compatibility=compatibility_to_proto(report) if report else None,
        )
        if request.validate_only:
            response.version.ClearField("create_time")
        return response

    async def GetPromptVersion(
        self, request: ppb.GetPromptVersionRequest, context: Context
    ) -> ppb.GetPromptVersionResponse:
        which = request.WhichOneof("selector")
        if which is None:
            raise InvalidArgument.field("version", "give a version, version_id or release_tag")
        if which == "version" and request.version <= 0:
            raise InvalidArgument.field("version", "must be positive")
        if which == "version_id" and not request.version_id:
            raise InvalidArgument.field("version_id", "must not be empty")
        version = await self._catalog.get_version(
            self._calls.workspace(context),
            request.prompt,
            version=request.version,
            version_id=request.version_id,
            tag=request.release_tag,
        )
        return ppb.GetPromptVersionResponse(version=version_to_proto(version))

    async def ListPromptVersions(
        self, request: ppb.ListPromptVersionsRequest, context: Context
    ) -> ppb.ListPromptVersionsResponse:
        versions, token = await self._catalog.list_versions(
            self._calls.workspace(context),
            request.prompt,
            size=request.page_size,
            token=request.page_token,
        )
        return ppb.ListPromptVersionsResponse(
            versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    async def SetReleaseTag(
        self, request: ppb.SetReleaseTagRequest, context: Context
    ) -> ppb.SetReleaseTagResponse:
        tag = await self._catalog.set_release_tag(
            self._calls.workspace(context),
            request.prompt,
            request.tag,
            version=request.version,
            version_id=request.version_id,
            splits=split_entries_from_proto(request.splits),
            allow_breaking=request.allow_breaking_changes,
            validate_only=request.validate_only,
        )
        return ppb.SetReleaseTagResponse(release_tag=release_tag_to_proto(tag))

    async def ListReleaseTags(
        self, request: ppb.ListReleaseTagsRequest, context: Context
    ) -> ppb.ListReleaseTagsResponse:
        tags = await self._catalog.list_release_tags(self._calls.workspace(context), request.prompt)
        return ppb.ListReleaseTagsResponse(release_tags=[release_tag_to_proto(t) for t in tags])

    async def ListReleaseTagHistory(
        self, request: ppb.ListReleaseTagHistoryRequest, context: Context
    ) -> ppb.ListReleaseTagHistoryResponse:
        events, token = await self._catalog.tag_history(
            self._calls.workspace(context),
            request.prompt,
            tag=request.tag,
            size=request.page_size,
            token=request.page_token,
        )
        return ppb.ListReleaseTagHistoryResponse(
            events=[tag_event_to_proto(e) for e in events], next_page_token=token
        )

    async def RenderPrompt(
        self, request: ppb.RenderPromptRequest, context: Context
    ) -> ppb.RenderPromptResponse:
        domain = execution_request_from_proto(
            request, workspace=self._calls.workspace(context), deadline=None
        )
        rendering = await self._executor.render(domain)
        return rendering_to_proto(rendering)

    # Partials

    async def CreatePartial(
        self, request: ppb.CreatePartialRequest, context: Context
    ) -> ppb.CreatePartialResponse:
        partial, version = await self._catalog.partials.create_partial(
            self._calls.workspace(context),
            request.name,
            request.description,
            request.content,
            request.version_description,
        )
        return ppb.CreatePartialResponse(
            partial=partial_to_proto(partial), version=partial_version_to_proto(version)
        )

    async def GetPartial(
        self, request: ppb.GetPartialRequest, context: Context
    ) -> ppb.GetPartialResponse:
        partial = await self._catalog.partials.get_partial(
            self._calls.workspace(context), request.partial
        )
        return ppb.GetPartialResponse(partial=partial_to_proto(partial))

    async def ListPartials(
        self, request: ppb.ListPartialsRequest, context: Context
    ) -> ppb.ListPartialsResponse:
        partials, token = await self._catalog.partials.list_partials(
            self._calls.workspace(context),
            size=request.page_size,
            token=request.page_token,
            show_archived=request.show_archived,
            name_prefix=request.name_prefix,
        )
        return ppb.ListPartialsResponse(
            partials=[partial_to_proto(p) for p in partials], next_page_token=token
        )

    async def ArchivePartial(
        self, request: ppb.ArchivePartialRequest, context: Context
    ) -> ppb.ArchivePartialResponse:
        partial = await self._catalog.partials.set_archived(
            self._calls.workspace(context), request.partial, True
        )
        return ppb.ArchivePartialResponse(partial=partial_to_proto(partial))

    async def UnarchivePartial(
        self, request: ppb.UnarchivePartialRequest, context: Context
    ) -> ppb.UnarchivePartialResponse:
        partial = await self._catalog.partials.set_archived(
            self._calls.workspace(context), request.partial, False
        )
        return ppb.UnarchivePartialResponse(partial=partial_to_proto(partial))

    async def CreatePartialVersion(
        self, request: ppb.CreatePartialVersionRequest, context: Context
    ) -> ppb.CreatePartialVersionResponse:
        version = await self._catalog.partials.create_version(
            self._calls.workspace(context), request.partial, request.content, request.description
        )
        return ppb.CreatePartialVersionResponse(version=partial_version_to_proto(version))

    async def GetPartialVersion(
        self, request: ppb.GetPartialVersionRequest, context: Context
    ) -> ppb.GetPartialVersionResponse:
        version = await self._catalog.partials.get_version(
            self._calls.workspace(context), request.partial, version=request.version
        )
        return ppb.GetPartialVersionResponse(version=partial_version_to_proto(version))

    async def ListPartialVersions(
        self, request: ppb.ListPartialVersionsRequest, context: Context
    ) -> ppb.ListPartialVersionsResponse:
        versions, token = await self._catalog.partials.list_versions(
            self._calls.workspace(context),
            request.partial,
            size=request.page_size,
            token=request.page_token,
        )
        return ppb.ListPartialVersionsResponse(
            versions=[partial_version_to_proto(v) for v in versions], next_page_token=token
        )
