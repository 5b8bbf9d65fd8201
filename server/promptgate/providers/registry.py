"""Which provider serves which model.

``mock`` is always available; ``openai``, ``anthropic`` and ``gemini`` when
they have an API key or a custom base URL. A request names its provider, or
promptgate infers it from the model: a model on a provider's allow-list goes
there; ``mock*`` models go to the mock, ``claude*`` to anthropic, ``gemini*``
to gemini, and any other model to openai (OpenAI and compatible servers).
"""

from __future__ import annotations

from dataclasses import dataclass

from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter supports."""

    streaming: bool = True
    tools: bool = True
    json_schema: bool = True


# Model-name prefixes that identify a provider when a request names none.
FAMILIES = {"mock": "mock", "claude": "anthropic", "gemini": "gemini"}


class ProviderRegistry:
    """The configured providers, and the rules that pick one for a model."""

    def __init__(
        self,
        providers: dict[str, Provider],
        model_allowlists: dict[str, list[str]],
        base_urls: dict[str, str] | None = None,
    ) -> None:
        self._providers = providers
        self._allow = {name: set(models) for name, models in model_allowlists.items() if models}
        self._base_urls = base_urls or {}

    def allowed_models(self, name: str) -> set[str] | None:
        """The provider's allow-list, or None when it accepts any model."""
        return self._allow.get(name)

    def base_url(self, name: str) -> str:
        """The provider's API base URL ("" for the mock)."""
        return self._base_urls.get(name, "")

    def capabilities(self, name: str) -> Capabilities:
        """What the provider's adapter supports (all adapters support all three)."""
        return Capabilities()

    @property
    def names(self) -> list[str]:
        """The configured provider names."""
        return sorted(self._providers)

    def get(self, name: str) -> Provider:
        """A configured provider by name."""
        return self._providers[name]

    def resolve(self, provider: str, model: str, field: str = "model") -> tuple[str, Provider]:
        """The provider name and adapter for ``model``; INVALID_MODEL if none serves it."""
        if not model:
            raise InvalidArgument.field(field, "a model is required", reason="INVALID_MODEL")
        name = provider or self._infer(model)
        if name is None or name not in self._providers:
            configured = ", ".join(self.names)
            what = (
                f"provider {provider!r} is not configured"
                if provider
                else (f"no configured provider serves model {model!r}")
            )
            raise InvalidArgument(
                f"{what} (configured providers: {configured})",
                reason="INVALID_MODEL",
                violations=[_violation(field, what)],
                metadata={"model": model, "providers": configured},
            )
        allowed = self._allow.get(name)
        if allowed is not None and model not in allowed:
            what = f"model {model!r} is not available on {name}"
            raise InvalidArgument(
                f"{what} (available: {', '.join(sorted(allowed))})",
                reason="INVALID_MODEL",
                violations=[_violation(field, what)],
                metadata={"model": model, "available_models": ",".join(sorted(allowed))},
            )
        return name, self._providers[name]

    def check(self, provider: str, model: str, field: str) -> None:
        """Raise INVALID_MODEL unless (provider, model) can be served."""
        self.resolve(provider, model, field)

    def _infer(self, model: str) -> str | None:
        for name, allowed in self._allow.items():
            if model in allowed:
                return name
        for prefix, name in FAMILIES.items():
            if model.startswith(prefix):
                return name
        if "openai" in self._providers:
            return "openai"
        return None

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers.values():
            await provider.aclose()


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)
