#!/usr/bin/env bash
# Set up this checkout on a fresh Debian 12 machine (idempotent):
#   system packages (speech synthesizers for the corpus builder, sox), a virtualenv in .venv with nui
#   installed editable, and the gRPC stubs generated from proto/.
#
#   bash scripts/setup.sh            # serving only (ONNX Runtime, no torch)
#   bash scripts/setup.sh dev,train  # + training (CPU torch 2.13.0) and the test/lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

APT_PACKAGES=(espeak-ng espeak-ng-data flite festival festlex-cmu festlex-poslex festvox-kallpc16k
  festvox-kdlpc16k festvox-us-slt-hts sox libsox-fmt-base fortunes-min fortune-mod wamerican
  tuxpaint-stamps-default fonts-noto-color-emoji unicode-data librsvg2-bin openssl
  chromium chromium-driver libportaudio2 alsa-utils openjdk-17-jre-headless)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [[ ",$EXTRAS," == *",train,"* ]]; then
  # The pinned CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
  .venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" torch==2.13.0
fi
if [ -n "$EXTRAS" ]; then "${PIP[@]}" -e ".[$EXTRAS]"; else "${PIP[@]}" -e .; fi
# grpcio-tools generates the stubs; it is a dev extra, so install it alone for a serving-only setup.
.venv/bin/python -c "import grpc_tools" 2>/dev/null || "${PIP[@]}" "grpcio-tools==1.81.1"
bash scripts/gen_stubs.sh
echo "setup: ok (.venv, extras: ${EXTRAS:-none})"
