"""Cost arithmetic and the price table file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptgate.chat import Usage
from promptgate.execution.pricing import PriceTable


def test_cost_counts_cached_input_at_its_own_price() -> None:
    table = PriceTable.load(None)
    # gpt-4o: 2.50 input, 10.00 output, 1.25 cached input per million tokens.
    cost = table.cost(
        "openai", "gpt-4o", Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=400)
    )
    assert cost.priced
    assert cost.value == pytest.approx((600 * 2.50 + 400 * 1.25 + 500 * 10.00) / 1_000_000)


def test_models_without_a_cached_price_charge_cached_tokens_as_input() -> None:
    table = PriceTable.load(None)
    cost = table.cost("openai", "gpt-3.5-turbo", Usage(1_000_000, 1_000_000, 500_000))
    assert cost.value == pytest.approx(0.50 + 1.50)


def test_unknown_models_cost_nothing_and_say_so() -> None:
    cost = PriceTable.load(None).cost("openai", "my-finetune", Usage(10, 10))
    assert (cost.value, cost.priced) == (0.0, False)


def test_mock_is_free_but_priced() -> None:
    cost = PriceTable.load(None).cost("mock", "mock-1", Usage(10**6, 10**6))
    assert (cost.value, cost.priced) == (0.0, True)


def test_prices_file_adds_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "my-finetune": {"input": 0.3, "output": 1.2, "cached_input": 0.15},
                "gpt-4o": {"input": 1, "output": 2},
            }
        )
    )
    table = PriceTable.load(str(path))
    assert table.cost(
        "openai", "my-finetune", Usage(2_000_000, 1_000_000, 1_000_000)
    ).value == pytest.approx(0.3 + 0.15 + 1.2)
    assert table.cost("openai", "gpt-4o", Usage(1_000_000, 1_000_000)).value == pytest.approx(3.0)
