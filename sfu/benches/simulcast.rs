//! What simulcast adds to the node's per-packet path: the per-subscriber
//! layer check (`LayerSelector`: forward, or skip a layer the subscriber
//! does not take) and the VP8 PictureID/TL0PICIDX rewrite (`Vp8Munger`),
//! against plain single-layer forwarding, in one run.
//!
//! `simulcast/no_send/{single,simulcast}/N`: one iteration = one *round* of
//! three SRTP-protected VP8 packets from the publisher, each through
//! `Node::handle_receive` (SRTP unprotect, demux, layer check and forwarding
//! decision per subscriber, VP8 descriptor rewrite, RTP rewrite, SRTP
//! protect per receiving subscriber) + draining `Node::poll_output` until
//! `Timeout`; the datagrams are dropped (`black_box`), not sent.
//! - `single`: a plain VP8 publisher; every packet goes to all N
//!   subscribers: 3·N forwarded packets per iteration.
//! - `simulcast`: a q/h/f publisher, one packet per layer per round; the N
//!   subscribers are split in thirds by tile size (320x180 → q, 640x360 → h,
//!   no limit → f), so each takes exactly one packet of the round: N
//!   forwarded packets per iteration. Everyone started on f, so the q and h
//!   subscribers switched once and their picture ids are rewritten (a copy of
//!   the payload); the f subscribers' are not.
//!
//! A round of three keeps the forwarded count per iteration an integer for
//! any N (N/3 per packet is not), so criterion's `thrpt` is exactly
//! forwarded packets per second. Time per incoming packet = `time` / 3.
//! Every packet is a whole non-key frame with a real payload descriptor
//! (15-bit picture id, TL0PICIDX), consecutive per layer, 1 ms apart.
//! BWE is off in both cases so bandwidth estimation neither picks layers
//! nor adds its own per-packet work.
//!
//! The publisher's packets come from its real str0m `Rtc` in the
//! `meridian_sfu::sim` harness, generated in chunks outside the timed
//! section; between chunks the simulated network runs a little, untimed
//! (ICE consent, RTCP, the allocator's passes).
//!
//! `simulcast/vp8_munger/{zero_offset,offset}`: one iteration =
//! `Vp8Munger::rewrite` of one 1100-byte packet, on a stream that never
//! switched (nothing to change, no copy) and after `switch_source` to a
//! stream with other picture ids (changed copy written).
//!
//! `cargo bench -p meridian-sfu --bench simulcast`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_sfu::core::vp8::Vp8Munger;
use meridian_sfu::core::{DropReason, MediaKind, TrackPrefs};
use meridian_sfu::sim::{Captured, ClientId, ReceivedPacket, SimConfig, SimNet};

const ROOM: &str = "bench";
/// Packets per iteration (one per layer for simulcast).
const ROUND: u64 = 3;
/// Rounds generated per untimed chunk (255 packets, 1 ms of virtual time each).
const CHUNK_ROUNDS: u64 = 85;
const PACKET_INTERVAL: Duration = Duration::from_millis(1);
const FRAME: Duration = Duration::from_micros(33_333);
/// A typical video packet payload.
const PAYLOAD: usize = 1100;
/// Bytes at the end of every payload: layer, source picture id (2 bytes).
const TAIL: usize = 3;
const RIDS: [&str; 3] = ["q", "h", "f"];
const SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
/// Per-layer picture id / TL0PICIDX / timestamp bases, far apart so a
/// switch gives non-zero rewrite offsets.
const PID0: [u16; 3] = [100, 20_000, 32_700];
const TL00: [u8; 3] = [5, 200, 250];
const TS0: [u32; 3] = [1000, 700_000, 3_000_000_000];
/// Time allowed for the subscribers to settle on their layers.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- publisher

/// A VP8 encoder of one stream (`rids == [None]`) or a q/h/f simulcast:
/// one packet per frame per layer, keyframes when forced or requested.
struct Camera {
    client: ClientId,
    rids: Vec<Option<&'static str>>,
    sending: Vec<bool>,
    force: Vec<bool>,
    pid: Vec<u16>,
    tl0: Vec<u8>,
    requests_seen: usize,
    t0: Instant,
    next_frame: Option<Instant>,
}

impl Camera {
    fn new(sim: &SimNet, client: ClientId, rids: Vec<Option<&'static str>>) -> Self {
        let n = rids.len();
        Camera {
            client,
            rids,
            sending: vec![true; n],
            force: vec![true; n],
            pid: PID0[..n].to_vec(),
            tl0: TL00[..n].to_vec(),
            requests_seen: 0,
            t0: sim.now(),
            next_frame: None,
        }
    }

    fn layers(&self) -> usize {
        self.rids.len()
    }

