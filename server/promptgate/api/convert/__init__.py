"""Mapping between protobuf messages and domain objects, both ways.

Only shapes are checked here (a oneof that must be set, an enum that must not
be UNSPECIFIED); meaning is checked by the domain. One module per area:
``values`` (JSON, times), ``chat``, ``prompts``, ``executions``, ``batches``,
``audit``, ``usage``.
"""
