"""AdminService: thin mapping between gRPC and the server's configuration."""

from __future__ import annotations

from typing import Any

import grpc

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.errors import InvalidArgument
from promptgate.execution.pricing import PriceTable
from promptgate.providers.registry import LISTED_PREFIXES, Capabilities, ProviderRegistry

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(apb_grpc.AdminServiceServicer):
    """Serves promptgate.v1.AdminService."""

    def __init__(self, registry: ProviderRegistry, prices: PriceTable) -> None:
        self._registry = registry
        self._prices = prices

    async def ListModels(
        self, request: apb.ListModelsRequest, context: Context
    ) -> apb.ListModelsResponse:
        names = self._registry.names
        if request.provider:
            if request.provider not in names:
                raise InvalidArgument.field(
                    "provider",
                    f"provider {request.provider!r} is not configured (configured: {', '.join(names)})",
                    reason="INVALID_MODEL",
                )
            names = [request.provider]
        response = apb.ListModelsResponse()
        for name in names:
            allowed = self._registry.allowed_models(name)
            capabilities = _capabilities(self._registry.capabilities(name))
            response.providers.append(
                apb.ProviderInfo(
                    name=name,
                    base_url=self._registry.base_url(name),
                    accepts_any_model=allowed is None,
                    capabilities=capabilities,
                )
            )
            if allowed is not None:
                models = sorted(allowed)
            elif name == "mock":
                models = ["mock-1"]
            else:
                prefixes = LISTED_PREFIXES.get(name, ())
                models = [m for m in self._prices.models() if m.startswith(prefixes)]
            for model in models:
                price = self._prices.price(name, model)
                response.models.append(
                    apb.ModelInfo(
                        provider=name,
                        model=model,
                        capabilities=capabilities,
                        price=apb.ModelPrice(
                            input_per_million=price.input if price else 0.0,
                            output_per_million=price.output if price else 0.0,
                            cached_input_per_million=(
                                price.cached_input
                                if price and price.cached_input is not None
                                else (price.input if price else 0.0)
                            ),
                            unit="USD",
                            priced=price is not None,
                        ),
                    )
                )
        return response


def _capabilities(capabilities: Capabilities) -> apb.ModelCapabilities:
    return apb.ModelCapabilities(
        streaming=capabilities.streaming,
        tools=capabilities.tools,
        json_schema=capabilities.json_schema,
    )