    /// Layer `layer` sends one packet (a whole frame) now.
    fn packet(&mut self, sim: &mut SimNet, layer: usize, keyframe: bool) {
        let pid = self.pid[layer];
        let mut payload = Vec::with_capacity(PAYLOAD);
        // Descriptor: X, S; I with a 15-bit picture id; L.
        payload.extend_from_slice(&[0x90, 0xc0, 0x80 | (pid >> 8) as u8, pid as u8]);
        payload.push(self.tl0[layer]);
        // VP8 payload header: frame tag, bit 0 = 0 on keyframes.
        payload.extend_from_slice(&[if keyframe { 0x50 } else { 0x51 }, 0x02, 0x00]);
        if keyframe {
            let (w, h) = SIZES[if self.layers() == 1 { 2 } else { layer }];
            payload.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            payload.extend_from_slice(&w.to_le_bytes());
            payload.extend_from_slice(&h.to_le_bytes());
        }
        payload.resize(PAYLOAD - TAIL, 0xab);
        payload.push(layer as u8);
        payload.extend_from_slice(&pid.to_be_bytes());
        // RTP timestamps follow the (virtual) clock.
        let ticks = (sim.now().duration_since(self.t0).as_micros() * 9 / 100) as u32;
        let ts = TS0[layer].wrapping_add(ticks);
        sim.send_rtp_layer(
            self.client,
            MediaKind::Video,
            self.rids[layer],
            ts,
            true,
            &payload,
        );
        self.pid[layer] = (pid + 1) & 0x7fff;
        self.tl0[layer] = self.tl0[layer].wrapping_add(1);
    }

    /// One frame on every layer it sends; keyframes where asked for.
    fn frame(&mut self, sim: &mut SimNet) {
        let requests = sim.keyframe_requests(self.client);
        for (_, r) in &requests[self.requests_seen..] {
            let rid = r.rid.map(|r| r.to_string());
            for (i, name) in self.rids.iter().enumerate() {
                if rid.is_none() || rid.as_deref() == *name {
                    self.force[i] = true;
                }
            }
        }
        self.requests_seen = requests.len();
        for layer in 0..self.layers() {
            if self.sending[layer] {
                let keyframe = std::mem::take(&mut self.force[layer]);
                self.packet(sim, layer, keyframe);
            }
        }
    }

    /// Runs the net for `dur`, a frame every 33 ms.
    fn drive(&mut self, sim: &mut SimNet, dur: Duration) {
        let start = sim.now();
        for ms in 0..dur.as_millis() as u64 {
            let now = start + Duration::from_millis(ms);
            sim.run_until(now);
            let at = *self.next_frame.get_or_insert(now);
            if at <= now {
                self.frame(sim);
                self.next_frame = Some(at + FRAME);
            }
        }
        sim.run_until(start + dur);
    }
}

fn layer_of(p: &ReceivedPacket) -> u8 {
    p.payload[p.payload.len() - TAIL]
}

/// (picture id as received, picture id the publisher sent).
fn picture_ids(p: &ReceivedPacket) -> (u16, u16) {
    let n = p.payload.len();
    (
        u16::from_be_bytes([p.payload[2] & 0x7f, p.payload[3]]),
        u16::from_be_bytes([p.payload[n - 2], p.payload[n - 1]]),
    )
}

fn video_since(sim: &SimNet, c: ClientId, since: Instant) -> Vec<&ReceivedPacket> {
    sim.received(c)
        .iter()
        .filter(|p| p.kind == MediaKind::Video && p.at >= since)
        .collect()
}

// ---------------------------------------------------------------- fixture

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Single,
    Simulcast,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Single => "single",
            Case::Simulcast => "simulcast",
        }
    }
}

struct Fixture {
    sim: SimNet,
    cam: Camera,
    /// Forwarded packets per round.
    per_round: u64,
    rounds: u64,
    /// Events seen in the timed section (expected: none).
    stray_events: u64,
}

