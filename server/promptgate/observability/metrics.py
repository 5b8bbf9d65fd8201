"""promptgate's Prometheus metrics: their definitions and the calls that count.

One ``Metrics`` holds every metric on a registry of its own (a test may run
several servers in one process). The domain gets it as an optional
collaborator (``None`` when metrics are off) and calls one method per event:
an execution finished, a group commit, a batch item finished, and so on.

Label values are always bounded, whatever callers send:

- ``model``: a model of the price table (defaults and
  ``PROMPTGATE_PRICES_FILE``), of a provider's allow-list
  (``PROMPTGATE_*_MODELS``) or the demo's ``mock-1``; any other model (inline
  prompts name any string) is ``other``;
- ``provider``: the four adapters (``mock``, ``openai``, ``anthropic``,
  ``gemini``), else ``other``;
- error codes (``outcome``, ``error_code``, ``reason``, ``state``): the first
  ``MAX_CODES`` distinct well-formed codes seen (they come from promptgate's
  own code, so in practice all of them), then ``OTHER``.

No label carries an id (prompt, execution, key, workspace, batch).

The hot path stays cheap: label children are bound once per label set and
kept, so counting an execution is a few dictionary lookups and ``inc()`` calls.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

if TYPE_CHECKING:
    from promptgate.execution.model import ExecutionRecord

OTHER = "other"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_CODES = 64
OK = "OK"
NO_ERROR = ""

PROVIDERS = frozenset({"mock", "openai", "anthropic", "gemini"})
# The demo prompt's model: the one mock model with its own series.
MOCK_MODELS = frozenset({"mock-1"})

# Seconds. gRPC calls and provider calls run from milliseconds (errors, cache
# hits) to minutes (long generations).
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class BoundedCodes:
    """Code-like label values: the first ``limit`` distinct ones, then ``OTHER``."""

    def __init__(self, limit: int = MAX_CODES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit and _CODE.fullmatch(value):
            self._seen.add(value)
            return value
        return "OTHER"


class _ModelSeries:
    """The children of one (provider, model) label pair."""

    __slots__ = (
        "cached",
        "cost",
        "input",
        "model",
        "output",
        "provider",
        "requests",
        "seconds",
        "ttft",
    )

    def __init__(self, m: Metrics, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.requests: dict[str, Any] = {}
        self.seconds = m.provider_request_seconds.labels(provider, model)
        self.ttft = m.time_to_first_token.labels(provider, model)
        self.input = m.tokens.labels(provider, model, "input")
        self.output = m.tokens.labels(provider, model, "output")
        self.cached = m.tokens.labels(provider, model, "cached_input")
        self.cost = m.cost.labels(provider, model)


class Metrics:
    """Every promptgate metric, on ``self.registry``. See the module docstring."""

    def __init__(
        self, *, known_models: Iterable[str] = (), registry: CollectorRegistry | None = None
    ) -> None:
        # No *_created series: they double the series count and no chart uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, RSS, open fds
        r.register(GC_COLLECTOR)
        self._known_models = frozenset(known_models) | MOCK_MODELS
        self._codes = BoundedCodes()

        # gRPC server: the names and labels of go-grpc-prometheus.
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            grpc_labels,
            registry=r,
        )

        # Providers, tokens, cost.
        pm = ("provider", "model")
        self.provider_requests = Counter(
            "promptgate_provider_requests_total",
            "Calls to providers (every attempt: retries and fallbacks count), by outcome: "
            "OK or the error code.",
            (*pm, "outcome"),
            registry=r,
        )
        self.provider_request_seconds = Histogram(
            "promptgate_provider_request_seconds",
            "Duration of calls to providers (a stream: until its last event).",
            pm,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "promptgate_time_to_first_token_seconds",
            "Streamed executions: time from the request to the first delta.",
            pm,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "promptgate_tokens_total",
            "Tokens used by executions, by kind: input, output, cached_input (part of input).",
            (*pm, "kind"),
            registry=r,
        )
        self.cost = Counter(
            "promptgate_cost_usd_total",
            "Cost of executions in USD, from the price table.",
            pm,
            registry=r,
        )
        self.executions = Counter(
            "promptgate_executions_total",
            "Executions that ran (replays excluded), by state and error code.",
            ("state", "error_code"),
            registry=r,
        )
        self.cache_requests = Counter(
            "promptgate_cache_requests_total",
            "Response-cache lookups of executions with the cache on, by result: "
            "hit, miss, refresh.",
            ("result",),
            registry=r,
        )
        self.ratelimit_rejections = Counter(
            "promptgate_ratelimit_rejections_total",
            "Calls refused by a key's limits, by reason: RATE_LIMIT_EXCEEDED, "
            "CONCURRENT_LIMIT_EXCEEDED, QUOTA_EXCEEDED.",
            ("reason",),
            registry=r,
        )

        # Recorder.
        self.recorder_queue_depth = Gauge(
            "promptgate_recorder_queue_depth",
            "Execution records queued for the next group commit.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.recorder_retrying = Gauge(
            "promptgate_recorder_retrying",
            "Execution records whose write failed, waiting to be written again.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.recorder_commit_seconds = Histogram(
            "promptgate_recorder_commit_seconds",
            "Duration of group commits of execution records.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.recorder_records = Counter(
            "promptgate_recorder_records_total",
            "Execution records by result: written, lost (could not be written).",
            ("result",),
            registry=r,
        )

        # Batches and chains.
        self.batch_items = Counter(
            "promptgate_batch_items_total",
            "Batch items this process finished, by state: SUCCEEDED, REJECTED, CANCELLED.",
            ("state",),
            registry=r,
        )
        self.batch_items_running = Gauge(
            "promptgate_batch_items_running",
            "Batch items running now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batches = Counter(
            "promptgate_batches_total",
            "Batches that ended on this process, by state: SUCCEEDED, FAILED, CANCELLED.",
            ("state",),
            registry=r,
        )
        self.chain_executions = Counter(
            "promptgate_chain_executions_total",
            "Chain executions that ran (replays excluded), by state and error code.",
            ("state", "error_code"),
            registry=r,
        )
        self.chain_execution_seconds = Histogram(
            "promptgate_chain_execution_seconds",
            "Duration of chain executions, all steps.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._executions: dict[tuple[str, str], Any] = {}
        self._chains: dict[tuple[str, str], Any] = {}
        self._cache = {
            result: self.cache_requests.labels(result) for result in ("hit", "miss", "refresh")
        }
        self._written = self.recorder_records.labels("written")
        self._lost = self.recorder_records.labels("lost")

    # Labels

    def model_label(self, model: str) -> str:
        """``model`` if it is a known model, else ``other``."""
        return model if model in self._known_models else OTHER

    def code_label(self, code: str) -> str:
        """A bounded code label (see ``BoundedCodes``)."""
        return self._codes(code)

    def model_series(self, provider: str, model: str) -> _ModelSeries:
        """The bound children of (provider, model), labels bounded."""
        if provider not in PROVIDERS:
            provider = OTHER
        if model not in self._known_models:
            model = OTHER
        key = (provider, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _ModelSeries(self, provider, model)
        return series

    # Executions

    def execution_finished(
        self, record: ExecutionRecord, in_flight: tuple[str, str, float] | None, now: float
    ) -> None:
        """Count an execution that ran to its end (FULFILLED or REJECTED).

        Its provider calls come from its attempt log; ``in_flight`` is the call
        (provider, model, monotonic start) its deadline or its caller cut
        short, counted with the execution's error code.
        """
        for attempt in record.attempt_log:
            series = self.model_series(attempt.provider, attempt.model)
            failure = attempt.failure
            self._provider_call(series, OK if failure is None else failure.code, attempt.latency_s)
        if in_flight is not None:
            provider, model, started = in_flight
            code = record.error.code if record.error is not None else "CANCELLED"
            self._provider_call(self.model_series(provider, model), code, now - started)
        series = self.model_series(record.provider, record.model)
        if record.time_to_first_token is not None:
            series.ttft.observe(record.time_to_first_token)
        usage = record.usage
        if usage.input_tokens > 0:
            series.input.inc(usage.input_tokens)
        if usage.output_tokens > 0:
            series.output.inc(usage.output_tokens)
        if usage.cached_input_tokens > 0:
            series.cached.inc(usage.cached_input_tokens)
        if record.cost.priced and record.cost.value > 0:
            series.cost.inc(record.cost.value)
        if record.cache_status:
            cache = self._cache.get(record.cache_status)
            if cache is not None:
                cache.inc()
        error = record.error.code if record.error is not None else NO_ERROR
        key = (record.state.value, error)
        counter = self._executions.get(key)
        if counter is None:
            counter = self.executions.labels(key[0], self._codes(error) if error else NO_ERROR)
            if len(self._executions) < MAX_CODES:
                self._executions[key] = counter
        counter.inc()

    def _provider_call(self, series: _ModelSeries, outcome: str, seconds: float) -> None:
        counter = series.requests.get(outcome)
        if counter is None:
            counter = self.provider_requests.labels(
                series.provider, series.model, self._codes(outcome)
            )
            if len(series.requests) < MAX_CODES:
                series.requests[outcome] = counter
        counter.inc()
        series.seconds.observe(max(seconds, 0.0))

    def ratelimit_rejected(self, reason: str) -> None:
        """A call refused by a key's limits (the error's reason)."""
        self.ratelimit_rejections.labels(self._codes(reason)).inc()

    # Recorder

    def watch_recorder_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at each scrape (one process; workers use ``recorder_queued``)."""
        if not os.environ.get(MULTIPROC_ENV):
            self.recorder_queue_depth.set_function(depth)

    def recorder_queued(self, depth: int) -> None:
        """The recorder's queue holds ``depth`` records (set once per group commit)."""
        self.recorder_queue_depth.set(depth)

    def recorder_committed(self, seconds: float, records: int) -> None:
        """A group commit of ``records`` records took ``seconds``."""
        self.recorder_commit_seconds.observe(seconds)
        self._written.inc(records)

    def recorder_waiting(self, retrying: int, lost: int = 0) -> None:
        """``retrying`` records wait to be rewritten; ``lost`` more were given up."""
        self.recorder_retrying.set(retrying)
        if lost:
            self._lost.inc(lost)

    # Batches and chains

    def batch_item_finished(self, state: str) -> None:
        """A batch item's outcome was written (SUCCEEDED, REJECTED or CANCELLED)."""
        self.batch_items.labels(self._codes(state)).inc()

    def batch_items_now(self, running: int) -> None:
        """This process runs ``running`` batch items."""
        self.batch_items_running.set(running)

    def batch_finished(self, state: str) -> None:
        """A batch ended here (SUCCEEDED, FAILED or CANCELLED)."""
        self.batches.labels(self._codes(state)).inc()

    def chain_finished(self, state: str, error_code: str, seconds: float) -> None:
        """A chain execution ran to its end (FULFILLED or REJECTED)."""
        key = (state, error_code)
        counter = self._chains.get(key)
        if counter is None:
            counter = self.chain_executions.labels(
                self._codes(state), self._codes(error_code) if error_code else NO_ERROR
            )
            if len(self._chains) < MAX_CODES:
                self._chains[key] = counter
        counter.inc()
        self.chain_execution_seconds.observe(max(seconds, 0.0))
