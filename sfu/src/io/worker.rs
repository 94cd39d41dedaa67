//! The media worker: a dedicated thread running a current-thread tokio
//! runtime that owns the `Node` and the UDP socket. Nothing else touches the
//! node; signaling talks to it through `NodeHandle` (a bounded channel).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::udp::{self, GsoBatch, MediaSocket, RECV_BATCH};
use crate::core::{
    CommandError, IoStats, JoinRequest, MuteTarget, Node, NodeConfig, NodeEvent, NodeStats, Output,
    ParticipantInfo, PeerId, PeerSignal, TrackId, TrackPrefs,
};
use str0m::media::Mid;

/// Commands queued towards the worker. Bounded: signaling waits (and so
/// applies back-pressure to clients) when the media thread is busy.
const COMMAND_QUEUE: usize = 1024;

/// Events queued towards one peer's signaling session. A session that falls
/// this far behind is disconnected rather than allowed to grow memory.
pub const PEER_EVENT_QUEUE: usize = 256;

/// Datagrams read per loop pass before output is drained, so packets that
/// arrive together are forwarded in one pass (one str0m tick per subscriber,
/// and one GSO send per subscriber for a frame's packets).
const RECV_PER_PASS: usize = 64;

/// How often stats are published and drop summaries logged.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// What a peer's signaling session receives from the media plane.
#[derive(Debug)]
pub enum PeerEvent {
    Signal(PeerSignal),
    Gone { reason: &'static str },
}

#[derive(Debug)]
pub enum Command {
    Join {
        req: JoinRequest,
        events: mpsc::Sender<PeerEvent>,
        reply: Reply<(PeerId, Vec<ParticipantInfo>)>,
    },
    /// WHIP/WHEP sessions get `PeerEvent::Gone` on `events` when they end,
    /// so signaling can forget their resource.
    Whip {
        req: JoinRequest,
        offer: String,
        events: mpsc::Sender<PeerEvent>,
        reply: Reply<(PeerId, String)>,
    },
    Whep {
        req: JoinRequest,
        offer: String,
        events: mpsc::Sender<PeerEvent>,
        reply: Reply<(PeerId, String)>,
    },
    Offer {
        peer: PeerId,
        sdp: String,
        reply: Reply<String>,
    },
    Answer {
        peer: PeerId,
        sdp: String,
        seq: u64,
        reply: Reply<()>,
    },
    Label {
        peer: PeerId,
        mid: String,
        label: String,
        reply: Reply<()>,
    },
    Mute {
        peer: PeerId,
        target: MuteTarget,
        muted: bool,
        reply: Reply<()>,
    },
    Subscribe {
        peer: PeerId,
        tracks: Vec<TrackId>,
        on: bool,
        reply: Reply<()>,
    },
    TrackPrefs {
        peer: PeerId,
        track: TrackId,
        prefs: TrackPrefs,
        reply: Reply<()>,
    },
    Leave {
        peer: PeerId,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The signaling side's handle on the media worker.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    stats: watch::Receiver<Arc<NodeStats>>,
    pub udp_addr: SocketAddr,
    pub candidate_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("cannot bind UDP {addr}: {source} (is another process using the port? pick another with --udp)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up UDP {addr} for batched I/O (GSO/GRO socket options): {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the media thread: {0}")]
    Thread(std::io::Error),
}

impl NodeHandle {
    /// Sends a command; fails only if the worker has stopped.
    pub async fn send(&self, cmd: Command) -> Result<(), CommandError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| CommandError::Rtc("the media worker has stopped".into()))
    }

    /// Sends a command and waits for its reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| CommandError::Rtc("the media worker has stopped".into()))?
    }

    pub fn stats(&self) -> Arc<NodeStats> {
        self.stats.borrow().clone()
    }
}

/// Which loss recovery the node does (all on by default).
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Answer subscribers' NACKs.
    pub nack: bool,
    pub audio_red: bool,
    pub video_fec: bool,
    /// Estimate subscribers' downlinks with TWCC (str0m's BWE) and allocate
    /// simulcast layers on it.
    pub bwe: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            nack: true,
            audio_red: true,
            video_fec: true,
            bwe: true,
        }
    }
}

