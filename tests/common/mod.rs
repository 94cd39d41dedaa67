//! Shared pieces of the integration tests: a real `meridian serve` child
//! process on free loopback ports, and the real encoder sample.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_client::capture::{read_capture, CapturedStream, MediaKindGuess};
use meridian_client::{Client, ClientEvent, MediaKind, OutRtp, RtpSender};
use meridian_signaling::protocol::ServerMsg;

/// A `meridian serve` child process, killed on drop. If the test is
/// failing, the tail of the server's log is printed with it.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
}

fn log_path(port: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/server-{port}.log"))
}

impl Server {
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Starts the server and waits until `/healthz` answers.
    pub async fn start(envs: &[(&str, &str)]) -> Server {
        init_test_logging();
        let http = free_tcp();
        let udp = free_udp();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meridian"));
        cmd.args([
            "serve",
            "--http",
            &http.to_string(),
            "--udp",
            &udp.to_string(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MERIDIAN_API_SECRET")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log_file(http.port()));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the meridian binary starts");
        let server = Server { child, http, udp };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", server.base())).await {
                if r.status().is_success() {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's counters from `/metrics`.
    pub async fn metrics(&self) -> HashMap<String, u64> {
        let text = reqwest::get(format!("{}/metrics", self.base()))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(log_path(self.http.port())).unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(8000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "--- meridian serve log (http {}, udp {}) ---\n{tail}\n--- end ---",
                self.http, self.udp
            );
        }
    }
}

/// The server's log goes to target/test-logs/server-<http port>.log.
fn log_file(port: u16) -> Stdio {
    let path = log_path(port);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::File::create(path) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::inherit(),
    }
}

/// Client-side logs of the test process, filtered by `TEST_LOG` (off by default).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
}

pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// The VP8 + Opus sample made by scripts/make-sample.sh (ffmpeg, libvpx, libopus).
#[derive(Clone)]
pub struct Sample {
    pub video: CapturedStream,
    pub audio: CapturedStream,
}

pub fn sample() -> Sample {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample-vp8-opus.pcap");
    let cap = read_capture(&path, None).expect("the sample capture reads");
    let find = |k| {
        cap.streams
            .iter()
            .find(|s| s.kind == Some(k))
            .cloned()
            .expect("sample has the stream")
    };
    Sample {
        video: find(MediaKindGuess::Video),
        audio: find(MediaKindGuess::Audio),
    }
}

/// An impairment proxy in front of `server`'s UDP port, losing and delaying
/// as `up` (client → server) and `down` say (`meridian netsim` specs).
pub async fn impaired(
    server: &Server,
    up: &str,
    down: &str,
    seed: u64,
) -> meridian_netsim::ProxyHandle {
    meridian_netsim::Proxy::start(meridian_netsim::ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        upstream: server.udp,
        up: up.parse().expect("up spec"),
        down: down.parse().expect("down spec"),
        seed,
    })
    .await
    .expect("proxy starts")
}

/// How many of the `expected` payloads `got` holds, each counted at most as
/// often as it was sent.
pub fn matched(expected: &HashMap<Arc<[u8]>, usize>, got: &HashMap<Arc<[u8]>, usize>) -> usize {
    expected
        .iter()
        .map(|(p, n)| (*n).min(got.get(p).copied().unwrap_or(0)))
        .sum()
}

/// Every payload the publisher will send, with how often (payloads repeat
/// rarely, e.g. Opus silence), to check what subscribers got byte for byte.
pub fn payload_counts(streams: &[&CapturedStream]) -> HashMap<Arc<[u8]>, usize> {
    let mut m = HashMap::new();
    for s in streams {
        for p in &s.packets {
            *m.entry(Arc::from(p.payload())).or_insert(0) += 1;
        }
    }
    m
}

/// Sends the sample's audio and video with their original timing.
pub async fn publish_sample(sender: RtpSender, sample: &Sample) {
    let mut all: Vec<(
        Duration,
        MediaKind,
        &meridian_client::capture::CapturedPacket,
    )> = Vec::new();
    let t0 = sample.video.start.min(sample.audio.start);
    for (s, kind) in [
        (&sample.video, MediaKind::Video),
        (&sample.audio, MediaKind::Audio),
    ] {
        for p in &s.packets {
            all.push((s.start - t0 + p.offset, kind, p));
        }
    }
    all.sort_by_key(|(t, _, _)| *t);
    let start = tokio::time::Instant::now();
    for (at, kind, p) in all {
        tokio::time::sleep_until(start + at).await;
        sender
            .send(OutRtp {
                kind,
                timestamp: p.timestamp,
                marker: p.marker,
                payload: Arc::from(p.payload()),
            })
            .await
            .expect("publisher alive");
    }
}

/// A real WebRTC offer (str0m) with one send-only audio m-line, for WHIP
/// requests whose media never flows.
pub fn audio_offer() -> String {
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(
        str0m::media::MediaKind::Audio,
        str0m::media::Direction::SendOnly,
        None,
        None,
        None,
    );
    let (offer, _pending) = api.apply().expect("an offer with one m-line");
    offer.to_sdp_string()
}

/// Waits until the server's track map for `c` lists at least `n` tracks.
pub async fn wait_tracks(c: &mut Client, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(ClientEvent::Signal(ServerMsg::TrackMap { tracks }))) if tracks.len() >= n => {
                return
            }
            Ok(Some(ClientEvent::Closed(why))) => {
                panic!("subscriber closed: {why}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("subscriber stopped"),
            Err(_) => panic!("no track map with {n} tracks in time"),
        }
    }
}
