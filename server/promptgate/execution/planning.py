"""Planning: from an execution request to what will be sent, to whom, and how.

    check the request's own fields
    -> resolve the prompt version (stored) or check the inline prompt
    -> check inputs and render messages
    -> pick the provider targets, the routing policy and the cache policy
    -> a RUNNING ExecutionRecord that the executor runs and records

Every problem is a ``RequestError`` raised before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from promptgate.chat import ModelParameters, parameter_problems
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.cache import cache_key
from promptgate.execution.model import (
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    InlineTarget,
)
from promptgate.execution.router import Candidate, RoutePolicy
from promptgate.ids import new_id
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.inputs import resolve_inputs
from promptgate.prompts.model import (
    CacheMode,
    CachePolicy,
    PromptSpec,
    RetryPolicy,
    Routing,
    Strategy,
)
from promptgate.prompts.render import render_messages
from promptgate.prompts.splits import MAX_SPLIT_KEY, assign
from promptgate.prompts.templates import TemplateEngine
from promptgate.prompts.validation import (
    ModelCheck,
    cache_problems,
    response_format_problems,
    routing_problems,
    tool_problems,
    validate_spec,
)
from promptgate.providers.base import Provider, ProviderRequest
from promptgate.providers.registry import ProviderRegistry
from promptgate.store.tables import utcnow

MAX_EXTERNAL_ID = 256


@dataclass(frozen=True, slots=True)
class ExecutorLimits:
    """Limits and defaults of the execution path."""

    max_prompt_chars: int = 1_000_000
    max_inputs: int = 256
    default_timeout_s: float = 600.0
    default_release_tag: str = "production"


@dataclass(frozen=True, slots=True)
class Plan:
    """A planned execution: its RUNNING record, targets, routing and cache policy."""

    record: ExecutionRecord
    candidates: tuple[Candidate, ...]
    policy: RoutePolicy
    spec: PromptSpec
    cache_mode: CacheMode
    cache_ttl_s: float
    cache_key: str | None
    partials: Mapping[str, int]  # the partial versions rendered, by name

    @property
    def provider(self) -> Provider:
        """The first target's adapter."""
        return self.candidates[0].provider

    @property
    def request(self) -> ProviderRequest:
        """The first target's provider request."""
        return self.candidates[0].request


