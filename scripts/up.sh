#!/usr/bin/env bash
# Set up (serving only: ONNX Runtime on CPU, no torch) and start the gRPC server on the bundled models.
#   bash scripts/up.sh [nui serve options...]     e.g. --port 50051
# Then, from another terminal:  .venv/bin/nui transcribe clip.wav --server 127.0.0.1:50051
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nui serve --repo model_repository "$@"
