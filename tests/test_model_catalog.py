"""The model catalogue behind ListModels, without a server (ListModels over gRPC: test_routing)."""

from __future__ import annotations

import pytest

from promptgate.errors import InvalidArgument
from promptgate.execution.pricing import DEFAULT_PRICES, Price, PriceTable
from promptgate.providers.base import Provider
from promptgate.providers.catalog import list_models
from promptgate.providers.mock import MockProvider
from promptgate.providers.registry import ProviderRegistry


def registry(allow: dict[str, list[str]]) -> ProviderRegistry:
    providers: dict[str, Provider] = {name: MockProvider() for name in ("mock", "openai", "gemini")}
    return ProviderRegistry(providers, allow, {"openai": "https://api.example/v1"})


PRICES = PriceTable(
    {
        **DEFAULT_PRICES,
        "gpt-4o-mini": Price(0.15, 0.60, 0.075),
        "gpt-no-cache-price": Price(1.0, 2.0),
    }
)


def test_each_provider_lists_its_models_with_prices() -> None:
    catalog = list_models(
        registry({"openai": ["gpt-4o-mini", "my-tune", "gpt-no-cache-price"]}), PRICES
    )
    assert [(p.name, p.accepts_any_model, p.base_url) for p in catalog.providers] == [
        ("gemini", True, ""),
        ("mock", True, ""),
        ("openai", False, "https://api.example/v1"),
    ]
    models = {(m.provider, m.model): m for m in catalog.models}
    # An allow-list is listed as it is, priced or not.
    assert sorted(m for p, m in models if p == "openai") == [
        "gpt-4o-mini",
        "gpt-no-cache-price",
        "my-tune",
    ]
    mini = models[("openai", "gpt-4o-mini")]
    assert (mini.input_per_million, mini.output_per_million, mini.cached_input_per_million) == (
        0.15,
        0.60,
        0.075,
    )
    assert mini.priced and mini.capabilities.streaming
    assert models[("openai", "gpt-no-cache-price")].cached_input_per_million == 1.0
    tune = models[("openai", "my-tune")]
    assert not tune.priced and tune.input_per_million == 0.0
    # Without an allow-list: the priced models of the provider's family; the mock: mock-1.
    gemini = sorted(m for p, m in models if p == "gemini")
    assert gemini and all(m.startswith("gemini") for m in gemini)
    assert [m for p, m in models if p == "mock"] == ["mock-1"]
    assert models[("mock", "mock-1")].priced and models[("mock", "mock-1")].output_per_million == 0


def test_one_provider_or_an_unknown_one() -> None:
    only = list_models(registry({}), PRICES, "mock")
    assert [p.name for p in only.providers] == ["mock"]
    assert [m.model for m in only.models] == ["mock-1"]
    with pytest.raises(InvalidArgument) as caught:
        list_models(registry({}), PRICES, "nope")
    assert caught.value.reason == "INVALID_MODEL"
    assert [v.field for v in caught.value.violations] == ["provider"]
