#!/usr/bin/env bash
# System packages the tests need beyond Python: Debian's opencv-doc ships real third-party videos.
set -euo pipefail
if ! dpkg -s opencv-doc >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq opencv-doc >/dev/null
fi
