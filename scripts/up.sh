#!/usr/bin/env bash
# Set up (serving only: ONNX Runtime on CPU, no torch, plus the web app's `ui` extra) and start the stack:
# the gRPC server on the bundled models and the web app over it (`nui up`, see ui/up.py).
#   bash scripts/up.sh [nui up options...]     e.g. --port 50051 --app-port 7860
# It prints `server on HOST:PORT` and `app on URL`; Ctrl-C stops both.
# From another terminal:  .venv/bin/nui transcribe clip.wav --server 127.0.0.1:50051
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ui
exec .venv/bin/nui up "$@"