/// Binds the UDP socket and starts the media worker thread.
pub fn spawn_node(
    udp: SocketAddr,
    public_ip: Option<std::net::IpAddr>,
    max_peers_per_room: usize,
    recovery: Recovery,
) -> Result<NodeHandle, SpawnError> {
    let std_sock =
        std::net::UdpSocket::bind(udp).map_err(|source| SpawnError::Bind { addr: udp, source })?;
    std_sock
        .set_nonblocking(true)
        .map_err(|source| SpawnError::Bind { addr: udp, source })?;
    let local = std_sock
        .local_addr()
        .map_err(|source| SpawnError::Bind { addr: udp, source })?;
    let udp_state =
        udp::prepare(&std_sock).map_err(|source| SpawnError::Socket { addr: udp, source })?;
    let candidate_addr = SocketAddr::new(public_ip.unwrap_or(local.ip()), local.port());
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (stats_tx, stats_rx) = watch::channel(Arc::new(NodeStats::default()));
    std::thread::Builder::new()
        .name("meridian-media".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(async move {
                let socket = MediaSocket::from_parts(std_sock, udp_state, RECV_BATCH)
                    .expect("a prepared socket registers with the runtime");
                let batch = GsoBatch::new(socket.max_segments());
                info!(gso_segments = socket.max_segments(), "media socket ready");
                let mut config = NodeConfig::new(candidate_addr);
                config.max_peers_per_room = max_peers_per_room;
                if !recovery.nack {
                    config.resend = None;
                }
                config.audio_red = recovery.audio_red;
                config.video_fec = recovery.video_fec;
                config.bwe = recovery.bwe;
                let node = Node::new(config, Instant::now());
                Worker {
                    node,
                    socket,
                    batch,
                    io: IoStats::default(),
                    candidate_addr,
                    sessions: HashMap::new(),
                    stats: stats_tx,
                    shutdown_done: None,
                }
                .run(rx)
                .await;
            });
        })
        .map_err(SpawnError::Thread)?;
    info!(%local, %candidate_addr, "media UDP socket bound");
    Ok(NodeHandle {
        tx,
        stats: stats_rx,
        udp_addr: local,
        candidate_addr,
    })
}

