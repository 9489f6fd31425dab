#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing portcullis:
# wasm targets for plugins, Debian packages the tests and benchmarks use
# (haproxy for side-by-side comparisons, wrk for load, nginx-light, curl and openssl,
# python3-websockets for the WebSocket tests and bench scenario, python3-grpcio
# for the gRPC tests and the Proxy-Wasm gRPC calls' server, nghttp2-client's h2load
# for the gRPC bench scenario, valgrind for bench/instructions),
# and the toolchains of the non-Rust Proxy-Wasm guests (tests/e2e_wasm_sdks.rs):
# clang + lld + wasi-libc + the wasm32 compiler-rt builtins for C (and libc++
# with libc++abi for wasm32 for C++), Node.js and
# npm for AssemblyScript, whose compiler is installed at the version pinned in
# plugins/wasm/assemblyscript/package-lock.json into that directory's
# node_modules (nothing global).
# Idempotent: does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The TLS tests and bench scenarios make certificates with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# C guests: clang --target=wasm32-wasi links with wasm-ld against wasi-libc
# and compiler-rt's wasm32 builtins.
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v wasm-ld >/dev/null 2>&1 || need+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need+=(wasi-libc)
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null ||
  need+=(libclang-rt-dev-wasm32)
# C++ guests: clang++ --target=wasm32-wasi links libc++ and libc++abi built
# for WASI (Debian's libc++-dev-wasm32 brings both).
{ [ -f /usr/lib/wasm32-wasi/libc++.a ] && [ -f /usr/lib/wasm32-wasi/libc++abi.a ]; } ||
  need+=(libc++-dev-wasm32)
# WebSocket tests (tests/e2e_websocket.rs): a real client and server, Python
# `websockets` from Debian, run with Debian's /usr/bin/python3.
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || need+=(python3 python3-websockets)
# gRPC tests (tests/e2e_grpc.rs, tests/e2e_wasm_grpc.rs): a real gRPC client and server, Python
# `grpcio` from Debian (generic handlers, no generated code).
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || need+=(python3 python3-grpcio)
# gRPC bench scenario: h2load (HTTP/2 load generator) from nghttp2-client.
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
# bench/instructions counts instructions per request under callgrind
# (VMs often have no hardware counters for `perf stat`); callgrind_control
# ships in the same package.
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# AssemblyScript guests: Node.js (>= 18) and npm, from Debian if missing.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
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

# The AssemblyScript compiler, at the pinned version, in the guest's directory.
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  echo "setup: assemblyscript needs Node.js >= 18, found $(node --version)" >&2
  exit 1
fi
as_dir=plugins/wasm/assemblyscript
want=$(sed -n 's/.*"assemblyscript": "\([0-9][0-9.]*\)".*/\1/p' "$as_dir/package.json" | head -n1)
have=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$as_dir/node_modules/assemblyscript/package.json" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "setup: installing assemblyscript $want into $as_dir/node_modules"
  (cd "$as_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
