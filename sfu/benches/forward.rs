//! The per-packet path of the node: one SRTP-protected RTP packet from a
//! publisher, fanned out to N subscribers.
//!
//! One iteration = `Node::handle_receive` of one captured datagram (SRTP
//! unprotect, demux, forwarding decision, RTP rewrite, SRTP protect per
//! subscriber) + draining `Node::poll_output` until `Timeout`, handing each
//! datagram to a real `UdpSocket::send_to` towards sink sockets on 127.0.0.1
//! that nobody reads (the kernel drops what overflows their buffers). The
//! `no_send` group drops the datagrams instead, to separate the node's own
//! cost from the system call.
//!
//! The publisher's packets come from its real str0m `Rtc` in the
//! `meridian_sfu::sim` harness, generated in chunks outside the timed
//! section (str0m drops duplicate sequence numbers, so every packet is
//! fresh). Between chunks the simulated network runs a little, untimed, so
//! ICE consent, RTCP and timers stay alive as in a real session.
//!
//! `cargo bench -p meridian-sfu --bench forward` (the node's default, BWE
//! on); `BENCH_BWE=0 cargo bench …` with subscribers' BWE off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_sfu::core::MediaKind;
use meridian_sfu::sim::{Captured, ClientId, SimConfig, SimNet};

/// Packets generated per untimed chunk; 1 ms of virtual time each, so the
/// simulated network is serviced every quarter second of session time.
const CHUNK: u64 = 256;
const PACKET_INTERVAL: Duration = Duration::from_millis(1);
/// A typical video packet payload.
const PAYLOAD: usize = 1100;
const SINKS: usize = 4;

// ---------------------------------------------------------------- allocations

/// Counts heap allocations of the current thread (no atomics, no effect on
/// other threads), to report allocations per iteration.
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.try_with(|c| c.get()).unwrap_or(0)
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------- fixture

struct Fixture {
    sim: SimNet,
    publisher: ClientId,
    subscribers: Vec<ClientId>,
    frame: u64,
    sinks: Vec<(UdpSocket, SocketAddr)>,
    /// Events seen in the timed section (expected: none).
    stray_events: u64,
}

impl Fixture {
    /// A publisher and `n` subscribers with the video flowing (the first
    /// keyframe delivered everywhere).
    fn new(n: usize) -> Fixture {
        let mut sim = SimNet::new(SimConfig {
            seed: 7,
            delay: Duration::from_millis(5),
            max_peers_per_room: n + 1,
            bwe: std::env::var("BENCH_BWE").map_or(true, |v| v != "0"),
            ..SimConfig::default()
        });
        let publisher = sim.add_publisher("bench", "publisher", false, true);
        let subscribers: Vec<ClientId> = (0..n)
            .map(|i| sim.add_subscriber("bench", &format!("sub{i}")))
            .collect();
        sim.run_for(Duration::from_millis(500));
        let sinks = (0..SINKS)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind a sink socket");
                let a = s.local_addr().expect("sink address");
                (s, a)
            })
            .collect();
        let mut fx = Fixture {
            sim,
            publisher,
            subscribers,
            frame: 0,
            sinks,
            stray_events: 0,
        };
        for _ in 0..10 {
            fx.send_packet();
            fx.sim.run_for(Duration::from_millis(33));
        }
        fx.sim.run_for(Duration::from_millis(200));
        for s in &fx.subscribers {
            let got = fx.sim.received(*s).len();
            assert!(got >= 10, "subscriber {s:?} receives video ({got} packets)");
        }
        fx.sim.capture_rtp_uplink(publisher, true);
        fx
    }

    fn send_packet(&mut self) {
        let f = self.frame;
        self.frame += 1;
        let mut payload = if f == 0 {
            vec![0x10, 0x00, 0x9d, 0x01, 0x2a]
        } else {
            vec![0x10, 0x01]
        };
        payload.extend_from_slice(&f.to_be_bytes());
        payload.resize(PAYLOAD, 0x42);
        let ts = (f * 3000) as u32;
        self.sim
            .send_rtp(self.publisher, MediaKind::Video, ts, true, &payload);
    }

    /// Untimed: the publisher's str0m produces `k` SRTP packets, 1 ms apart.
    fn generate(&mut self, k: u64) -> Vec<Captured> {
        for _ in 0..k {
            let t = self.sim.now() + PACKET_INTERVAL;
            self.sim.set_clock(t);
            self.send_packet();
        }
        let c = self.sim.take_captured(self.publisher);
        assert_eq!(c.len() as u64, k, "every written packet was captured");
        c
    }

    /// Timed: one incoming datagram through the node and out to the sinks.
    #[inline]
    fn forward_one(&mut self, c: &Captured, send: bool) {
        let sinks = &self.sinks;
        self.stray_events += self.sim.forward_captured(std::slice::from_ref(c), |t| {
            if send {
                let i = match t.destination {
                    SocketAddr::V4(a) => a.ip().octets()[3] as usize,
                    SocketAddr::V6(_) => 0,
                } % sinks.len();
                let (sock, addr) = &sinks[i];
                let _ = sock.send_to(&t.contents, addr);
            } else {
                std::hint::black_box(t);
            }
        });
    }

    /// Untimed: let the simulated network catch up (ICE consent, RTCP,
    /// timers of the node and every client).
    fn service(&mut self) {
        self.sim.drain_node();
        self.sim.run_for(Duration::from_millis(1));
    }

    fn run(&mut self, iters: u64, send: bool) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let k = CHUNK.min(iters - done);
            let chunk = self.generate(k);
            let start = Instant::now();
            for c in &chunk {
                self.forward_one(c, send);
            }
            total += start.elapsed();
            self.service();
            done += k;
        }
        total
    }

    /// Heap allocations per iteration, on this thread, over `k` packets.
    fn allocs_per_iter(&mut self, k: u64, send: bool) -> f64 {
        let chunk = self.generate(k);
        let before = allocs();
        for c in &chunk {
            self.forward_one(c, send);
        }
        let n = allocs() - before;
        self.service();
        n as f64 / k as f64
    }
}

fn forward(c: &mut Criterion) {
    for send in [true, false] {
        let mut group = c.benchmark_group(if send {
            "forward/udp"
        } else {
            "forward/no_send"
        });
        group.measurement_time(Duration::from_secs(5));
        group.warm_up_time(Duration::from_secs(1));
        group.sample_size(50);
        for n in [1usize, 10, 100] {
            let mut fx = Fixture::new(n);
            let forwarded_before = fx.sim.stats().rtp_forwarded;
            let a = fx.allocs_per_iter(CHUNK, send);
            let forwarded = fx.sim.stats().rtp_forwarded - forwarded_before;
            assert_eq!(
                forwarded,
                CHUNK * n as u64,
                "every packet reaches every subscriber"
            );
            println!(
                "[forward] N={n} send={send}: {a:.1} heap allocations per iteration ({:.2} per forwarded packet)",
                a / n as f64
            );
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter_custom(|iters| fx.run(iters, send))
            });
            let st = fx.sim.stats();
            assert_eq!(fx.stray_events, 0, "no signaling in the timed section");
            assert_eq!(
                st.drops.total(),
                0,
                "nothing dropped during the bench: {:?}",
                st.drops
            );
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
