"""The audit log between protobuf and the domain: listing filters and entries."""

from __future__ import annotations

from promptgate.api.convert.values import dict_to_struct, timestamp, to_datetime
from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.audit import AuditEvent, AuditQuery


def audit_query_from_proto(request: apb.ListAuditEventsRequest) -> AuditQuery:
    """The filters of a ListAuditEvents request."""
    return AuditQuery(
        action=request.action,
        resource=request.resource,
        actor=request.actor,
        start=(
            to_datetime(request.start_time, "start_time")
            if request.HasField("start_time")
            else None
        ),
        end=to_datetime(request.end_time, "end_time") if request.HasField("end_time") else None,
    )


def audit_event_to_proto(event: AuditEvent) -> apb.AuditEvent:
    """One audit entry; ``before`` stays unset for a creation."""
    return apb.AuditEvent(
        id=event.id,
        time=timestamp(event.time),
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        before=dict_to_struct(event.before) if event.before is not None else None,
        after=dict_to_struct(event.after) if event.after is not None else None,
    )
