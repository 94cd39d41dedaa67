//! Media delivered over lossy links, with and without recovery.
//!
//! One publisher (≈1 Mbit/s video at 30 fps with a keyframe every 3 s, plus
//! 50 packets/s of audio) and one subscriber, in the deterministic sim: the
//! real `Node` and real str0m clients (which NACK like any WebRTC receiver),
//! a virtual clock and seeded `meridian_netsim` links. One access link is
//! impaired, in both directions (the subscriber's for "down", the
//! publisher's for "up"); its one-way delay is half the RTT, the other hop
//! takes 1 ms.
//!
//! Each row first runs 3 s of media over the impaired link, not counted (the
//! node's loss estimate takes 1–2 s to turn RED and FEC on), then measures.
//! For each row: media packets delivered in time for a 200 ms-deep jitter
//! buffer (arrival ≤ path delay + 200 ms after the publisher sent it), all
//! delivered, and the latency added by recovery (arrival − path delay, p50
//! and p95 over delivered packets), plus what recovery cost: downlink,
//! retransmitted and FEC payload bytes / media payload bytes forwarded;
//! uplink, the publisher's RTP bytes beyond those of the row without
//! recovery. Uplink rows also run a publisher that protects as
//! `meridian-client` does (`NACK + adaptive FEC`), beside the Chrome-like
//! one (`NACK + FEC`).
//!
//! `cargo bench -p meridian-sfu --bench loss` prints the table as markdown
//! (`-- --quick` runs 5 s per row instead of 60 s: at 10 % loss a 0.1 % miss is a handful of packets, and 20 s rows moved by that much from one change to the next).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_netsim::LinkConfig;
use meridian_sfu::core::fec::FEC_FROM_LOSS;
use meridian_sfu::core::publish::Protection;
use meridian_sfu::core::{MediaKind, ResendPolicy};
use meridian_sfu::sim::{ClientId, SimConfig, SimNet};

const ROOM: &str = "bench";
const FRAME: Duration = Duration::from_micros(33_333);
const AUDIO_FRAME: Duration = Duration::from_millis(20);
const JITTER_BUFFER: Duration = Duration::from_millis(200);
const HOP: Duration = Duration::from_millis(1);
/// Media on the impaired link before measuring: long enough for the node's
/// loss estimate (1 s windows) to turn redundancy on.
const WARMUP: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Down,
    Up,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing: the node ignores NACKs, the publisher does not retransmit.
    None,
    /// NACK/RTX both ways.
    Nack,
    /// NACK plus redundancy: RED audio from the publisher and from the
    /// node, ULPFEC video from the node and (uplink rows, where the link
    /// loses ≥ 2 %) from the publisher.
    NackFec,
    /// Uplink rows: NACK + FEC from a publisher that protects as
    /// `meridian-client` does (`core::publish`, `Protection::Adaptive`):
    /// RED audio with up to three earlier packets and ULPFEC video carried
    /// across frames, both following the loss the node's transport
    /// feedback shows, which the publisher measures itself.
    NackFecAdaptive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Nack => "NACK",
            Mode::NackFec => "NACK + FEC",
            Mode::NackFecAdaptive => "NACK + adaptive FEC",
        }
    }
}

struct Row {
    video_in_time: f64,
    audio_in_time: f64,
    in_time: f64,
    delivered: f64,
    added_p50: Duration,
    added_p95: Duration,
    overhead: Option<f64>,
    /// RTP bytes the publisher sent while measuring (SRTP datagrams).
    uplink_bytes: u64,
}

/// A media source that tags every payload with a unique id (its last 8 bytes).
struct Source {
    publisher: ClientId,
    next_id: u64,
    frame: u64,
    video_ts: u32,
    audio_ts: u32,
    /// Send time and kind of every payload id.
    sent: HashMap<u64, (Instant, MediaKind)>,
    rng: u64,
}