class Planner:
    """Turns execution requests into plans; see the module docstring."""

    def __init__(
        self,
        *,
        catalog: PromptCatalog,
        registry: ProviderRegistry,
        templates: TemplateEngine,
        limits: ExecutorLimits,
        routing_defaults: RoutePolicy,
        cache_ttl_s: float,
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._templates = templates
        self._limits = limits
        self._routing_defaults = routing_defaults
        self._cache_ttl_s = cache_ttl_s

    async def plan(self, request: ExecutionRequest, *, streamed: bool) -> Plan:
        """The plan for ``request``; a RequestError if it cannot run."""
        _check_request(request, self._limits, self._registry.check)
        target = request.target
        prompt_id = prompt_name = version_id = release_tag = split_id = ""
        version = 0
        if isinstance(target, InlineTarget):
            spec = target.spec
            # Compiled off the event loop, so validation below hits the cache.
            await self._templates.prepare(m.template for m in spec.messages)
            # An inline prompt includes the latest version of each partial.
            partials = await self._catalog.partial_sets.for_spec(
                request.workspace_id, spec, "inline_prompt"
            )
            validate_spec(
                spec,
                self._templates,
                field="inline_prompt",
                check_model=self._registry.check if not request.model else _accept_model,
                declared_required=target.declared,
                partials=partials,
            )
            declared = spec.input_variables if target.declared else None
            model_field = "inline_prompt.model"
        else:
            if target.release_tag and target.version:
                raise InvalidArgument.field("version", "give a release_tag or a version, not both")
            resolved = await self._catalog.resolve(
                request.workspace_id,
                target.prompt,
                tag=target.release_tag or self._limits.default_release_tag,
                version=target.version,
            )
            resolved = assign(resolved, request.split_key)
            split_id = resolved.split.id if resolved.split else ""
            spec = resolved.version.spec
            partials = resolved.partials_of(resolved.version)
            declared = spec.input_variables
            prompt_id, prompt_name = resolved.prompt.id, resolved.prompt.name
            version_id, version = resolved.version.id, resolved.version.version
            release_tag = resolved.release_tag
            model_field = "prompt"
        model = request.model or spec.model
        provider_hint = request.provider or ("" if request.model else spec.provider)
        field = "model" if request.model else ("provider" if request.provider else model_field)
        overrides = request.parameters or ModelParameters()
        parameters = overrides.merged_over(spec.parameters)
        response_format = request.response_format or spec.response_format
        tools = request.tools if request.tools is not None else spec.tools
        tool_choice = request.tool_choice or spec.tool_choice
        values = resolve_inputs(declared, request.inputs)
        messages = await render_messages(
            spec,
            values,
            self._templates,
            field="inline_prompt" if isinstance(target, InlineTarget) else "inputs",
            max_chars=self._limits.max_prompt_chars,
            partials=partials,
        )
        base = ProviderRequest(
            model=model,
            messages=messages,
            parameters=parameters,
            response_format=response_format,
            tools=tuple(tools),
            tool_choice=tool_choice,
            raw_body=request.raw_body,
            raw_headers=request.raw_headers,
        )
        candidates = self._candidates(request, spec, base, provider_hint, field, model_field)
        first = candidates[0]
        policy = self._policy(request.routing, spec.routing, len(candidates))
        cache_mode, cache_ttl = self._cache_policy(request.cache, spec.cache)
        key = None
        if cache_mode in (CacheMode.ENABLED, CacheMode.REFRESH):
            payload = first.provider.build_payload(first.request)
            key = cache_key(request.workspace_id, first.provider_name, payload)
        record = ExecutionRecord(
            id=new_id("exe"),
            workspace_id=request.workspace_id,
            state=ExecutionState.RUNNING,
            created_at=utcnow(),
            external_id=request.external_id,
            streamed=streamed,
            prompt_id=prompt_id,
            prompt_name=prompt_name,
            version_id=version_id,
            version=version,
            release_tag=release_tag,
            provider=first.provider_name,
            model=first.request.model,
            inputs=request.inputs,
            input_chars=sum(len(m.content) for m in messages),
            parameters=first.request.parameters,
            metadata=request.metadata,
            api_key_id=request.api_key_id,
            split_id=split_id,
            chain_execution_id=request.chain_execution_id,
            chain_step=request.chain_step,
        )
        return Plan(
            record=record,
            candidates=tuple(candidates),
            policy=policy,
            spec=spec,
            cache_mode=cache_mode,
            cache_ttl_s=cache_ttl,
            cache_key=key,
            partials=partials.pins,
        )

    def _candidates(
        self,
        request: ExecutionRequest,
        spec: PromptSpec,
        base: ProviderRequest,
        provider_hint: str,
        field: str,
        model_field: str,
    ) -> list[Candidate]:
        """The provider targets: the request's routing, else the version's, else its model."""
        if request.routing is not None and request.routing.targets:
            targets, prefix = request.routing.targets, "routing.targets"
        elif not (request.model or request.provider) and spec.routing and spec.routing.targets:
            targets, prefix = spec.routing.targets, f"{model_field}.routing.targets"
        else:
            name, adapter = self._registry.resolve(provider_hint, base.model, field)
            return [Candidate(0, name, adapter, base)]
        candidates = []
        for index, target in enumerate(targets):
            name, adapter = self._registry.resolve(
                target.provider, target.model, f"{prefix}[{index}].model"
            )
            parameters = (
                target.parameters.merged_over(base.parameters)
                if target.parameters is not None
                else base.parameters
            )
            candidates.append(
                Candidate(
                    index,
                    name,
                    adapter,
                    replace(base, model=target.model, parameters=parameters),
                    target.weight,
                )
            )
        return candidates

    def _policy(
        self, requested: Routing | None, versioned: Routing | None, count: int
    ) -> RoutePolicy:
        """The effective routing policy: the request's fields over the version's, over defaults."""
        defaults = self._routing_defaults

        def pick(name: str) -> Any:
            for source in (requested, versioned):
                value = getattr(source, name, None) if source is not None else None
                if value is not None:
                    return value
            return None

        retry: RetryPolicy | None = pick("retry")
        strategy: Strategy | None = pick("strategy")
        timeout: float | None = pick("attempt_timeout_s")
        return RoutePolicy(
            strategy=strategy or (Strategy.FALLBACK if count > 1 else Strategy.SINGLE),
            max_attempts=(
                retry.max_attempts if retry and retry.max_attempts else defaults.max_attempts
            ),
            initial_backoff_s=(
                retry.initial_backoff_s
                if retry and retry.initial_backoff_s is not None
                else defaults.initial_backoff_s
            ),
            max_backoff_s=(
                retry.max_backoff_s
                if retry and retry.max_backoff_s is not None
                else defaults.max_backoff_s
            ),
            attempt_timeout_s=timeout if timeout is not None else defaults.attempt_timeout_s,
        )

    def _cache_policy(
        self, requested: CachePolicy | None, versioned: CachePolicy | None
    ) -> tuple[CacheMode, float]:
        mode = (requested.mode if requested else None) or (versioned.mode if versioned else None)
        ttl = (requested.ttl_s if requested else None) or (versioned.ttl_s if versioned else None)
        return mode or CacheMode.DISABLED, ttl or self._cache_ttl_s


def _accept_model(provider: str, model: str, field: str) -> None:
    """The inline prompt's own model is overridden by the request's; nothing to check."""


def _check_request(
    request: ExecutionRequest, limits: ExecutorLimits, check_model: ModelCheck
) -> None:
    problems: list[FieldViolation] = []
    if len(request.inputs) > limits.max_inputs:
        problems.append(FieldViolation("inputs", f"at most {limits.max_inputs} inputs"))
    if len(request.external_id) > MAX_EXTERNAL_ID:
        problems.append(FieldViolation("external_id", f"at most {MAX_EXTERNAL_ID} characters"))
    if len(request.split_key) > MAX_SPLIT_KEY:
        problems.append(FieldViolation("split_key", f"at most {MAX_SPLIT_KEY} characters"))
    if request.timeout is not None and request.timeout <= 0:
        problems.append(FieldViolation("timeout", "must be positive"))
    if request.parameters is not None:
        problems.extend(
            FieldViolation(f, d) for f, d in parameter_problems(request.parameters, "parameters")
        )
    problems.extend(response_format_problems(request.response_format, "response_format"))
    problems.extend(routing_problems(request.routing, "routing", check_model))
    problems.extend(cache_problems(request.cache, "cache"))
    if request.tools is not None or request.tool_choice is not None:
        problems.extend(tool_problems(request.tools or (), request.tool_choice, ""))
    if problems:
        problems = [FieldViolation(p.field.lstrip("."), p.description) for p in problems]
        raise InvalidArgument.of(problems, reason="INVALID_PARAMETERS")
