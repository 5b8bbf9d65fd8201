"""A local fake of Azure OpenAI's Chat Completions, on a real socket.

``FakeAzureOpenAI`` is ``FakeOpenAI`` (``tests/fake_openai.py``) speaking the
dialect Microsoft's REST reference documents (data-plane inference,
api-version 2024-10-21):

- ``POST /openai/deployments/{deployment-id}/chat/completions?api-version=V``
  with ``api-key: KEY``. A missing or wrong key is 401; another path, or a
  missing or unsupported api-version, is 404 ``Resource not found``; an
  unknown deployment is 404 ``DeploymentNotFound``. The body's ``model`` is
  ignored: the deployment decides.
- Answers are OpenAI's plus ``prompt_filter_results`` (top level) and
  ``content_filter_results`` (per choice). Every stream starts with a chunk
  carrying only ``prompt_filter_results`` (``choices`` empty, ``id`` and
  ``model`` "", ``created`` 0).
- Errors are ``{"error": {"code": "...", "message": "..."}}``; a 429 sends
  ``retry-after`` and ``retry-after-ms``.
- Api-versions before 2024-09-01 refuse ``stream_options`` (400).

``deployments`` maps a deployment id to the model it runs (None: every
deployment exists and runs the model of its name). The model picks the
behaviour as ``FakeOpenAI``'s model names do (``fake-429``, ``fake-tools``,
``fake-endless``, ... and the request headers ``x-fake-retry-after``,
``x-fake-retry-after-ms`` (``none`` omits one), ``x-fake-cached-tokens``),
plus:

=================================  ===================================================
model                              answer
=================================  ===================================================
``fake-content-filter-prompt``     400 ``content_filter``: the prompt refused, with
                                   innererror ``ResponsibleAIPolicyViolation`` and
                                   ``content_filter_result`` (violence: medium)
``fake-content-filter-completion`` a completion the filter cut: the first two words,
                                   finish reason ``content_filter``, violence
                                   ``filtered: true`` in ``content_filter_results``
``fake-429-once``                  the first request to the deployment is a 429; the
                                   later ones echo
=================================  ===================================================

``deployment_calls`` counts the requests per deployment; ``call(record)``
gives a request's (deployment, api-version).
"""

from __future__ import annotations

import itertools
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fake_openai import _WORD, FakeOpenAI, RecordedRequest, _Behaviour, _Exchange

__all__ = ["SUPPORTED_API_VERSIONS", "FakeAzureOpenAI", "call"]

SUPPORTED_API_VERSIONS = frozenset(
    {"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview"}
)
_STREAM_OPTIONS_SINCE = "2024-09-01"
_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")
_REGION = "Sweden Central"
_ids = itertools.count(1)


def call(record: RecordedRequest) -> tuple[str, str]:
    """The deployment and api-version a request named."""
    url = urlsplit(record.path)
    match = _PATH.match(url.path)
    versions = parse_qs(url.query).get("api-version", [""])
    return (unquote(match.group(1)) if match else "", versions[0])


def filter_results(**filtered: str) -> dict[str, Any]:
    """Content filter results: every category safe but the ``filtered`` ones (at that severity)."""
    results: dict[str, Any] = {c: {"filtered": False, "severity": "safe"} for c in _CATEGORIES}
    for category, severity in filtered.items():
        results[category] = {"filtered": True, "severity": severity}
    return results


def prompt_filter_results() -> list[dict[str, Any]]:
    """The ``prompt_filter_results`` of a prompt that passed."""
    results = {**filter_results(), "jailbreak": {"filtered": False, "detected": False}}
    return [{"prompt_index": 0, "content_filter_results": results}]


class _AzureExchange(_Exchange):
    def base_headers(self) -> list[tuple[str, str]]:
        return [
            ("apim-request-id", f"0000{next(_ids):04d}-fake-azure"),
            ("x-request-id", self.request_id),
            ("x-ms-region", _REGION),
        ]

    async def start_sse(self) -> None:
        await super().start_sse()
        # Azure's first chunk: the prompt's filter results, before any choice.
        await self.event(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": prompt_filter_results(),
            }
        )


