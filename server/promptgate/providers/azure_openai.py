"""The Azure OpenAI adapter: Chat Completions on an Azure OpenAI resource.

Azure OpenAI speaks OpenAI's Chat Completions body, so ``AzureOpenAIProvider``
is ``OpenAIProvider`` (payloads, tools, response formats, streams, usage,
``raw_overrides``) with Azure's URL, key header and a few answer details:

- URL: ``POST {endpoint}/openai/deployments/{deployment}/chat/completions
  ?api-version={api_version}``. ``deployments`` maps a model name to its
  deployment id; a model without an entry goes to the deployment of the same
  name. The body still names the model: Azure ignores it, and it keeps the
  response-cache keys of two models apart.
- Auth: ``api-key: <key>``; ``raw_overrides.headers`` cannot set or replace
  it (nor ``authorization``), and it is never part of an error message.
- Streams ask for their usage (``stream_options.include_usage``) on
  api-versions from ``STREAM_USAGE_SINCE`` on (earlier ones refuse the field
  with a 400, so their streams report no usage). Azure's first chunk may carry
  only ``prompt_filter_results`` (empty ``choices``, ``model: ""``): it adds
  nothing to the answer, and ``raw`` keeps its ``prompt_filter_results``.
- Errors map as OpenAI's (401/403 ``PROVIDER_AUTH_FAILED``, 429
  ``PROVIDER_RATE_LIMITED`` with ``retry-after-ms`` or ``Retry-After``, 5xx
  retryable ``PROVIDER_ERROR``), plus: a 404 is ``PROVIDER_INVALID_REQUEST``
  naming the deployment and api-version; a 400 with ``code: content_filter``
  (the prompt refused by Azure's content filter) is
  ``PROVIDER_CONTENT_BLOCKED`` naming the filtered categories. A completion
  the filter cut ends with finish reason ``content_filter`` (CONTENT_FILTER).

Only the deployment-based API with dated api-versions is spoken here, not the
``/openai/v1/`` API; authentication is by API key (no Entra ID tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final
from urllib.parse import quote, urlsplit

from promptgate import jsontext
from promptgate.errors import ProviderError
from promptgate.providers.base import ProviderRequest
from promptgate.providers.http import PROTECTED_HEADERS
from promptgate.providers.openai import OpenAIProvider
from promptgate.providers.upstream import UpstreamClient

__all__ = ["DEFAULT_API_VERSION", "STREAM_USAGE_SINCE", "AzureOpenAIProvider"]

DEFAULT_API_VERSION: Final = "2024-10-21"
"""The latest GA api-version of Azure OpenAI's data-plane inference API."""

STREAM_USAGE_SINCE: Final = "2024-09-01"
"""The first api-version whose streams accept ``stream_options``."""

_API_KEY_HEADER: Final = "api-key"
_DATED_VERSION: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_CONTENT_FILTER: Final = "content_filter"
_DEPLOYMENT_NOT_FOUND: Final = "DeploymentNotFound"