impl Fixture {
    fn new(case: Case, n: usize) -> Fixture {
        let mut sim = SimNet::new(SimConfig {
            seed: 7,
            delay: Duration::from_millis(5),
            max_peers_per_room: n + 1,
            bwe: false,
            ..SimConfig::default()
        });
        let cam_rids = match case {
            Case::Single => vec![None],
            Case::Simulcast => RIDS.iter().map(|r| Some(*r)).collect(),
        };
        let publisher = match case {
            Case::Single => sim.add_publisher(ROOM, "pub", false, true),
            Case::Simulcast => sim.add_simulcast_publisher(ROOM, "pub", false, &RIDS),
        };
        let subs: Vec<ClientId> = (0..n)
            .map(|i| sim.add_subscriber(ROOM, &format!("sub{i}")))
            .collect();
        sim.run_for(Duration::from_millis(500));
        let mut cam = Camera::new(&sim, publisher, cam_rids);
        let top = cam.layers() - 1;

        // Everyone starts on the top layer: only it is sent at first.
        for l in 0..top {
            cam.sending[l] = false;
        }
        let start = sim.now();
        settle(&mut sim, &mut cam, &subs, start, |_| top as u8);

        // Tiles: a third each on q, h and f. q and h start (keyframe first);
        // the q and h subscribers switch down from f.
        let want = |i: usize| if top == 0 { 0 } else { (i % 3) as u8 };
        if case == Case::Simulcast {
            let track = sim
                .node()
                .tracks_in_room(ROOM)
                .into_iter()
                .find_map(|(t, k)| (k == MediaKind::Video).then_some(t))
                .expect("the published video track");
            for (i, s) in subs.iter().enumerate() {
                let max_size = match want(i) {
                    0 => Some((320, 180)),
                    1 => Some((640, 360)),
                    _ => None,
                };
                let peer = sim.client(*s).peer;
                sim.node_mut()
                    .set_track_prefs(
                        peer,
                        track,
                        TrackPrefs {
                            max_size,
                            disabled: false,
                        },
                    )
                    .expect("tile size accepted");
            }
            // Their `force` is still set: they start with a keyframe.
            cam.sending.fill(true);
            let start = sim.now();
            settle(&mut sim, &mut cam, &subs, start, |s| {
                want(subs.iter().position(|x| *x == s).expect("a subscriber"))
            });
        }

        // The rewrite is live: picture ids of whoever switched differ from
        // the publisher's.
        let mut rewritten = 0;
        for (i, s) in subs.iter().enumerate() {
            let last = sim
                .received(*s)
                .iter()
                .rfind(|p| p.kind == MediaKind::Video)
                .expect("video received");
            let (got, sent) = picture_ids(last);
            if got != sent {
                rewritten += 1;
            }
            if case == Case::Simulcast && want(i) != top as u8 {
                assert_ne!(got, sent, "{s:?} switched layers: picture ids rewritten");
            }
        }
        println!(
            "[simulcast] {} N={n}: picture ids rewritten for {rewritten} of {n} subscribers",
            case.name()
        );

        sim.capture_rtp_uplink(publisher, true);
        let per_round = match case {
            Case::Single => ROUND * n as u64,
            // Each subscriber takes one layer: one packet of the round.
            Case::Simulcast => n as u64,
        };
        Fixture {
            sim,
            cam,
            per_round,
            rounds: 0,
            stray_events: 0,
        }
    }

    /// Untimed: the publisher's str0m produces `k` rounds of packets, 1 ms
    /// apart, round-robin over its layers.
    fn generate(&mut self, k: u64) -> Vec<Captured> {
        let layers = self.cam.layers();
        for i in 0..k * ROUND {
            let t = self.sim.now() + PACKET_INTERVAL;
            self.sim.set_clock(t);
            self.cam.packet(&mut self.sim, i as usize % layers, false);
        }
        let c = self.sim.take_captured(self.cam.client);
        assert_eq!(
            c.len() as u64,
            k * ROUND,
            "every written packet was captured"
        );
        c
    }

    /// Timed: one incoming datagram through the node; the output dropped.
    #[inline]
    fn forward_one(&mut self, c: &Captured) {
        self.stray_events += self.sim.forward_captured(std::slice::from_ref(c), |t| {
            std::hint::black_box(t);
        });
    }

    /// Untimed: let the simulated network catch up.
    fn service(&mut self) {
        self.sim.drain_node();
        self.sim.run_for(Duration::from_millis(1));
    }

    fn run(&mut self, rounds: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < rounds {
            let k = CHUNK_ROUNDS.min(rounds - done);
            let chunk = self.generate(k);
            let start = Instant::now();
            for c in &chunk {
                self.forward_one(c);
            }
            total += start.elapsed();
            self.service();
            done += k;
        }
        self.rounds += rounds;
        total
    }
}

