#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing portcullis:
# wasm targets for plugins, and Debian packages the tests and benchmarks use
# (haproxy for side-by-side comparisons, wrk for load, nginx-light and curl).
# Idempotent: does nothing when everything is present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
for t in wasm32-unknown-unknown wasm32-wasip1; do
  if ! grep -qx "$t" <<<"$installed"; then
    echo "setup: adding Rust target $t"
    rustup target add "$t"
  fi
done
