#!/usr/bin/env bash
# Regenerates the Python stubs for protos/ into src/pixpipe/v1 (messages, gRPC, typed stubs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
out=src
rm -f src/pixpipe/v1/*_pb2*.py src/pixpipe/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" \
  protos/pixpipe/v1/*.proto
cat > src/pixpipe/v1/__init__.py <<'PYEOF'
"""Generated protobuf and gRPC code for package pixpipe.v1 (make protos); do not edit."""
PYEOF
