"""AdminService: thin mapping between gRPC and keys, usage, audit and the model catalogue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc

from promptgate.api.context import CallContext
from promptgate.api.convert.audit import audit_event_to_proto, audit_query_from_proto
from promptgate.api.convert.usage import split_comparison_to_proto, usage_stats_to_proto
from promptgate.api.convert.values import timestamp, to_datetime
from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.audit import AuditLog
from promptgate.auth.keys import LIMIT_FIELDS, KeyStore
from promptgate.auth.limits import Limiter
from promptgate.auth.model import DEFAULT_PLAN, ApiKey, Scope
from promptgate.batches.webhooks.signing import workspace_secret
from promptgate.errors import FailedPrecondition, InvalidArgument
from promptgate.execution.comparison import SplitComparer
from promptgate.execution.pricing import PriceTable
from promptgate.execution.usage import Grouping, UsageQuery, UsageReader
from promptgate.providers.catalog import list_models
from promptgate.providers.registry import Capabilities, ProviderRegistry

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(apb_grpc.AdminServiceServicer):
    """Serves promptgate.v1.AdminService."""

    def __init__(
        self,
        registry: ProviderRegistry,
        prices: PriceTable,
        keys: KeyStore,
        limiter: Limiter,
        usage: UsageReader,
        calls: CallContext,
        audit: AuditLog,
        comparer: SplitComparer,
        webhook_secret: str = "",
    ) -> None:
        self._audit = audit
        self._webhook_secret = webhook_secret
        self._usage = usage
        self._comparer = comparer
        self._registry = registry
        self._prices = prices
        self._keys = keys
        self._limiter = limiter
        self._calls = calls

    async def CreateApiKey(
        self, request: apb.CreateApiKeyRequest, context: Context
    ) -> apb.CreateApiKeyResponse:
        scopes = []
        for i, name in enumerate(request.scopes):
            try:
                scopes.append(Scope(name))
            except ValueError:
                valid = ", ".join(s.value for s in Scope)
                raise InvalidArgument.field(
                    f"scopes[{i}]", f"unknown scope {name!r} (scopes: {valid})"
                ) from None
        overrides: dict[str, int | None] = {}
        if request.HasField("limits"):
            for field in LIMIT_FIELDS:
                if request.limits.HasField(field):  # type: ignore[arg-type]
                    overrides[field] = getattr(request.limits, field)
        issued = await self._keys.create(
            self._calls.workspace(context),
            name=request.name,
            scopes=scopes,
            plan=request.plan or DEFAULT_PLAN,
            overrides=overrides,
            expires_at=(
                to_datetime(request.expire_time, "expire_time")
                if request.HasField("expire_time")
                else None
            ),
        )
        return apb.CreateApiKeyResponse(api_key=_key(issued.key), secret=issued.secret)

    async def ListApiKeys(
        self, request: apb.ListApiKeysRequest, context: Context
    ) -> apb.ListApiKeysResponse:
        keys = await self._keys.list(self._calls.workspace(context))
        return apb.ListApiKeysResponse(api_keys=[_key(k) for k in keys])

    async def RevokeApiKey(
        self, request: apb.RevokeApiKeyRequest, context: Context
    ) -> apb.RevokeApiKeyResponse:
        if not request.key_id:
            raise InvalidArgument.field("key_id", "a key id is required")
        key = await self._keys.revoke(self._calls.workspace(context), request.key_id)
        return apb.RevokeApiKeyResponse(api_key=_key(key))

    async def WhoAmI(self, request: apb.WhoAmIRequest, context: Context) -> apb.WhoAmIResponse:
        key = self._calls.key(context)
        requests, running, tokens = await self._limiter.usage(key)
        return apb.WhoAmIResponse(
            workspace=key.workspace_id,
            api_key=_key(key),
            requests_this_minute=requests,
            concurrent_executions=running,
            tokens_this_month=tokens,
        )

    async def GetUsage(
        self, request: apb.GetUsageRequest, context: Context
    ) -> apb.GetUsageResponse:
        group_by: list[Grouping] = []
        for i, value in enumerate(request.group_by):
            grouping = _GROUPINGS.get(value)
            if grouping is None:
                raise InvalidArgument.field(f"group_by[{i}]", f"unknown grouping {value}")
            if grouping not in group_by:
                group_by.append(grouping)
        query = UsageQuery.window(
            datetime.now(UTC),
            to_datetime(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            to_datetime(request.end_time, "end_time") if request.HasField("end_time") else None,
            group_by=tuple(group_by),
            prompt=request.prompt,
            model=request.model,
            api_key_id=request.api_key_id,
        )
        workspace = self._calls.workspace(context)
        if request.split_id and not request.compare_release_tag:
            raise InvalidArgument.field("split_id", "needs compare_release_tag")
        comparison = None
        if request.compare_release_tag:
            report, found = await self._comparer.compare(
                workspace, query, request.compare_release_tag, request.split_id
            )
            comparison = split_comparison_to_proto(found)
        else:
            report = await self._usage.report(workspace, query)
        response = apb.GetUsageResponse(
            start_time=timestamp(query.start),
            end_time=timestamp(query.end),
            total=usage_stats_to_proto(report.total),
            split_comparison=comparison,
        )
        for key, stats in report.groups:
            response.groups.append(
                apb.UsageGroup(
                    prompt=key.prompt,
                    prompt_id=key.prompt_id,
                    version=key.version,
                    provider=key.provider,
                    model=key.model,
                    day=key.day,
                    api_key_id=key.api_key_id,
                    stats=usage_stats_to_proto(stats),
                )
            )
        return response

    async def GetWebhookSecret(
        self, request: apb.GetWebhookSecretRequest, context: Context
    ) -> apb.GetWebhookSecretResponse:
        workspace = self._calls.workspace(context)
        if not self._webhook_secret:
            raise FailedPrecondition(
                "batch callbacks are not enabled on this server (PROMPTGATE_WEBHOOK_SECRET)",
                reason="WEBHOOKS_DISABLED",
            )
        return apb.GetWebhookSecretResponse(
            workspace=workspace, secret=workspace_secret(self._webhook_secret, workspace)
        )

    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Context
    ) -> apb.ListAuditEventsResponse:
        events, token = await self._audit.list(
            self._calls.workspace(context),
            audit_query_from_proto(request),
            size=request.page_size,
            token=request.page_token,
        )
        return apb.ListAuditEventsResponse(
            audit_events=[audit_event_to_proto(e) for e in events], next_page_token=token
        )

    async def ListModels(
        self, request: apb.ListModelsRequest, context: Context
    ) -> apb.ListModelsResponse:
        catalog = list_models(self._registry, self._prices, request.provider)
        return apb.ListModelsResponse(
            providers=[
                apb.ProviderInfo(
                    name=p.name,
                    base_url=p.base_url,
                    accepts_any_model=p.accepts_any_model,
                    capabilities=_capabilities(p.capabilities),
                )
                for p in catalog.providers
            ],
            models=[
                apb.ModelInfo(
                    provider=m.provider,
                    model=m.model,
                    capabilities=_capabilities(m.capabilities),
                    price=apb.ModelPrice(
                        input_per_million=m.input_per_million,
                        output_per_million=m.output_per_million,
                        cached_input_per_million=m.cached_input_per_million,
                        unit="USD",
                        priced=m.priced,
                    ),
                )
                for m in catalog.models
            ],
        )


def _key(key: ApiKey) -> apb.ApiKey:
    limits = apb.PlanLimits()
    if key.limits.requests_per_minute is not None:
        limits.requests_per_minute = key.limits.requests_per_minute
    if key.limits.concurrent_executions is not None:
        limits.concurrent_executions = key.limits.concurrent_executions
    if key.limits.monthly_tokens is not None:
        limits.monthly_tokens = key.limits.monthly_tokens
    return apb.ApiKey(
        id=key.id,
        workspace=key.workspace_id,
        name=key.name,
        prefix=key.prefix,
        scopes=sorted(s.value for s in key.scopes),
        plan=key.plan,
        limits=limits,
        create_time=timestamp(key.created_at),
        expire_time=timestamp(key.expires_at),
        revoke_time=timestamp(key.revoked_at),
    )


_GROUPINGS = {
    apb.USAGE_GROUPING_PROMPT: Grouping.PROMPT,
    apb.USAGE_GROUPING_VERSION: Grouping.VERSION,
    apb.USAGE_GROUPING_MODEL: Grouping.MODEL,
    apb.USAGE_GROUPING_DAY: Grouping.DAY,
    apb.USAGE_GROUPING_API_KEY: Grouping.API_KEY,
}


def _capabilities(capabilities: Capabilities) -> apb.ModelCapabilities:
    return apb.ModelCapabilities(
        streaming=capabilities.streaming,
        tools=capabilities.tools,
        json_schema=capabilities.json_schema,
    )
