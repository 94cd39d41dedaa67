#!/usr/bin/env bash
# Instructions per forwarded packet in the node (issue 5), counted by
# callgrind: unlike time on this shared machine (2x swings in a day), the
# count moves only a few percent run to run (how many timer-driven ticks land
# in the timed loop varies), so a change to the forward path can be judged by
# one or two runs of each.
#
#   benches/instructions.sh            # N = 10 subscribers, BWE on
#   N=100 benches/instructions.sh
#   BENCH_BWE=0 benches/instructions.sh
#   BIN=/tmp/forward-old benches/instructions.sh   # another build of the bench
#
# It runs the criterion bench `forward/no_send/N` in profile mode under
# callgrind, counting only inside `SimNet::forward_captured` (one SRTP packet
# in, every datagram out, no sockets), and divides by the calls made by the
# timed loop. Takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10}
command -v valgrind >/dev/null || {
  echo "installing valgrind (Debian package)"
  apt-get install -y valgrind >/dev/null
}
if [[ -z ${BIN:-} ]]; then
  BIN=$(cargo bench -p meridian-sfu --bench forward --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forward" and m.get("executable"):
        print(m["executable"])')
fi
OUT=$(mktemp /tmp/callgrind.XXXXXX)
trap 'rm -f "$OUT"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$OUT" --toggle-collect='*forward_captured*' \
  "$BIN" --bench "no_send/$N\$" --profile-time 3 >/dev/null 2>&1
callgrind_annotate --inclusive=yes --tree=caller "$OUT" 2>/dev/null |
  python3 -c '
import re, sys
n = int(sys.argv[1])
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(.*\)\s+<\s.*Fixture::run \(([\d,]+)x\)", line)
    if m:
        ir, calls = (int(g.replace(",", "")) for g in m.groups())
        per = ir / calls
        print(f"N={n}: {calls} packets timed, {per:,.0f} instructions per incoming packet, "
              f"{per / n:,.0f} per forwarded packet")
        break
else:
    sys.exit("no timed calls found in the callgrind output")
' "$N"
