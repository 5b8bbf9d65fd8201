"""The model catalogue (AdminService.ListModels): configured providers, their models, prices.

What a provider lists:

- a provider with a model allow-list: exactly those models;
- the mock: ``mock-1`` (it answers any ``mock*`` name);
- any other provider: the models of the price table whose names start with
  one of its known prefixes (``LISTED_PREFIXES``), as it accepts any model.

Every model carries the provider's capabilities and its price in USD per
million tokens (cached input at the input price when the table has no
cached price); a model missing from the price table is listed unpriced, at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from promptgate.errors import InvalidArgument
from promptgate.execution.pricing import PriceTable
from promptgate.providers.registry import Capabilities, ProviderRegistry

# Known model-name prefixes per provider, for listing the priced models of a
# provider that accepts any model.
LISTED_PREFIXES: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("gpt-", "o1", "o3", "o4"),
    "anthropic": ("claude",),
    "gemini": ("gemini",),
    "mock": ("mock",),
}
MOCK_MODELS: Final = ("mock-1",)


@dataclass(frozen=True, slots=True)
class ListedProvider:
    """A configured provider."""

    name: str
    base_url: str
    accepts_any_model: bool
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class ListedModel:
    """A model a provider serves, with its price (USD per million tokens)."""

    provider: str
    model: str
    capabilities: Capabilities
    input_per_million: float
    output_per_million: float
    cached_input_per_million: float
    priced: bool


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """What ``list_models`` returns: providers by name, then their models."""

    providers: tuple[ListedProvider, ...]
    models: tuple[ListedModel, ...]


def list_models(registry: ProviderRegistry, prices: PriceTable, provider: str = "") -> ModelCatalog:
    """Every configured provider (or only ``provider``) and the models it lists.

    An unknown ``provider`` is INVALID_ARGUMENT (INVALID_MODEL) on the field
    ``provider``.
    """
    names = registry.names
    if provider:
        if provider not in names:
            raise InvalidArgument.field(
                "provider",
                f"provider {provider!r} is not configured (configured: {', '.join(names)})",
                reason="INVALID_MODEL",
            )
        names = [provider]
    providers: list[ListedProvider] = []
    models: list[ListedModel] = []
    for name in names:
        allowed = registry.allowed_models(name)
        capabilities = registry.capabilities(name)
        providers.append(
            ListedProvider(name, registry.base_url(name), allowed is None, capabilities)
        )
        models.extend(
            _priced(name, model, capabilities, prices) for model in _models(name, allowed, prices)
        )
    return ModelCatalog(tuple(providers), tuple(models))


def _models(name: str, allowed: set[str] | None, prices: PriceTable) -> list[str]:
    if allowed is not None:
        return sorted(allowed)
    if name == "mock":
        return list(MOCK_MODELS)
    prefixes = LISTED_PREFIXES.get(name, ())
    return [model for model in prices.models() if model.startswith(prefixes)]


def _priced(
    provider: str, model: str, capabilities: Capabilities, prices: PriceTable
) -> ListedModel:
    price = prices.price(provider, model)
    if price is None:
        return ListedModel(provider, model, capabilities, 0.0, 0.0, 0.0, priced=False)
    cached = price.cached_input if price.cached_input is not None else price.input
    return ListedModel(
        provider, model, capabilities, price.input, price.output, cached, priced=True
    )
