"""Model prices and the cost of an execution.

Prices are USD per million tokens: input, output and cached input. The
defaults cover well-known models; ``PROMPTGATE_PRICES_FILE`` points at a JSON
object ``{"model": {"input": 2.5, "output": 10, "cached_input": 1.25}}`` whose
entries replace or add to them. Mock models cost 0; unknown models cost 0 and
are reported as unpriced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from promptgate.chat import Usage
from promptgate.execution.model import Cost


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.00, 60.00, 7.50),
    "o3": Price(2.00, 8.00, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "claude-3-5-haiku-latest": Price(0.80, 4.00, 0.08),
    "claude-3-5-sonnet-latest": Price(3.00, 15.00, 0.30),
    "claude-3-7-sonnet-latest": Price(3.00, 15.00, 0.30),
    "claude-sonnet-4-0": Price(3.00, 15.00, 0.30),
    "claude-opus-4-0": Price(15.00, 75.00, 1.50),
    "gemini-1.5-flash": Price(0.075, 0.30, 0.01875),
    "gemini-1.5-pro": Price(1.25, 5.00, 0.3125),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
}


class PriceTable:
    """Looks up prices and computes costs."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        """The defaults, updated from the JSON file at ``path`` if given."""
        prices = dict(DEFAULT_PRICES)
        if path:
            data = json.loads(Path(path).read_text())
            for model, entry in data.items():
                prices[model] = Price(
                    input=float(entry["input"]),
                    output=float(entry["output"]),
                    cached_input=(
                        float(entry["cached_input"])
                        if entry.get("cached_input") is not None
                        else None
                    ),
                )
        return cls(prices)

    def models(self) -> list[str]:
        """Every model with a price."""
        return sorted(self._prices)

    def price(self, provider: str, model: str) -> Price | None:
        """The price of ``model``; mock models are free; None when unknown."""
        if provider == "mock":
            return Price(0.0, 0.0, 0.0)
        return self._prices.get(model)

    def cost(self, provider: str, model: str, usage: Usage) -> Cost:
        """The cost of ``usage`` on ``model``."""
        price = self.price(provider, model)
        if price is None:
            return Cost(value=0.0, priced=False)
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_price = price.cached_input if price.cached_input is not None else price.input
        value = (
            (usage.input_tokens - cached) * price.input
            + cached * cached_price
            + usage.output_tokens * price.output
        ) / 1_000_000
        return Cost(value=round(value, 10), priced=True)