class AzureOpenAIProvider(OpenAIProvider):
    """A ``Provider`` for the Chat Completions of an Azure OpenAI resource.

    ``endpoint`` is the resource's URL (``https://RESOURCE.openai.azure.com``),
    ``api_key`` one of its keys, ``api_version`` the ``api-version`` query
    value, ``deployments`` model name -> deployment id (a model without an
    entry uses its own name). ``client`` is shared and belongs to the caller.
    Raises ``ValueError`` for an unusable endpoint, key, version or deployment.
    """

    _protected_headers: ClassVar[frozenset[str]] = PROTECTED_HEADERS | {_API_KEY_HEADER}
    _stream_raw_keys: ClassVar[tuple[str, ...]] = ("prompt_filter_results",)

    def __init__(
        self,
        *,
        client: UpstreamClient,
        endpoint: str,
        api_key: str,
        api_version: str = DEFAULT_API_VERSION,
        deployments: Mapping[str, str] | None = None,
        name: str = "azure-openai",
    ) -> None:
        endpoint = endpoint.strip().rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "the endpoint must be an http(s) URL, e.g. https://NAME.openai.azure.com"
            )
        if parts.query or parts.fragment:
            raise ValueError("the endpoint must not hold a query or fragment")
        if not api_key:
            raise ValueError("an API key is required")
        if not api_version or api_version != api_version.strip():
            raise ValueError("the api-version must be a non-empty word, e.g. 2024-10-21")
        for model, deployment in (deployments or {}).items():
            if not model or not _usable_deployment(deployment):
                raise ValueError(f"model {model!r}: {deployment!r} is not a deployment id")
        super().__init__(client=client, base_url=endpoint, api_key=api_key, name=name)
        self.endpoint = endpoint
        self.api_version = api_version
        self.deployments: dict[str, str] = dict(deployments or {})
        self._stream_usage = asks_stream_usage(api_version)
        self._query = "?api-version=" + quote(api_version, safe="")

    def deployment_for(self, model: str) -> str:
        """The deployment id that serves ``model``."""
        return self.deployments.get(model, model)

    # ------------------------------------------------------------------ hooks

    def _request_url(self, request: ProviderRequest) -> str:
        deployment = self.deployment_for(request.model)
        if not _usable_deployment(deployment):
            raise ProviderError(
                f"{self.name}: {deployment!r} is not a deployment id",
                code="PROVIDER_INVALID_REQUEST",
            )
        path = f"/openai/deployments/{quote(deployment, safe='')}/chat/completions"
        return self.endpoint + path + self._query

    def _credentials(self) -> dict[str, str]:
        return {_API_KEY_HEADER: self._api_key} if self._api_key else {}

    def _status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, request: ProviderRequest
    ) -> ProviderError:
        error = _error_object(body)
        code = error.get("code")
        if status == 400 and code == _CONTENT_FILTER:
            return self._content_filter_error(error)
        mapped = super()._status_error(status, headers, body, request)
        if status != 404:
            return mapped
        deployment = self.deployment_for(request.model)
        if code == _DEPLOYMENT_NOT_FOUND:
            what = f"deployment {deployment!r} (model {request.model!r}) does not exist"
        else:
            what = f"no deployment {deployment!r} (model {request.model!r}) answers"
        detail = mapped.message.removeprefix(f"{self.name}: ")
        return ProviderError(
            f"{self.name}: {what} on {self.endpoint} with api-version {self.api_version}: {detail}",
            code=mapped.code,
            status=status,
        )

    def _content_filter_error(self, error: Mapping[str, Any]) -> ProviderError:
        categories = _filtered_categories(error)
        because = f" ({categories})" if categories else ""
        message = error.get("message")
        said = f": {str(message)[:500]}" if message else ""
        return ProviderError(
            f"{self.name}: the prompt was refused by Azure OpenAI's content filter{because}{said}",
            code="PROVIDER_CONTENT_BLOCKED",
            status=400,
        )


def asks_stream_usage(api_version: str) -> bool:
    """Whether streams on ``api_version`` may send ``stream_options``.

    Dated versions before ``STREAM_USAGE_SINCE`` refuse it; any other
    version (later dates, undated names) takes it.
    """
    dated = _DATED_VERSION.match(api_version)
    return dated is None or dated.group(0) >= STREAM_USAGE_SINCE


def _usable_deployment(deployment: str) -> bool:
    # "." and ".." would be dot segments of the URL path, not a deployment.
    return bool(deployment) and deployment.strip(".") != ""


def _error_object(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an Azure error body ({} if there is none)."""
    try:
        data = jsontext.loads(body)
    except jsontext.JsonTextError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _filtered_categories(error: Mapping[str, Any]) -> str:
    """``hate: medium, jailbreak: detected`` from a content-filter error's details.

    Azure sends ``innererror.content_filter_result``; its API spec says
    ``inner_error.content_filter_results``: both are read.
    """
    inner = error.get("innererror") or error.get("inner_error")
    if not isinstance(inner, dict):
        return ""
    results = inner.get("content_filter_result") or inner.get("content_filter_results")
    if not isinstance(results, dict):
        return ""
    filtered: list[str] = []
    for category, result in results.items():
        if not isinstance(result, dict) or result.get("filtered") is not True:
            continue
        severity = result.get("severity")
        level = severity if isinstance(severity, str) else "detected"
        filtered.append(f"{category}: {level}")
    return ", ".join(filtered)
