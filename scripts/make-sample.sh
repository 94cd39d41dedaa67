#!/usr/bin/env bash
# Produce tests/data/sample-vp8-opus.pcap: ~6 s of real VP8 + Opus RTP, made by
# ffmpeg (libvpx / libopus) and its RTP muxer, sent to 127.0.0.1 only, and
# captured by tcpdump on the loopback interface with real (-re) timing.
#
#   scripts/make-sample.sh [OUTPUT]      (default: tests/data/sample-vp8-opus.pcap)
#
# Streams in the capture:
#   VP8   PT 96,  SSRC 0x11223344, UDP dst port $VIDEO_PORT (default 45096),
#         640x360 testsrc2 @ 30 fps, ~500 kbit/s, keyframe every 60 frames (2 s),
#         first sequence number 65300 so the 16-bit sequence wraps mid-stream.
#   Opus  PT 111, SSRC 0x55667788, UDP dst port $AUDIO_PORT (default 45111),
#         440 Hz sine, 48 kHz mono, 20 ms frames, 32 kbit/s.
# Nothing listens on those ports; the packets only need to cross `lo`.
#
# Needs root (tcpdump on lo). Installs ffmpeg and tcpdump from Debian if missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/tests/data/sample-vp8-opus.pcap}"
VIDEO_PORT="${VIDEO_PORT:-45096}"
AUDIO_PORT="${AUDIO_PORT:-45111}"
DURATION="${DURATION:-6}"
VIDEO_BITRATE="${VIDEO_BITRATE:-500k}"   # benches/fanout.sh uses a 1M sample
DEST=127.0.0.1 # never change: test traffic must stay on this machine

need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
if ((${#need[@]})); then
    echo "make-sample: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
fi
encoders="$(ffmpeg -hide_banner -encoders 2>/dev/null)" # not piped into grep -q: SIGPIPE + pipefail
for enc in libvpx libopus; do
    grep -q "$enc" <<<"$encoders" || { echo "make-sample: ffmpeg lacks $enc" >&2; exit 1; }
done

work="$(mktemp -d)"
tcpdump_pid=""
cleanup() {
    if [[ -n "$tcpdump_pid" ]] && kill -0 "$tcpdump_pid" 2>/dev/null; then
        kill -INT "$tcpdump_pid" 2>/dev/null || true
        wait "$tcpdump_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Capture: pcap (not pcapng) via -w, packet-buffered (-U), full snaplen, no
# name resolution, only UDP to our two ports on 127.0.0.1. `timeout` bounds the
# run even if something below goes wrong; normally we stop it with SIGINT.
filter="udp and dst host $DEST and (dst port $VIDEO_PORT or dst port $AUDIO_PORT)"
timeout --signal=INT $((DURATION + 30)) \
    tcpdump -i lo -n -U -s 0 -Z root -w "$work/capture.pcap" "$filter" \
    2>"$work/tcpdump.log" &
tcpdump_pid=$!

# Wait until tcpdump says it is listening (it prints that once the capture is
# armed), so no early packet is lost.
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/tcpdump.log" 2>/dev/null && break
    kill -0 "$tcpdump_pid" 2>/dev/null || { cat "$work/tcpdump.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on" "$work/tcpdump.log" || { echo "make-sample: tcpdump did not start" >&2; cat "$work/tcpdump.log" >&2; exit 1; }
sleep 0.3

# One ffmpeg process for both streams, so audio and video share a clock.
# -re on each input paces reading at real time; the lavfi sources' own
# duration bounds both streams (an output -t would bind to the first output
# only), and `timeout` bounds the process whatever happens.
timeout --signal=INT $((DURATION + 20)) \
ffmpeg -hide_banner -nostdin -loglevel warning \
    -re -f lavfi -i "testsrc2=size=640x360:rate=30:duration=$DURATION" \
    -re -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=$DURATION" \
    -fflags +bitexact -flags:v +bitexact -flags:a +bitexact \
    -map 0:v -c:v libvpx -pix_fmt yuv420p -threads 1 \
        -b:v "$VIDEO_BITRATE" -minrate "$VIDEO_BITRATE" -maxrate "$VIDEO_BITRATE" -bufsize "$VIDEO_BITRATE" \
        -g 60 -keyint_min 60 -deadline realtime -cpu-used 8 \
        -lag-in-frames 0 -auto-alt-ref 0 -error-resilient 1 \
        -f rtp -payload_type 96 -ssrc 287454020 -seq 65300 -pkt_size 1200 \
        "rtp://$DEST:$VIDEO_PORT" \
    -map 1:a -c:a libopus -ac 1 -ar 48000 -b:a 32k \
        -frame_duration 20 -application voip \
        -f rtp -payload_type 111 -ssrc 1432778632 -seq 1000 -pkt_size 1200 \
        "rtp://$DEST:$AUDIO_PORT" \
    >"$work/sdp.txt"

# Let the last packets reach the capture, then stop tcpdump cleanly (SIGINT
# makes it flush and close the file).
sleep 0.5
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" || true
tcpdump_pid=""
cat "$work/tcpdump.log" >&2

count="$(tcpdump -n -r "$work/capture.pcap" 2>/dev/null | wc -l)"
if [[ "$count" -lt 100 ]]; then
    echo "make-sample: only $count packets captured" >&2
    exit 1
fi
mkdir -p "$(dirname "$OUT")"
mv "$work/capture.pcap" "$OUT"
chmod 0644 "$OUT"
echo "make-sample: wrote $OUT ($count packets, $(stat -c %s "$OUT") bytes)" >&2
