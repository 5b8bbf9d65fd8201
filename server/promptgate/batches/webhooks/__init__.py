"""Batch webhooks: signed callbacks, an SSRF guard and retrying delivery.

When a batch ends, promptgate POSTs a JSON document to the caller's
``callback_url``. One module per part:

- ``signing``: the body is compact JSON with sorted keys (``encode_body``),
  signed with the batch's workspace's secret (``workspace_secret``) in the
  ``X-Promptgate-Signature`` header; receivers check it with ``verify``.
- ``guard``: ``CallbackGuard`` refuses callback URLs that would reach what the
  caller could not (metadata services, private networks, this server).
- ``delivery``: ``WebhookSender`` POSTs with retries (``Retry-After`` or an
  exponential backoff with full jitter, from ``promptgate.backoff``),
  re-checking the destination through the guard before every attempt.
"""
