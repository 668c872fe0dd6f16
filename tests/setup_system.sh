#!/usr/bin/env bash
# System packages the tests need beyond Python: Debian's opencv-doc ships real third-party videos;
# Debian's chromium is the headless browser the results-page test drives (through Playwright).
set -euo pipefail
missing=()
for pkg in opencv-doc chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
