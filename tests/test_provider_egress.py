"""Provider egress through the whole server: HTTPS upstreams, a CONNECT proxy,
header checks, and one upstream request per logged attempt.

The upstreams are real servers on 127.0.0.1 speaking the OpenAI wire format,
over TLS with certificates from a CA made for the test (``trustme``); the
proxy is ``tests.connect_proxy.ConnectProxy``. Proxies come from the process
environment, which the in-process server reads when it starts.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pydantic
import pytest
import trustme
from google.protobuf import duration_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.config import Settings
from tests.conftest import Running, error_details
from tests.connect_proxy import ConnectProxy
from tests.dying_upstream import DyingUpstream
from tests.fake_openai import FakeOpenAI

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_fake(ca: trustme.CA) -> AsyncIterator[FakeOpenAI]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    async with FakeOpenAI(api_key="sk-test", ssl_context=context) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Each test starts with no proxy variable set (and leaves none behind)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    yield monkeypatch


def ask(text: str = "hello over tls", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="gpt-4o-mini", prompt=text), **fields
    )


async def attempt_log(running: Running, execution_id: str) -> list[pb.ExecutionAttempt]:
    got = await running.executions.GetExecution(epb.GetExecutionRequest(execution_id=execution_id))
    return list(got.execution.attempt_log)


async def start_openai(start_server: Any, base_url: str, **settings: Any) -> Running:
    running: Running = await start_server(
        openai_base_url=base_url, openai_api_key="sk-test", **settings
    )
    return running


# ---------------------------------------------------------------------- TLS


async def test_an_https_upstream_trusted_through_the_ca_bundle(
    start_server: Any, tls_fake: FakeOpenAI, ca_bundle: str
) -> None:
    assert tls_fake.base_url.startswith("https://")
    gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
    response = await gw.executions.ExecutePrompt(ask())
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.outputs[0].string_value == "hello over tls"
    events = [e async for e in gw.executions.ExecutePromptStream(ask("streamed over tls"))]
    deltas = [e.streaming.delta for e in events if e.WhichOneof("event") == "streaming"]
    assert len(deltas) == 3 and "".join(deltas) == "streamed over tls"
    assert events[-1].fulfilled.outputs[0].string_value == "streamed over tls"
    assert [r.headers["authorization"] for r in tls_fake.requests] == ["Bearer sk-test"] * 2


async def test_an_untrusted_certificate_is_a_rejection_naming_tls(
    start_server: Any, tls_fake: FakeOpenAI
) -> None:
    # The system's CAs do not include the test's CA.
    gw = await start_openai(start_server, tls_fake.base_url, retry_max_attempts=2)
    response = await gw.executions.ExecutePrompt(ask())
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == "PROVIDER_UNREACHABLE"
    assert "TLS" in response.error.message and "certificate" in response.error.message
    log = await attempt_log(gw, response.execution_id)
    assert [a.error_code for a in log] == ["PROVIDER_UNREACHABLE"]  # not retried
    assert tls_fake.requests == []


# ---------------------------------------------------------------------- proxies


async def test_https_goes_through_the_connect_proxy(
    start_server: Any,
    tls_fake: FakeOpenAI,
    ca_bundle: str,
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    async with ConnectProxy() as proxy:
        # Upper case only: gRPC's own channels read the lower-case names.
        no_proxy_environment.setenv("HTTPS_PROXY", proxy.url)
        gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
        for _ in range(2):
            response = await gw.executions.ExecutePrompt(ask())
            assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
        events = [e async for e in gw.executions.ExecutePromptStream(ask("via the proxy"))]
        assert events[-1].fulfilled.outputs[0].string_value == "via the proxy"
        # One tunnel, kept alive for the three calls.
        assert proxy.tunnels == [f"127.0.0.1:{tls_fake.port}"]
        assert len(tls_fake.requests) == 3


async def test_no_proxy_hosts_are_reached_directly(
    start_server: Any,
    tls_fake: FakeOpenAI,
    ca_bundle: str,
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    async with ConnectProxy() as proxy:
        no_proxy_environment.setenv("HTTPS_PROXY", proxy.url)
        no_proxy_environment.setenv("NO_PROXY", "example.com,127.0.0.1")
        gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
        response = await gw.executions.ExecutePrompt(ask())
        assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
        assert proxy.tunnels == [] and len(tls_fake.requests) == 1


async def test_a_proxy_that_refuses_the_tunnel_is_unreachable(
    start_server: Any,
    tls_fake: FakeOpenAI,
    ca_bundle: str,
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    async with ConnectProxy(refuse=True) as proxy:
        no_proxy_environment.setenv("HTTPS_PROXY", proxy.url)
        gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
        response = await gw.executions.ExecutePrompt(ask())
        assert response.state == pb.EXECUTION_STATE_REJECTED
        assert response.error.code == "PROVIDER_UNREACHABLE"
        assert "proxy" in response.error.message and "403" in response.error.message
        assert proxy.tunnels == [f"127.0.0.1:{tls_fake.port}"]
        assert tls_fake.requests == []


async def test_a_proxy_that_is_down_is_unreachable(
    start_server: Any,
    tls_fake: FakeOpenAI,
    ca_bundle: str,
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    no_proxy_environment.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
    response = await gw.executions.ExecutePrompt(ask())
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == "PROVIDER_UNREACHABLE"
    assert "proxy" in response.error.message and f"127.0.0.1:{port}" in response.error.message
    assert tls_fake.requests == []


# ---------------------------------------------------------------------- sent once


async def test_each_attempt_is_one_upstream_request_when_a_connection_dies(
    start_server: Any,
) -> None:
    async with DyingUpstream() as upstream:
        gw = await start_openai(start_server, upstream.base_url)
        assert (await gw.executions.ExecutePrompt(ask())).state == pb.EXECUTION_STATE_FULFILLED
        # The kept-alive connection takes the next request and dies: one attempt,
        # one request, not sent again behind the router's back.
        failed = await gw.executions.ExecutePrompt(ask())
        assert failed.state == pb.EXECUTION_STATE_REJECTED
        assert failed.error.code == "PROVIDER_ERROR"
        assert len(await attempt_log(gw, failed.execution_id)) == 1
        assert upstream.requests == 2
        # With a retry, the router sends it again: two attempts, two requests.
        assert (await gw.executions.ExecutePrompt(ask())).state == pb.EXECUTION_STATE_FULFILLED
        before = upstream.requests
        retry = pb.RetryPolicy(max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=10**7))
        retried = await gw.executions.ExecutePrompt(ask(routing=pb.Routing(retry=retry)))
        assert retried.state == pb.EXECUTION_STATE_FULFILLED, retried.error
        assert retried.meta.attempts == 2
        log = await attempt_log(gw, retried.execution_id)
        assert [a.error_code for a in log] == ["PROVIDER_ERROR", ""]
        assert upstream.requests - before == 2


# ---------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "value", ["a\r\nx-injected: 1", "a\nb", "a\x00b"], ids=["crlf", "lf", "nul"]
)
async def test_a_control_character_in_a_header_override_is_refused_before_any_request(
    start_server: Any, tls_fake: FakeOpenAI, ca_bundle: str, value: str
) -> None:
    gw = await start_openai(start_server, tls_fake.base_url, http_ca_bundle=ca_bundle)
    request = ask(raw_overrides=pb.RawOverrides(headers={"x-trace": value}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.executions.ExecutePrompt(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_details(caught.value)
    assert bad is not None
    assert [v.field for v in bad.field_violations] == ["raw_overrides.headers[x-trace]"]
    assert tls_fake.requests == []
    fine = await gw.executions.ExecutePrompt(
        ask(raw_overrides=pb.RawOverrides(headers={"x-trace": "a\tb"}))
    )
    assert fine.state == pb.EXECUTION_STATE_FULFILLED, fine.error
    assert tls_fake.last_request.headers["x-trace"] == "a\tb"


@pytest.mark.parametrize("key", ["sk-SECRET\n", "sk-SECRET\r\nx", "sk-SECRET\x00"])
def test_an_api_key_with_a_control_character_stops_the_server(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="PROMPTGATE_OPENAI_API_KEY") as caught:
        Settings(openai_api_key=key)
    assert "control character" in str(caught.value) and "SECRET" not in str(caught.value)