struct Worker {
    node: Node,
    socket: MediaSocket,
    /// Datagrams to one destination waiting to leave in one GSO send.
    batch: GsoBatch,
    io: IoStats,
    candidate_addr: SocketAddr,
    sessions: HashMap<PeerId, mpsc::Sender<PeerEvent>>,
    stats: watch::Sender<Arc<NodeStats>>,
    shutdown_done: Option<oneshot::Sender<()>>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next_stats = Instant::now();
        let mut next_drop_log = Instant::now() + DROP_LOG_INTERVAL;
        let mut logged_drops = 0u64;
        loop {
            let timeout = self.drain().await;
            let now = Instant::now();
            if now >= next_stats {
                let mut stats = self.node.stats();
                stats.io = self.io.clone();
                if now >= next_drop_log {
                    let total = stats.drops.total();
                    if total > logged_drops {
                        let summary: Vec<String> = stats
                            .drops
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(r, n)| format!("{}={n}", r.as_str()))
                            .collect();
                        warn!(new = total - logged_drops, totals = %summary.join(" "), "packets dropped");
                        logged_drops = total;
                    }
                    next_drop_log = now + DROP_LOG_INTERVAL;
                }
                let _ = self.stats.send(Arc::new(stats));
                next_stats = now + STATS_INTERVAL;
            }
            let sleep = tokio::time::sleep_until(timeout.min(next_stats).into());
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.command(cmd) {
                        self.drain().await;
                        if let Some(done) = self.shutdown_done.take() {
                            let _ = done.send(());
                        }
                        break;
                    }
                }
                r = self.socket.readable() => {
                    match r {
                        Ok(()) => self.receive(),
                        Err(e) => debug!(error = %e, "UDP receive failed"),
                    }
                }
                _ = sleep => {}
            }
            self.node.handle_timeout(Instant::now());
        }
        debug!("media worker stopped");
    }

    /// Reads what is queued (up to `RECV_PER_PASS` datagrams) into the node.
    fn receive(&mut self) {
        let now = Instant::now();
        let local = self.candidate_addr;
        let node = &mut self.node;
        let mut taken = 0;
        while taken < RECV_PER_PASS {
            match self
                .socket
                .try_recv(|src, d| node.handle_receive(now, src, local, d))
            {
                Ok(n) => {
                    taken += n;
                    self.io.datagrams_in += n as u64;
                    self.io.recv_calls += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "UDP receive failed");
                    break;
                }
            }
        }
    }

    /// Returns true when the worker should stop.
    fn command(&mut self, cmd: Command) -> bool {
        let now = Instant::now();
        match cmd {
            Command::Join { req, events, reply } => {
                let r = self.node.join(now, req);
                if let Ok((id, _)) = &r {
                    self.sessions.insert(*id, events);
                }
                let _ = reply.send(r);
            }
            Command::Whip {
                req,
                offer,
                events,
                reply,
            } => {
                let r = self.node.whip(now, req, &offer);
                if let Ok((id, _)) = &r {
                    self.sessions.insert(*id, events);
                }
                let _ = reply.send(r);
            }
            Command::Whep {
                req,
                offer,
                events,
                reply,
            } => {
                let r = self.node.whep(now, req, &offer);
                if let Ok((id, _)) = &r {
                    self.sessions.insert(*id, events);
                }
                let _ = reply.send(r);
            }
            Command::Offer { peer, sdp, reply } => {
                let _ = reply.send(self.node.handle_offer(now, peer, &sdp));
            }
            Command::Answer {
                peer,
                sdp,
                seq,
                reply,
            } => {
                let _ = reply.send(self.node.handle_answer(now, peer, &sdp, seq));
            }
            Command::Label {
                peer,
                mid,
                label,
                reply,
            } => {
                let _ = reply.send(
                    self.node
                        .set_track_label(peer, Mid::from(mid.as_str()), label),
                );
            }
            Command::Mute {
                peer,
                target,
                muted,
                reply,
            } => {
                let _ = reply.send(self.node.set_muted(now, peer, target, muted));
            }
            Command::Subscribe {
                peer,
                tracks,
                on,
                reply,
            } => {
                let _ = reply.send(self.node.subscribe(peer, &tracks, on));
            }
            Command::TrackPrefs {
                peer,
                track,
                prefs,
                reply,
            } => {
                let _ = reply.send(self.node.set_track_prefs(peer, track, prefs));
            }
            Command::Leave { peer } => {
                self.sessions.remove(&peer);
                self.node.leave(now, peer);
            }
            Command::Shutdown { done } => {
                self.node.shutdown(now);
                // `run` flushes what the shutdown produced (DTLS close,
                // RTCP BYE) and then tells the caller.
                self.shutdown_done = Some(done);
                return true;
            }
        }
        false
    }

    /// Drains the node's output; returns when it next wants to be woken.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.node.poll_output() {
                Output::Transmit(t) => {
                    if !self.batch.push(t.destination, &t.contents) {
                        self.flush().await;
                        let fits = self.batch.push(t.destination, &t.contents);
                        debug_assert!(fits, "a datagram always fits an empty batch");
                    }
                }
                Output::Event(NodeEvent::Signal(peer, s)) => {
                    self.deliver(peer, PeerEvent::Signal(s))
                }
                Output::Event(NodeEvent::PeerGone { peer, reason }) => {
                    if let Some(tx) = self.sessions.remove(&peer) {
                        let _ = tx.try_send(PeerEvent::Gone { reason });
                    }
                }
                Output::Timeout(t) => {
                    self.flush().await;
                    return t;
                }
            }
        }
    }

    /// Sends the batched datagrams (one GSO send when there are several).
    async fn flush(&mut self) {
        if let Some(t) = self.batch.transmit() {
            self.socket.send(&t).await;
            self.io.send_calls += 1;
            self.io.datagrams_out += self.batch.len() as u64;
        }
        self.batch.clear();
    }

    fn deliver(&mut self, peer: PeerId, ev: PeerEvent) {
        let Some(tx) = self.sessions.get(&peer) else {
            return;
        };
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(%peer, "signaling session too slow; removing peer");
                self.sessions.remove(&peer);
                self.node.leave(Instant::now(), peer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(%peer, "signaling session gone; removing peer");
                self.sessions.remove(&peer);
                self.node.leave(Instant::now(), peer);
            }
        }
    }
}
