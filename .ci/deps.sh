#!/usr/bin/env bash
# deps.sh - installs what a fresh Debian 12 machine needs to build and test ds4cl.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential ca-certificates git python3 python3-pip \
    ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo libxxhash-dev libcjson-dev >/dev/null