class FakeAzureOpenAI(FakeOpenAI):
    """A fake Azure OpenAI resource on 127.0.0.1 (see the module docstring)."""

    exchange_type = _AzureExchange

    def __init__(
        self,
        *,
        api_key: str | None = None,
        deployments: Mapping[str, str] | None = None,
        api_versions: Iterable[str] = SUPPORTED_API_VERSIONS,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(host=host, port=port, api_key=api_key, ssl_context=ssl_context)
        self.deployments = None if deployments is None else dict(deployments)
        self.api_versions = frozenset(api_versions)
        self.deployment_calls: Counter[str] = Counter()

    @property
    def endpoint(self) -> str:
        """The resource endpoint, e.g. ``http://127.0.0.1:PORT``."""
        return self.base_url.removesuffix("/v1")

    async def _route(self, ex: _Exchange) -> None:
        record = ex.record
        deployment, version = call(record)
        if not deployment or version not in self.api_versions:
            await _error(ex, 404, "404", "Resource not found")
            return
        if record.method != "POST":
            await _error(ex, 405, "405", f"The HTTP method {record.method} is not allowed.")
            return
        if self.api_key is not None:
            key = record.headers.get("api-key")
            if key is None:
                await _error(
                    ex,
                    401,
                    "401",
                    "Access denied due to missing subscription key. Make sure to include "
                    "subscription key when making requests to an API.",
                )
                return
            if key != self.api_key:
                await _error(
                    ex,
                    401,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make "
                    "sure to provide a valid key for an active subscription and use a correct "
                    "regional API endpoint for your resource.",
                )
                return
        model = deployment if self.deployments is None else self.deployments.get(deployment)
        if model is None:
            await _error(
                ex,
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
            return
        body = record.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await _error(ex, 400, "BadRequest", "'messages' is a required property")
            return
        if version[:10] < _STREAM_OPTIONS_SINCE and "stream_options" in body:
            await _error(
                ex,
                400,
                None,
                "Unrecognized request argument supplied: stream_options",
                type="invalid_request_error",
                param=None,
            )
            return
        self.deployment_calls[deployment] += 1
        calls = self.deployment_calls[deployment]
        await _AzureBehaviour(ex, body, model, version=version, calls=calls).run()


class _AzureBehaviour(_Behaviour):
    """An answer in Azure's dialect (see the module docstring)."""

    def __init__(
        self, ex: _Exchange, body: dict[str, Any], model: str, *, version: str, calls: int
    ) -> None:
        super().__init__(ex, body, model)
        self.version = version
        self.calls = calls
        self.filtered: dict[str, str] = {}
        """Categories the completion filter flagged (category -> severity)."""

    async def run(self) -> None:
        handlers: dict[str, Callable[[], Awaitable[None]]] = {
            "fake-content-filter-prompt": self._prompt_refused,
            "fake-content-filter-completion": self._completion_cut,
            "fake-429-once": self._throttled_once,
        }
        handler = handlers.get(self.model)
        if handler is not None:
            await handler()
        else:
            await super().run()

    # ------------------------------------------------------------------ documents

    def _completion(
        self,
        text: str | None,
        tool_calls: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        document = super()._completion(text, tool_calls, finish_reason)
        del document["service_tier"]
        document["choices"][0]["content_filter_results"] = filter_results(**self.filtered)
        document["prompt_filter_results"] = prompt_filter_results()
        return document

    def _chunk(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        *,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        chunk = super()._chunk(delta, finish_reason, usage=usage)
        del chunk["service_tier"]
        for choice in chunk["choices"]:
            done = finish_reason is not None
            choice["content_filter_results"] = filter_results(**self.filtered) if done else {}
        return chunk

    # ------------------------------------------------------------------ behaviours

    async def _error_status(self, status: int) -> None:
        headers: list[tuple[str, str]] = []
        if status == 429:
            code = "429"
            message = (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                f"version {self.version} have exceeded call rate limit of your current OpenAI "
                "S0 pricing tier. Please retry after 7 seconds. Please go here: "
                "https://aka.ms/oai/quotaincrease if you would like to further increase the "
                "default rate limit."
            )
            headers = self._retry_headers()
        elif status == 401:
            code = "401"
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource."
            )
        elif status == 404:
            code = "DeploymentNotFound"
            message = "The API deployment for this resource does not exist."
        elif status == 500:
            code = "InternalServerError"
            message = "The server had an error while processing your request. Sorry about that!"
        elif status >= 500:
            code = "ServiceUnavailable"
            message = "The service is temporarily unable to process your request."
        else:
            code = "BadRequest"
            message = f"Fake invalid request (HTTP {status})."
        await _error(self.ex, status, code, message, headers)

    def _retry_headers(self) -> list[tuple[str, str]]:
        headers = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "0"),
        ]
        for name, default in (("retry-after", "7"), ("retry-after-ms", "7000")):
            value = self.ex.header(f"x-fake-{name}") or default
            if value.lower() != "none":
                headers.append((name, value))
        return headers

    async def _prompt_refused(self) -> None:
        results = {
            **filter_results(violence="medium"),
            "jailbreak": {"filtered": False, "detected": False},
        }
        await _error(
            self.ex,
            400,
            "content_filter",
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry. To learn more about our "
            "content filtering policies please read our documentation: "
            "https://go.microsoft.com/fwlink/?linkid=2198766",
            type=None,
            param="prompt",
            status=400,
            innererror={
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": results,
            },
        )

    async def _completion_cut(self) -> None:
        self.filtered = {"violence": "medium"}
        pieces = _WORD.findall(self._echo_text())[:2]
        if self.stream:
            await self._content_stream(pieces, finish_reason="content_filter")
        else:
            text = "".join(pieces)
            await self.ex.send_json(200, self._completion(text, finish_reason="content_filter"))

    async def _throttled_once(self) -> None:
        if self.calls == 1:
            await self._error_status(429)
        else:
            await self._echo()


async def _error(
    ex: _Exchange,
    http_status: int,
    code: str | None,
    message: str,
    headers: list[tuple[str, str]] | None = None,
    **extra: Any,
) -> None:
    """An Azure error body (``extra``: more keys of the ``error`` object)."""
    document = {"error": {"code": code, "message": message, **extra}}
    await ex.send_json(http_status, document, headers)
