#!/usr/bin/env bash
# End-to-end fan-out benchmark (issue 5): `meridian serve` pinned to CPU 0,
# `meridian load` pinned to CPU 1, one ~1 Mbit/s VP8 + Opus publisher and
# 50, 100, 200, 400 subscribers (stopping once loss passes 1%), then the
# meeting case: many small rooms where every participant publishes.
#
#   benches/fanout.sh        # DURATION=20s SUBSCRIBERS="50 100 200 400" MEETING_ROOMS="10 25 50 100"
#   DURATION=10s SUBSCRIBERS="50" MEETING_ROOMS="5" benches/fanout.sh   # a quick look
#   SERVE_ARGS="--no-bwe" benches/fanout.sh                                # server flags
#   SERVER_BIN=/tmp/meridian-old benches/fanout.sh    # another server build, same tester
#
# Reports go to target/fanout/*.json|html; a markdown table is printed.
# Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
SUBSCRIBERS=${SUBSCRIBERS:-"50 100 200 400"}
MEETING_ROOMS=${MEETING_ROOMS:-"10 25 50 100"}
MEETING_SIZE=${MEETING_SIZE:-4}
SAMPLE=benches/data/sample-1mbps.pcap
OUT=target/fanout
HTTP=127.0.0.1:18480
UDP=127.0.0.1:18481

[[ -f $SAMPLE ]] || VIDEO_BITRATE=1M DURATION=10 scripts/make-sample.sh "$SAMPLE"
cargo build --release --quiet
BIN=target/release/meridian
mkdir -p "$OUT"

server_pid=""
start_server() {
  # shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
  taskset -c 0 "${SERVER_BIN:-$BIN}" serve --http "$HTTP" --udp "$UDP" ${SERVE_ARGS:-} >"$OUT/server-$1.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://$HTTP/healthz" && return 0
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}
stop_server() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT

run() { # name, extra load args...
  local name=$1
  shift
  start_server "$name"
  taskset -c 1 "$BIN" load --pcap "$SAMPLE" --url "http://$HTTP" --duration "$DURATION" \
    --server-pid "$server_pid" --json "$OUT/$name.json" --html "$OUT/$name.html" --quiet "$@" \
    | tee "$OUT/$name.txt"
  stop_server
}

row() { # name, label
  python3 - "$OUT/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["server"]
f = lambda v, fmt: (fmt % v) if v is not None else "n/a"
lat = r.get("latency_ms") or {}
join = r.get("join_ms") or {}
loss = (r.get("loss") or {}).get("median")
print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
    sys.argv[2],
    f(s.get("cpu_us_per_forwarded_packet"), "%.2f"),
    f(s.get("forwarded_per_cpu_second"), "%.0f"),
    f(s.get("forwarded_per_second"), "%.0f"),
    f(loss * 100 if loss is not None else None, "%.3f%%"),
    f(lat.get("p99"), "%.2f ms"),
    f(join.get("p99"), "%.0f ms"),
    f((s.get("memory_per_subscriber_bytes") or s.get("memory_per_peer_bytes") or 0) / 1024, "%.0f KB"),
    f(r.get("tester_cpu_seconds"), "%.1f s"),
))
PY
}

loss_over_1pct() {
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); l=(r.get('loss') or {}).get('median'); sys.exit(0 if l is None or l > 0.01 else 1)" "$1"
}

echo "== fan-out: 1 publisher, ${SUBSCRIBERS} subscribers, ${DURATION} each"
ran=()
for s in $SUBSCRIBERS; do
  run "fanout-$s" --subscribers "$s"
  ran+=("$s")
  if loss_over_1pct "$OUT/fanout-$s.json"; then
    echo "loss passed 1% at $s subscribers; stopping the fan-out series"
    break
  fi
done

echo "== meeting: rooms of ${MEETING_SIZE} participants, all publishing: ${MEETING_ROOMS} rooms"
meetings=()
for r in $MEETING_ROOMS; do
  run "meeting-$r" --rooms "$r" --publishers "$MEETING_SIZE" --subscribers 0 --publishers-subscribe
  meetings+=("$r")
  if loss_over_1pct "$OUT/meeting-$r.json"; then
    echo "loss passed 1% at $r rooms; stopping the meeting series"
    break
  fi
done

echo
echo "| scenario | server CPU µs / forwarded pkt | forwarded pkt / CPU-s | forwarded pkt/s | loss (median) | latency p99 | join p99 | server memory / subscriber | tester CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
for s in "${ran[@]}"; do row "fanout-$s" "1 → $s"; done
for r in "${meetings[@]}"; do row "meeting-$r" "$r × ${MEETING_SIZE} meeting"; done
