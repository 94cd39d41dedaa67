//! `meridian load`: replays the RTP streams of a pcap/pcapng capture into an
//! SFU through many publishers, receives through many subscribers in the same
//! process, and reports what arrived, how late, and what it cost.
//!
//! Send and receive happen in one process, so end-to-end latency is exact:
//! every sent payload's send time is recorded under a hash of its bytes, per
//! publisher, and a subscriber looks up the packet it receives (the SFU
//! rewrites sequence numbers and timestamps but never payloads).

mod report;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::capture::{read_capture, CaptureError, CapturedStream, MediaKindGuess};
use crate::{
    Client, ClientConfig, ClientError, ClientEvent, MediaKind, Mid, OutRtp, RtpSender, ServerMsg,
    VideoCodec,
};

pub use report::{write_html, Report};
use stats::{payload_key, ProcStat, SendLog, SubscriberStats, Timeline};

/// How many clients connect at once while the test ramps up.
const JOIN_CONCURRENCY: usize = 16;

/// How long to wait for each client's ICE/DTLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// After sending stops, time for packets in flight to arrive.
const DRAIN_TIME: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProtocol {
    /// WebSocket signaling for publishers and subscribers.
    Ws,
    /// WHIP publishers and WHEP subscribers (loads any WHIP/WHEP SFU).
    Whip,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub pcap: PathBuf,
    pub udp_port: Option<u16>,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub duration: Duration,
    pub speed: f64,
    /// The server's HTTP base, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub protocol: LoadProtocol,
    /// One token for every client; or `mint` makes one per client.
    pub token: Option<String>,
    pub mint: Option<TokenMinter>,
    pub room_prefix: String,
    pub server_pid: Option<u32>,
    pub progress: bool,
    /// The codec the capture's video is in (a pcap does not say).
    pub video_codec: VideoCodec,
    /// Publishers also subscribe to the others in their room (the meeting
    /// case) and are measured as subscribers too.
    pub publishers_subscribe: bool,
}

/// Makes a token for (room, identity).
pub type MintFn = dyn Fn(&str, &str) -> String + Send + Sync;

#[derive(Clone)]
pub struct TokenMinter(pub Arc<MintFn>);

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMinter")
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{0} (pass a pcap or pcapng file with --pcap)")]
    Capture(#[from] CaptureError),
    #[error("the capture has no audio or video RTP stream to publish (pass --udp-port to pick the right port)")]
    NothingToPublish,
    #[error(
        "cannot reach the server at {url}: {detail} (is it running? pass its address with --url)"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "the server refused the token: {0} (pass a valid --token, or --api-secret to mint tokens)"
    )]
    Refused(String),
    #[error("no client could connect: {0}")]
    NoClients(String),
    #[error("invalid options: {0}")]
    Options(String),
}

/// One packet to replay: its offset in the loop, kind, RTP timestamp,
/// marker, and the payload (shared by every publisher).
type Planned = (Duration, MediaKind, u32, bool, Arc<[u8]>);

/// The capture's audio and video merged into one replay plan.
struct Schedule {
    packets: Vec<Planned>,
    loop_len: Duration,
    audio: bool,
    video: Option<VideoCodec>,
}

fn schedule(streams: &[CapturedStream], video_codec: VideoCodec) -> Result<Schedule, LoadError> {
    let audio = streams
        .iter()
        .find(|s| s.kind == Some(MediaKindGuess::Audio));
    let video = streams
        .iter()
        .find(|s| s.kind == Some(MediaKindGuess::Video));
    if audio.is_none() && video.is_none() {
        return Err(LoadError::NothingToPublish);
    }
    let t0 = [audio, video]
        .iter()
        .flatten()
        .map(|s| s.start)
        .min()
        .unwrap_or_default();
    let mut packets = Vec::new();
    for (s, kind) in [(audio, MediaKind::Audio), (video, MediaKind::Video)] {
        let Some(s) = s else { continue };
        for p in &s.packets {
            packets.push((
                s.start.saturating_sub(t0) + p.offset,
                kind,
                p.timestamp,
                p.marker,
                Arc::from(p.payload()),
            ));
        }
    }
    packets.sort_by_key(|p| p.0);
    // One frame interval past the last packet, so loops do not overlap.
    let loop_len = packets.last().map(|p| p.0).unwrap_or_default() + Duration::from_millis(33);
    Ok(Schedule {
        packets,
        loop_len,
        audio: audio.is_some(),
        video: video.map(|_| video_codec),
    })
}

/// Everything one run shares between its tasks.
struct Shared {
    sends: SendLog,
    timeline: Timeline,
    /// Set once when the run ends; receivers also wait on it.
    stopped: tokio::sync::watch::Sender<bool>,
    start: Instant,
}

