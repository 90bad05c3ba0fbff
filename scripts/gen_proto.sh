#!/usr/bin/env bash
# Regenerates the Python bindings in hutong/v1/ from proto/hutong/v1/*.proto.
# Generated code is committed; CI runs this and fails on any diff.
# Needs the versions pinned in pyproject.toml's `dev` extra (grpcio-tools, mypy-protobuf).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
# The mypy-protobuf plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) live beside that Python.
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
export PATH
rm -f hutong/v1/*_pb2*.py hutong/v1/*_pb2*.pyi
"$PYTHON" -m grpc_tools.protoc \
  --proto_path=proto \
  --python_out=. \
  --grpc_python_out=. \
  --mypy_out=. \
  --mypy_grpc_out=. \
  proto/hutong/v1/*.proto
