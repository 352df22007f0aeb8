#!/usr/bin/env bash
# Generate the Python gRPC stubs for every proto/*.proto (messages, type stubs, services).
# Run from anywhere: scripts/gen_stubs.sh  (uses .venv/bin/python when present, else python).
# The outputs (proto/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) are git-ignored and never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. proto/*.proto
