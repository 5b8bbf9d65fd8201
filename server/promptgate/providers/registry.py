"""Which provider serves which model.

``mock`` is always available. ``openai`` is available when it has an API key
or a custom base URL (an OpenAI-compatible server). A request names its
provider, or promptgate infers it from the model: ``mock*`` models go to the
mock, any other model to openai when it is on (limited to
``PROMPTGATE_OPENAI_MODELS`` when that list is set).
"""

from __future__ import annotations

from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.providers.base import Provider


class ProviderRegistry:
    """The configured providers, and the rules that pick one for a model."""

    def __init__(
        self, providers: dict[str, Provider], model_allowlists: dict[str, list[str]]
    ) -> None:
        self._providers = providers
        self._allow = {name: set(models) for name, models in model_allowlists.items() if models}

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
        if model.startswith("mock"):
            return "mock"
        for name, allowed in self._allow.items():
            if model in allowed:
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