/// Runs (sending frames, keyframes on request) until every subscriber gets
/// only the layer `want` names for it; panics after `SETTLE_LIMIT`.
fn settle(
    sim: &mut SimNet,
    cam: &mut Camera,
    subs: &[ClientId],
    start: Instant,
    want: impl Fn(ClientId) -> u8,
) {
    let on_layer = |sim: &SimNet, s: ClientId, since: Instant| {
        let got = video_since(sim, s, since);
        !got.is_empty() && got.iter().all(|p| layer_of(p) == want(s))
    };
    loop {
        assert!(
            sim.now() < start + SETTLE_LIMIT,
            "subscribers on their layers within {SETTLE_LIMIT:?}"
        );
        cam.drive(sim, Duration::from_millis(250));
        let since = sim.now() - Duration::from_millis(200);
        if subs.iter().all(|s| on_layer(sim, *s, since)) {
            break;
        }
    }
    // And they stay there.
    let since = sim.now();
    cam.drive(sim, Duration::from_millis(500));
    for s in subs {
        let layers: Vec<u8> = video_since(sim, *s, since)
            .iter()
            .map(|p| layer_of(p))
            .collect();
        assert!(
            !layers.is_empty() && layers.iter().all(|l| *l == want(*s)),
            "{s:?} receives layer {} only: {layers:?}",
            want(*s)
        );
    }
}

fn drops_since(before: &[(DropReason, u64)], sim: &SimNet) -> Vec<(DropReason, u64)> {
    sim.stats()
        .drops
        .iter()
        .zip(before)
        .map(|((r, now), (_, then))| (r, now - then))
        .filter(|(_, d)| *d > 0)
        .collect()
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulcast/no_send");
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    for n in [10usize, 100] {
        for case in [Case::Single, Case::Simulcast] {
            let mut fx = Fixture::new(case, n);
            // Skipped layers are `Decision::Skip`, not a drop reason: every
            // drop in the timed section is unexpected.
            let drops_before: Vec<(DropReason, u64)> = fx.sim.stats().drops.iter().collect();
            let forwarded_before = fx.sim.stats().rtp_forwarded;

            fx.run(CHUNK_ROUNDS);
            let forwarded = fx.sim.stats().rtp_forwarded - forwarded_before;
            println!(
                "[simulcast] {} N={n}: {:.2} forwarded per incoming packet ({forwarded} for {} packets)",
                case.name(),
                forwarded as f64 / (CHUNK_ROUNDS * ROUND) as f64,
                CHUNK_ROUNDS * ROUND,
            );
            assert_eq!(forwarded, CHUNK_ROUNDS * fx.per_round);

            group.throughput(Throughput::Elements(fx.per_round));
            group.bench_function(BenchmarkId::new(case.name(), n), |b| {
                b.iter_custom(|iters| fx.run(iters))
            });

            let forwarded = fx.sim.stats().rtp_forwarded - forwarded_before;
            assert_eq!(
                forwarded,
                fx.rounds * fx.per_round,
                "every packet reached exactly the subscribers of its layer"
            );
            assert_eq!(fx.stray_events, 0, "no signaling in the timed section");
            let drops = drops_since(&drops_before, &fx.sim);
            assert!(drops.is_empty(), "dropped in the timed section: {drops:?}");
        }
    }
    group.finish();
}

// ---------------------------------------------------------------- munger

/// `count` packets of one stream: consecutive picture ids from `pid0`.
fn vp8_packets(pid0: u16, tl00: u8, count: u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let pid = pid0.wrapping_add(i) & 0x7fff;
            let mut p = vec![0x90, 0xc0, 0x80 | (pid >> 8) as u8, pid as u8];
            p.push(tl00.wrapping_add(i as u8));
            p.extend_from_slice(&[0x51, 0x02, 0x00]);
            p.resize(PAYLOAD, 0xab);
            p
        })
        .collect()
}

fn munger(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulcast/vp8_munger");
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    // A ring of packets; at its end the ids step back (a reordered packet
    // to the munger): the same offsets apply, the cost is the same.
    const RING: u16 = 64;
    let a = vp8_packets(PID0[2], TL00[2], RING);
    let b = vp8_packets(PID0[0], TL00[0], RING);

    for (name, switched) in [("zero_offset", false), ("offset", true)] {
        let mut m = Vp8Munger::new();
        let mut out = Vec::with_capacity(PAYLOAD);
        for p in &a {
            let changed = m.rewrite(p, &mut out).expect("a valid descriptor");
            assert!(!changed, "the first source goes through unchanged");
        }
        let stream = if switched {
            m.switch_source();
            &b
        } else {
            &a
        };
        for p in stream {
            let changed = m.rewrite(p, &mut out).expect("a valid descriptor");
            assert_eq!(changed, switched, "{name}: a copy only after a switch");
        }
        let mut i = 0;
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let p = &stream[i % stream.len()];
                i += 1;
                std::hint::black_box(m.rewrite(std::hint::black_box(p), &mut out))
            })
        });
        assert_eq!(
            m.rewrite(&stream[0], &mut out),
            Ok(switched),
            "{name}: unchanged behaviour after the bench"
        );
    }
    group.finish();
}

criterion_group!(benches, forwarding, munger);
criterion_main!(benches);
