"""Server reflection that also resolves method names.

The stock servicer asks the descriptor pool for the file containing a symbol;
with protobuf's upb backend that lookup misses fully-qualified method names
(grpc/grpc#34743), so ``grpcurl describe pkg.Service.Method`` fails. This
servicer falls back to finding the method and answering with its service's
file.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import _async, _base, reflection, reflection_pb2_grpc


class ReflectionServicer(_async.ReflectionServicer):  # type: ignore[misc]
    """grpc.reflection.v1alpha.ServerReflection with method-name lookups."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            descriptor = self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            try:
                method = self._pool.FindMethodByName(fully_qualified_name)
            except KeyError:
                return _base._not_found_error(request)
            descriptor = method.containing_service.file
        return _base._file_descriptor_response(descriptor, request)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (and reflection itself) on ``server``."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer((*service_names, reflection.SERVICE_NAME)), server
    )
