"""Partials between the domain and protobuf."""

from __future__ import annotations

from promptgate.api.convert.values import timestamp
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.prompts.partials import Partial, PartialVersion


def partial_to_proto(partial: Partial) -> ppb.Partial:
    """A domain Partial as a message."""
    return ppb.Partial(
        id=partial.id,
        name=partial.name,
        description=partial.description,
        archived=partial.archived,
        latest_version=partial.latest_version,
        create_time=timestamp(partial.created_at),
        update_time=timestamp(partial.updated_at),
    )


def partial_version_to_proto(version: PartialVersion) -> ppb.PartialVersion:
    """A domain PartialVersion as a message."""
    return ppb.PartialVersion(
        id=version.id,
        partial_id=version.partial_id,
        partial=version.name,
        version=version.version,
        content=version.content,
        description=version.description,
        includes=list(version.includes),
        create_time=timestamp(version.created_at),
    )
