"""The gRPC edge: servicers, protobuf mapping (``convert``), request checks and the error interceptor.

grpc and protobuf are imported in this package (with the generated code in
``v1``) and in ``promptgate.server``, which wires the servicers, health and
reflection onto the grpc.aio server. The domain packages (``execution``,
``prompts``, ``providers``, ``store``, ...) import neither.
"""