impl Source {
    fn rand(&mut self) -> u64 {
        // splitmix64: frame sizes vary, deterministically.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn payload(&mut self, kind: MediaKind, head: &[u8], len: usize, now: Instant) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        self.sent.insert(id, (now, kind));
        let mut p = head.to_vec();
        p.resize(len - 8, 0x5a);
        p.extend_from_slice(&id.to_be_bytes());
        p
    }

    fn video_frame(&mut self, sim: &mut SimNet) {
        let now = sim.now();
        let keyframe = self.frame.is_multiple_of(90);
        // ≈1 Mbit/s: 4 packets of ~1000 bytes per delta frame, 15 per keyframe.
        let packets = if keyframe { 15 } else { 3 + self.rand() % 3 };
        for i in 0..packets {
            // VP8 payload descriptor (S bit on the first packet), then the
            // payload header: P=0 and the start code mark a keyframe.
            let head: &[u8] = match (i, keyframe) {
                (0, true) => &[0x10, 0x00, 0x9d, 0x01, 0x2a],
                (0, false) => &[0x10, 0x01],
                _ => &[0x00, 0x00],
            };
            let len = 900 + (self.rand() % 250) as usize;
            let p = self.payload(MediaKind::Video, head, len, now);
            sim.send_rtp(
                self.publisher,
                MediaKind::Video,
                self.video_ts,
                i + 1 == packets,
                &p,
            );
        }
        self.frame += 1;
        self.video_ts = self.video_ts.wrapping_add(3000);
    }