/// Runs the load test and returns its report.
pub async fn run(opts: LoadOptions) -> Result<Report, LoadError> {
    if opts.rooms == 0 || opts.publishers == 0 {
        return Err(LoadError::Options(
            "--rooms and --publishers must be at least 1".into(),
        ));
    }
    if opts.publishers_subscribe && opts.protocol == LoadProtocol::Whip {
        return Err(LoadError::Options(
            "WHIP publishers cannot subscribe; use --protocol ws for the meeting case".into(),
        ));
    }
    if opts.speed.is_nan() || opts.speed <= 0.0 {
        return Err(LoadError::Options("--speed must be above 0".into()));
    }
    let capture = read_capture(&opts.pcap, opts.udp_port)?;
    let sched = Arc::new(schedule(&capture.streams, opts.video_codec)?);
    preflight(&opts.url).await?;

    let server_before = ServerSample::take(&opts).await;
    let tester_cpu0 = ProcStat::read_self();
    let shared = Arc::new(Shared {
        sends: SendLog::default(),
        timeline: Timeline::default(),
        stopped: tokio::sync::watch::channel(false).0,
        start: Instant::now(),
    });

    // Publishers first; they start sending as soon as they connect, so
    // subscribers join into flowing media (join time = request to first packet).
    // They connect concurrently (bounded), then each starts its replay.
    let sem = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let mut connecting = Vec::new();
    for room in 0..opts.rooms {
        for p in 0..opts.publishers {
            let index = room * opts.publishers + p;
            let (opts, sched, sem) = (opts.clone(), sched.clone(), sem.clone());
            connecting.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let requested = Instant::now();
                let client = connect_publisher(&opts, &sched, room, index).await?;
                Ok::<_, LoadError>((client, requested, room, index))
            }));
        }
    }
    let mut publishers = Vec::new();
    let mut publisher_ids: HashMap<String, usize> = HashMap::new();
    let mut send_tasks = Vec::new();
    for c in connecting {
        let (client, requested, room, index) =
            c.await.map_err(|e| LoadError::NoClients(e.to_string()))??;
        if let Some(id) = &client.peer_id {
            publisher_ids.insert(id.clone(), index);
        }
        let sender = client.sender();
        let (sched, shared) = (sched.clone(), shared.clone());
        let speed = opts.speed;
        // Stagger publishers so rooms do not send keyframes in lockstep.
        let stagger = Duration::from_millis((index as u64 * 137) % 1000);
        send_tasks.push(tokio::spawn(async move {
            tokio::time::sleep(stagger).await;
            replay(sender, &sched, speed, index, &shared).await
        }));
        publishers.push((client, requested, room));
    }
    let publisher_ids = Arc::new(publisher_ids);
    let after_publishers = ServerSample::take(&opts).await;

    let progress = opts.progress.then(|| report::progress_bar(opts.duration));
    let mut receivers = Vec::new();
    let mut idle_publishers = Vec::new();
    for (client, requested, room) in publishers {
        if opts.publishers_subscribe {
            let (shared, ids) = (shared.clone(), publisher_ids.clone());
            let first = room * opts.publishers;
            receivers.push(tokio::spawn(async move {
                Ok(receive(client, requested, first, &ids, &shared).await)
            }));
        } else {
            idle_publishers.push(client);
        }
    }
    let sem = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    for room in 0..opts.rooms {
        for s in 0..opts.subscribers {
            let (opts, shared, ids, sem) = (
                opts.clone(),
                shared.clone(),
                publisher_ids.clone(),
                sem.clone(),
            );
            receivers.push(tokio::spawn(async move {
                let permit = sem.acquire_owned().await.ok();
                let name = format!("sub-{room}-{s}");
                let requested = Instant::now();
                let client = connect_subscriber(&opts, room, &name).await;
                drop(permit);
                match client {
                    Ok(c) => {
                        let signaled = requested.elapsed();
                        let (mut stats, c) =
                            receive(c, requested, room * opts.publishers, &ids, &shared).await;
                        stats.signaled = Some(signaled);
                        Ok((stats, c))
                    }
                    Err(e) => Err(e),
                }
            }));
        }
    }

    // Run for the duration, updating the progress bar.
    let deadline = shared.start + opts.duration;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(bar) = &progress {
            report::update_progress(bar, &shared.timeline, shared.start.elapsed());
        }
    }
    let server_loaded = ServerSample::take(&opts).await;
    shared.stopped.send_replace(true);
    for t in send_tasks {
        let _ = t.await;
    }
    tokio::time::sleep(DRAIN_TIME).await;
    let server_after = ServerSample::take(&opts).await;
    let tester_cpu = ProcStat::read_self().cpu_seconds() - tester_cpu0.cpu_seconds();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let mut subs = Vec::new();
    let mut failures = Vec::new();
    let mut done = idle_publishers;
    for t in receivers {
        match t.await {
            Ok(Ok((stats, client))) => {
                subs.push(stats);
                done.push(client);
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    for c in done {
        let _ = c.close(&opts.url).await;
    }
    if subs.is_empty() && opts.subscribers > 0 {
        let first = failures.first().cloned().unwrap_or_default();
        return Err(refused_or(first));
    }
    Ok(Report::build(
        &opts,
        &shared.timeline,
        subs,
        failures,
        report::ServerCost::from_samples(
            &server_before,
            &after_publishers,
            &server_loaded,
            &server_after,
            opts.subscribers * opts.rooms,
            (opts.subscribers + opts.publishers) * opts.rooms,
        ),
        tester_cpu,
        shared.start.elapsed(),
    ))
}

fn refused_or(e: String) -> LoadError {
    if e.contains("nauthorized") || e.contains("token") || e.contains("401") || e.contains("403") {
        LoadError::Refused(e)
    } else {
        LoadError::NoClients(e)
    }
}

async fn preflight(url: &str) -> Result<(), LoadError> {
    let health = format!("{url}/healthz");
    let r = tokio::time::timeout(Duration::from_secs(5), reqwest::get(&health))
        .await
        .map_err(|_| LoadError::Unreachable {
            url: url.into(),
            detail: "no answer within 5 s".into(),
        })?;
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(LoadError::Unreachable {
            url: url.into(),
            detail: e.without_url().to_string(),
        }),
    }
}

fn client_config(opts: &LoadOptions, room: usize, identity: &str) -> ClientConfig {
    let room_name = format!("{}{room}", opts.room_prefix);
    let token = match &opts.mint {
        Some(mint) => Some((mint.0)(&room_name, identity)),
        None => opts.token.clone(),
    };
    ClientConfig::new(&opts.url, room_name, identity).token(token)
}

async fn connect_publisher(
    opts: &LoadOptions,
    sched: &Schedule,
    room: usize,
    index: usize,
) -> Result<Client, LoadError> {
    let mut cfg = client_config(opts, room, &format!("pub-{index}"))
        .publish(sched.audio, sched.video.is_some());
    if let Some(v) = sched.video {
        cfg = cfg.video_codec(v);
    }
    cfg.auto_subscribe = opts.publishers_subscribe;
    let result = match opts.protocol {
        LoadProtocol::Ws => Client::connect(cfg).await,
        LoadProtocol::Whip => Client::whip(cfg).await,
    };
    let mut client = result.map_err(|e| client_error(opts, e))?;
    client
        .wait_connected(CONNECT_TIMEOUT)
        .await
        .map_err(|e| LoadError::NoClients(format!("publisher {index}: {e}")))?;
    Ok(client)
}

async fn connect_subscriber(
    opts: &LoadOptions,
    room: usize,
    name: &str,
) -> Result<Client, LoadError> {
    let cfg = client_config(opts, room, name);
    let result = match opts.protocol {
        LoadProtocol::Ws => Client::connect(cfg).await,
        LoadProtocol::Whip => Client::whep(cfg, None).await,
    };
    result.map_err(|e| client_error(opts, e))
}

fn client_error(opts: &LoadOptions, e: ClientError) -> LoadError {
    match e {
        ClientError::Unreachable { detail, .. } => LoadError::Unreachable {
            url: opts.url.clone(),
            detail,
        },
        ClientError::Refused { code, message }
            if code.contains("nauthorized") || code.contains("orbidden") =>
        {
            LoadError::Refused(message)
        }
        ClientError::Http {
            status: 401 | 403,
            body,
        } => LoadError::Refused(body),
        other => LoadError::NoClients(other.to_string()),
    }
}

/// Replays the schedule in a loop until `stop`, recording each send.
async fn replay(
    sender: RtpSender,
    sched: &Schedule,
    speed: f64,
    publisher: usize,
    shared: &Shared,
) {
    let mut loop_start = tokio::time::Instant::now();
    // Later loops continue the RTP timestamps instead of jumping back.
    let (mut audio_offset, mut video_offset) = (0u32, 0u32);
    let loop_secs = sched.loop_len.as_secs_f64();
    shared.sends.started(publisher, Instant::now());
    loop {
        for (at, kind, ts, marker, payload) in &sched.packets {
            if *shared.stopped.borrow() {
                return;
            }
            tokio::time::sleep_until(loop_start + at.div_f64(speed)).await;
            let ticks = if *kind == MediaKind::Audio {
                audio_offset
            } else {
                video_offset
            };
            shared
                .sends
                .record(publisher, payload_key(payload), Instant::now());
            let second = shared.start.elapsed().as_secs() as usize;
            shared.timeline.sent(payload.len(), second);
            let pkt = OutRtp {
                kind: *kind,
                timestamp: ts.wrapping_add(ticks),
                marker: *marker,
                payload: payload.clone(),
            };
            if sender.send(pkt).await.is_err() {
                return;
            }
        }
        loop_start += sched.loop_len.div_f64(speed);
        audio_offset = audio_offset.wrapping_add((loop_secs * 48_000.0) as u32);
        video_offset = video_offset.wrapping_add((loop_secs * 90_000.0) as u32);
    }
}

/// Receives until the run stops; returns this subscriber's statistics and
/// the client, to be closed once every task has finished.
async fn receive(
    mut client: Client,
    requested: Instant,
    first_publisher: usize,
    publisher_ids: &HashMap<String, usize>,
    shared: &Shared,
) -> (SubscriberStats, Client) {
    let mut st = SubscriberStats::new(requested, shared.start);
    // m-line → publisher index, from the server's track maps.
    let mut mid_publisher: HashMap<Mid, usize> = HashMap::new();
    let mut stop = shared.stopped.subscribe();
    while !*stop.borrow() {
        let ev = tokio::select! {
            ev = client.next_event() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = stop.changed() => break,
        };
        match ev {
            ClientEvent::Rtp(p) => {
                let publisher = p
                    .mid
                    .and_then(|m| mid_publisher.get(&m))
                    .copied()
                    .unwrap_or(first_publisher);
                let sent = shared.sends.lookup(publisher, payload_key(&p.payload));
                let latency = sent.map(|t| p.received_at.saturating_duration_since(t));
                let second = p
                    .received_at
                    .saturating_duration_since(shared.start)
                    .as_secs() as usize;
                shared.timeline.received(p.payload.len(), latency, second);
                // The publisher's start matters only for the join times
                // (a lock on a map shared by every client: not per packet).
                let started = st
                    .joining(p.kind)
                    .then(|| shared.sends.started_at(publisher))
                    .flatten();
                st.on_packet(&p, started);
            }
            ClientEvent::Signal(ServerMsg::TrackMap { tracks }) => {
                for t in tracks {
                    if let Some(i) = t.peer_id.as_ref().and_then(|id| publisher_ids.get(id)) {
                        mid_publisher.insert(Mid::from(t.mid.as_str()), *i);
                    }
                }
            }
            ClientEvent::Connected => {
                st.connected.get_or_insert(requested.elapsed());
            }
            ClientEvent::Closed(why) => {
                st.closed = Some(why);
                break;
            }
            _ => {}
        }
    }
    // Count what is still in flight.
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME;
    while let Ok(Some(ev)) = tokio::time::timeout_at(drain_until, client.next_event()).await {
        if let ClientEvent::Rtp(p) = ev {
            st.on_packet(&p, None);
        }
    }
    (st, client)
}

/// The server's counters at one moment: from /metrics, and from /proc when
/// `--server-pid` is given.
#[derive(Debug, Clone, Default)]
pub struct ServerSample {
    pub at: Option<Instant>,
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub forwarded: Option<u64>,
    /// Meridian's UDP counters (other SFUs do not have them).
    pub udp_datagrams_sent: Option<u64>,
    pub udp_send_calls: Option<u64>,
}

impl ServerSample {
    async fn take(opts: &LoadOptions) -> ServerSample {
        let mut s = ServerSample {
            at: Some(Instant::now()),
            ..Default::default()
        };
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            reqwest::get(format!("{}/metrics", opts.url)),
        )
        .await
        {
            if let Ok(text) = r.text().await {
                for line in text.lines().filter(|l| !l.starts_with('#')) {
                    let Some((k, v)) = line.rsplit_once(' ') else {
                        continue;
                    };
                    match k {
                        "process_cpu_seconds_total" => s.cpu_seconds = v.parse().ok(),
                        "process_resident_memory_bytes" => s.rss_bytes = v.parse().ok(),
                        "meridian_rtp_forwarded_total" => s.forwarded = v.parse().ok(),
                        "meridian_udp_datagrams_sent_total" => {
                            s.udp_datagrams_sent = v.parse().ok()
                        }
                        "meridian_udp_send_calls_total" => s.udp_send_calls = v.parse().ok(),
                        _ => {}
                    }
                }
            }
        }
        if let Some(pid) = opts.server_pid {
            if let Some(p) = ProcStat::read(pid) {
                s.cpu_seconds = Some(p.cpu_seconds());
                s.rss_bytes = Some(p.rss_bytes);
            }
        }
        s
    }
}
