#!/usr/bin/env bash
# Browser test of the web demo: three headless Chromium pages join one room on
# a fresh `meridian serve`, all inside a private loopback-only network
# namespace, so nothing leaves the machine and ports never collide. Then
# simulcast.mjs: a simulcast publisher and two viewers whose tiles differ get
# different layers. Then fec.mjs: Chrome behind `meridian netsim` (10 % loss,
# NACK off) decodes far more frames with Meridian's ULPFEC than without, and the
# node rebuilds a Chrome publisher's lost packets from its ULPFEC.
#
# ONLY=simulcast.mjs runs one of the test files.
#
#   sudo tests/browser/run.sh            # needs root (apt-get, ip netns)
#   MERIDIAN_BIN=path/to/meridian tests/browser/run.sh
#
# Artifacts (screenshot, server log, per-page console/WebSocket logs) go to
# tests/browser/artifacts/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${MERIDIAN_BIN:-target/release/meridian}
[[ $BIN == /* ]] || BIN="$ROOT/$BIN"
HTTP_ADDR=127.0.0.1:8080
UDP_ADDR=127.0.0.1:8081
ARTIFACTS="$HERE/artifacts"

log() { echo "[browser-test] $*"; }

if [[ ! -x $BIN ]]; then
  log "server binary not found: $BIN (build with: cargo build --release)"
  exit 1
fi

if [[ ! -x /usr/bin/chromium ]] || ! command -v curl >/dev/null; then
  log "installing Debian chromium"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation curl iproute2 >/dev/null
fi

if [[ ! -d $HERE/node_modules/playwright-core ]]; then
  log "installing playwright-core"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

mkdir -p "$ARTIFACTS"
NS="mer-br-$$"
SERVER_PID=""

cleanup() {
  local status=$?
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  # Anything still running in our namespace was started by this script.
  local pids
  pids=$(ip netns pids "$NS" 2>/dev/null || true)
  if [[ -n $pids ]]; then
    kill $pids 2>/dev/null || true
    sleep 0.5
    kill -9 $pids 2>/dev/null || true
  fi
  ip netns del "$NS" 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up

log "starting $BIN in namespace $NS"
cd "$ROOT"
ip netns exec "$NS" env -u MERIDIAN_API_SECRET RUST_LOG="${RUST_LOG:-info}" "$BIN" serve --http "$HTTP_ADDR" --udp "$UDP_ADDR" \
  >"$ARTIFACTS/server.log" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 1 100); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server exited early; log:"
    cat "$ARTIFACTS/server.log"
    exit 1
  fi
  if ip netns exec "$NS" curl -sf -o /dev/null "http://$HTTP_ADDR/healthz"; then
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z $ready ]]; then
  log "server did not answer /healthz within 20 s; log:"
  cat "$ARTIFACTS/server.log"
  exit 1
fi

cd "$HERE"
status=0
run_test() { # file, time limit in s, environment (NAME=value ...)
  [[ -z ${ONLY:-} || ${ONLY:-} == "$1" ]] || return 0
  log "running $1 ${*:3}"
  ip netns exec "$NS" env MERIDIAN_URL="http://$HTTP_ADDR" MERIDIAN_BIN="$(cd "$ROOT" && realpath "$BIN")" "${@:3}" \
    timeout "$2" node --test --test-reporter=spec "$1" || status=$?
}
set +e
run_test run.mjs 170
# These two start their own servers (and the FEC test its netsim proxies).
[[ $status -eq 0 ]] && run_test simulcast.mjs 200 SIMULCAST_CODEC=VP8
[[ $status -eq 0 ]] && run_test simulcast.mjs 200 SIMULCAST_CODEC=H264
[[ $status -eq 0 ]] && run_test fec.mjs 220
set -e
if [[ $status -ne 0 ]]; then
  log "tests failed (exit $status); server log tail:"
  tail -n 40 "$ARTIFACTS/server.log"
fi
exit "$status"