    fn audio_frame(&mut self, sim: &mut SimNet) {
        let now = sim.now();
        let p = self.payload(MediaKind::Audio, &[0x78, 0x00], 120, now);
        sim.send_rtp(self.publisher, MediaKind::Audio, self.audio_ts, false, &p);
        self.audio_ts = self.audio_ts.wrapping_add(960);
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn run(
    dir: Dir,
    rtt: Duration,
    (impair, loss): (&LinkConfig, f32),
    mode: Mode,
    secs: u64,
    seed: u64,
) -> Row {
    let mut sim = SimNet::new(SimConfig {
        seed,
        delay: HOP,
        resend: match mode {
            Mode::None => None,
            Mode::Nack | Mode::NackFec | Mode::NackFecAdaptive => Some(ResendPolicy::default()),
        },
        audio_red: matches!(mode, Mode::NackFec | Mode::NackFecAdaptive),
        video_fec: matches!(mode, Mode::NackFec | Mode::NackFecAdaptive),
        // LOSS_BENCH_FLEXFEC=1: the clients negotiate FlexFEC (as Chrome 156
        // does), so video FEC goes as FlexFEC instead of ULPFEC in RED.
        client_flexfec: std::env::var_os("LOSS_BENCH_FLEXFEC").is_some(),
        ..SimConfig::default()
    });
    let publisher = sim.add_publisher(ROOM, "pub", true, true);
    let sub = sim.add_subscriber(ROOM, "sub");
    sim.run_for(Duration::from_millis(500));
    if mode == Mode::None {
        sim.client_mut(publisher).retransmits = false;
    }
    match mode {
        Mode::NackFec => {
            sim.client_mut(publisher).protection = Protection::Fixed {
                // As Chrome sends Opus when RED is negotiated.
                red_blocks: 1,
                // And VP8 when ULPFEC is: with FEC after each frame once its
                // transport feedback shows loss. This publisher does not
                // estimate; it is given the link's average loss (a
                // publisher whose estimate is right), with the node's own
                // threshold.
                fec_loss: (dir == Dir::Up && loss >= FEC_FROM_LOSS).then_some(loss),
            };
        }
        Mode::NackFecAdaptive => sim.client_mut(publisher).protection = Protection::Adaptive,
        Mode::None | Mode::Nack => {}
    }
    let link = LinkConfig {
        delay: rtt / 2,
        ..impair.clone()
    };
    let impaired = if dir == Dir::Down { sub } else { publisher };
    sim.set_uplink(impaired, link.clone());
    sim.set_downlink(impaired, link);
    let path = rtt / 2 + HOP;

    let mut src = Source {
        publisher,
        next_id: 1,
        frame: 0,
        video_ts: 1000,
        audio_ts: 5000,
        sent: HashMap::new(),
        rng: seed,
    };
    let start = sim.now();
    let (mut next_video, mut next_audio) = (start, start);
    let mut media_until = |sim: &mut SimNet, src: &mut Source, end: Instant| {
        while sim.now() < end {
            let next = next_video.min(next_audio);
            sim.run_until(next);
            if next_video <= sim.now() {
                src.video_frame(sim);
                next_video += FRAME;
            }
            if next_audio <= sim.now() {
                src.audio_frame(sim);
                next_audio += AUDIO_FRAME;
            }
        }
    };
    // Warm-up on the impaired link (not counted): the node learns the loss.
    media_until(&mut sim, &mut src, start + WARMUP);
    src.sent.clear();
    let before = sim.stats();
    let received_before = sim.received(sub).len();
    let uplink_before = sim.client(publisher).rtp_bytes_sent;
    media_until(
        &mut sim,
        &mut src,
        start + WARMUP + Duration::from_secs(secs),
    );
    let uplink_bytes = sim.client(publisher).rtp_bytes_sent - uplink_before;
    // Let the last retransmissions arrive.
    sim.run_for(Duration::from_secs(2));

    let mut delays = Vec::new();
    // Verbose: video packets by latency added (ms buckets).
    const BUCKETS: [u64; 6] = [10, 100, 150, 200, 300, u64::MAX];
    let mut video_added = [0usize; BUCKETS.len()];
    let (mut video_in_time, mut audio_in_time) = (0usize, 0usize);
    let mut seen = std::collections::HashSet::new();
    for p in &sim.received(sub)[received_before..] {
        let Some(tail) = p.payload.len().checked_sub(8) else {
            continue;
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&p.payload[tail..]);
        let id = u64::from_be_bytes(id);
        let Some((sent, kind)) = src.sent.get(&id) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let delay = p.at.saturating_duration_since(*sent);
        if delay <= path + JITTER_BUFFER {
            match kind {
                MediaKind::Video => video_in_time += 1,
                MediaKind::Audio => audio_in_time += 1,
            }
        }
        let added = delay.saturating_sub(path);
        if *kind == MediaKind::Video {
            let ms = added.as_millis() as u64;
            if let Some(b) = BUCKETS.iter().position(|&b| ms < b) {
                video_added[b] += 1;
            }
        }
        delays.push(added);
    }
    delays.sort();
    let total = src.sent.len().max(1) as f64;
    let videos = src
        .sent
        .values()
        .filter(|(_, k)| *k == MediaKind::Video)
        .count()
        .max(1) as f64;
    let audios = (src.sent.len() as f64 - videos).max(1.0);
    let stats = sim.stats();
    if std::env::var_os("LOSS_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{:?} fec {} pkts {} B, fwd {} B",
            stats.nack,
            stats.fec_packets - before.fec_packets,
            stats.fec_bytes - before.fec_bytes,
            stats.bytes_forwarded - before.bytes_forwarded
        );
        eprintln!(
            "subscriber rebuilt {} packets from FEC; publisher got {} NACKs; drops {:?}",
            sim.client(sub).fec_recovered,
            sim.client(src.publisher).nacks_received(),
            stats.drops
        );
        let video_seen: usize = video_added.iter().sum();
        eprintln!(
            "video added latency <10/<100/<150/<200/<300/more ms: {video_added:?}, never: {}",
            videos as usize - video_seen
        );
    }
    let media_bytes = stats.bytes_forwarded - before.bytes_forwarded;
    let recovery_bytes =
        (stats.nack.resent_bytes - before.nack.resent_bytes) + (stats.fec_bytes - before.fec_bytes);
    Row {
        video_in_time: video_in_time as f64 / videos,
        audio_in_time: audio_in_time as f64 / audios,
        in_time: (video_in_time + audio_in_time) as f64 / total,
        delivered: seen.len() as f64 / total,
        added_p50: percentile(&delays, 0.5),
        added_p95: percentile(&delays, 0.95),
        overhead: (dir == Dir::Down && mode != Mode::None)
            .then(|| recovery_bytes as f64 / media_bytes.max(1) as f64),
        uplink_bytes,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 5 } else { 60 };
    // `--down` or `--up`: only those rows.
    let dirs: Vec<Dir> = match (
        std::env::args().any(|a| a == "--down"),
        std::env::args().any(|a| a == "--up"),
    ) {
        (true, false) => vec![Dir::Down],
        (false, true) => vec![Dir::Up],
        _ => vec![Dir::Down, Dir::Up],
    };
    // (name, link, its average loss).
    let profiles: Vec<(&str, LinkConfig, f32)> = vec![
        ("0%", LinkConfig::default(), 0.0),
        ("5%", "loss=5%".parse().expect("spec"), 0.05),
        ("10%", "loss=10%".parse().expect("spec"), 0.10),
        ("20%", "loss=20%".parse().expect("spec"), 0.20),
        ("30%", "loss=30%".parse().expect("spec"), 0.30),
        // Gilbert–Elliott: ~10.7% loss in bursts of 4 on average.
        ("burst", "ge=p:3%/r:25%".parse().expect("spec"), 0.107),
    ];
    println!(
        "Media packets delivered in time for a 200 ms jitter buffer (all delivered), latency added by\n\
         recovery p50/p95, retransmitted bytes / media bytes. {secs} s of media per row.\n"
    );
    println!(
        "| link | RTT | loss | recovery | in time | video | audio | delivered | added p50 | added p95 | overhead |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &dir in &dirs {
        for rtt in [Duration::from_millis(50), Duration::from_millis(150)] {
            for (name, profile, loss) in &profiles {
                let modes: &[Mode] = match dir {
                    Dir::Down => &[Mode::None, Mode::Nack, Mode::NackFec],
                    Dir::Up => &[Mode::None, Mode::Nack, Mode::NackFec, Mode::NackFecAdaptive],
                };
                // The publisher's bytes with no recovery, for the uplink
                // rows' overhead: what the others sent beyond it.
                let mut plain_uplink: Option<u64> = None;
                for &mode in modes {
                    let label = format!(
                        "{}/{}/{name}/{}",
                        if dir == Dir::Down { "down" } else { "up" },
                        rtt.as_millis(),
                        mode.name()
                    );
                    // LOSS_BENCH_ONLY=down/150/10%: only rows whose label
                    // (link/RTT/loss/recovery) starts so.
                    if let Ok(only) = std::env::var("LOSS_BENCH_ONLY") {
                        if !label.starts_with(&only) {
                            continue;
                        }
                    }
                    let mut r = run(dir, rtt, (profile, *loss), mode, secs, 7);
                    if dir == Dir::Up {
                        if mode == Mode::None {
                            plain_uplink = Some(r.uplink_bytes);
                        } else if let Some(plain) = plain_uplink {
                            r.overhead = Some(r.uplink_bytes as f64 / plain.max(1) as f64 - 1.0);
                        }
                    }
                    println!(
                        "| {} | {} ms | {} | {} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {} ms | {} ms | {} |",
                        if dir == Dir::Down { "down" } else { "up" },
                        rtt.as_millis(),
                        name,
                        mode.name(),
                        r.in_time * 100.0,
                        r.video_in_time * 100.0,
                        r.audio_in_time * 100.0,
                        r.delivered * 100.0,
                        r.added_p50.as_millis(),
                        r.added_p95.as_millis(),
                        r.overhead
                            .map(|o| format!("{:.1} %", o * 100.0))
                            .unwrap_or_else(|| "–".into()),
                    );
                }
            }
        }
    }
}
