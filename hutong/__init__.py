"""Hutong wire contract: generated protobuf and gRPC bindings live in :mod:`hutong.v1`."""
