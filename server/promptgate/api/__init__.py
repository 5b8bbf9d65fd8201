"""The gRPC edge: servicers, protobuf mapping and the error interceptor.

Protobuf and grpc are imported here and nowhere else in the package.
"""
