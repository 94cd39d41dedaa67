//! A UDP proxy that puts a seeded [`Link`] in each direction of every client
//! flow: the I/O shell around the sans-IO model, and the stand-in for netem
//! on kernels without it.
//!
//! One listener task owns the client-facing socket and a map from client
//! address to flow. Each flow is a task that owns its own upstream socket
//! (so the server sees one address per client), its `up` and `down` links
//! and one timer; it reads the clock, pushes what arrives, and sends what
//! its links release. Datagram buffers are recycled between the listener
//! and the flows, so a flow in steady state allocates nothing per packet.

mod cli;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{self, JoinError, JoinHandle, JoinSet};
use tracing::{debug, debug_span, info_span, trace, warn, Instrument};

use crate::model::{Link, LinkConfig, LinkStats};

pub use cli::{run, NetsimArgs, NetsimError, STATS_INTERVAL};

/// Flows alive at once. A client address beyond it gets its datagrams
/// dropped (`dropped_flow_limit`) until a flow goes idle; each flow costs a
/// socket, a task and its queues, and a test rig needs far fewer.
pub const MAX_FLOWS: usize = 1024;

/// A flow with no datagram either way for this long is closed (once its
/// links are empty); a later datagram from the client opens a new one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Client datagrams waiting for their flow task. 1,024 is 200 ms at
/// 5,000 packets/s: a flow task that far behind is overloaded, and more
/// waiting would only add delay nobody configured (`dropped_overload`).
const FLOW_QUEUE: usize = 1024;

/// Largest UDP payload; the receive scratch buffers are this size.
const MAX_DATAGRAM: usize = 65_535;

/// Initial capacity of a new packet buffer: an Ethernet MTU. Larger
/// datagrams grow it once and keep the capacity when recycled.
const BUF_CAPACITY: usize = 1500;

/// Spare buffers a flow keeps for the downstream direction; beyond it they
/// go back to the listener.
const FLOW_POOL: usize = 256;

/// Spare buffers waiting to go back to the listener; beyond it they are
/// freed. Together with `FLOW_POOL` this bounds idle buffer memory.
const RECYCLE_QUEUE: usize = 1024;

/// Datagrams one flow sends per direction per loop pass, so a burst of due
/// packets cannot starve the flow's own receive side.
const MAX_SENDS_PER_PASS: usize = 64;

/// Least time between two warnings of the same kind.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Where the proxy listens, where it forwards, and what each direction does.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Client-facing address (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The server behind the proxy.
    pub upstream: SocketAddr,
    /// Impairment of client→server datagrams.
    pub up: LinkConfig,
    /// Impairment of server→client datagrams.
    pub down: LinkConfig,
    /// Seed of every flow's links; see [`flow_seed`].
    pub seed: u64,
}

/// Direction of a flow's link, for [`flow_seed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

/// The seed of a flow's link: flows are numbered from 0 in the order their
/// first datagram arrived, so a test can rebuild the same [`Link`].
pub fn flow_seed(seed: u64, flow_index: u64, direction: Direction) -> u64 {
    let lane = flow_index
        .wrapping_mul(2)
        .wrapping_add(u64::from(direction == Direction::Down));
    splitmix64(seed ^ splitmix64(lane))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Totals over every flow the proxy has had, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client→server links, summed.
    pub up: LinkStats,
    /// Server→client links, summed.
    pub down: LinkStats,
    /// Flows open now.
    pub flows_active: usize,
    /// Flows opened so far.
    pub flows_created: u64,
    /// Client datagrams dropped because [`MAX_FLOWS`] flows were open.
    pub dropped_flow_limit: u64,
    /// Client datagrams dropped because their flow task was behind.
    pub dropped_overload: u64,
}

/// Entry point of the proxy; see [`Proxy::start`].
#[derive(Debug)]
pub struct Proxy {
    _private: (),
}

impl Proxy {
    /// Binds `config.listen` and starts forwarding in the background of the
    /// current tokio runtime. Fails if the address cannot be bound or
    /// `upstream` is not an address a datagram can be sent to.
    pub async fn start(config: ProxyConfig) -> io::Result<ProxyHandle> {
        Self::start_with(config, Limits::DEFAULT).await
    }

    pub(crate) async fn start_with(config: ProxyConfig, limits: Limits) -> io::Result<ProxyHandle> {
        let upstream = config.upstream;
        if upstream.ip().is_unspecified() || upstream.port() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("upstream {upstream} is not an address a datagram can be sent to"),
            ));
        }
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", config.listen)))?;
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (recycle_tx, recycle_rx) = mpsc::channel(RECYCLE_QUEUE);
        let listener = Listener {
            socket: Arc::new(socket),
            config,
            limits,
            shared: Arc::clone(&shared),
            flows: HashMap::new(),
            by_task: HashMap::new(),
            tasks: JoinSet::new(),
            next_index: 0,
            recycle_tx,
            recycle_rx,
            limit_warning: Warning::default(),
        };
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let span = info_span!("netsim", listen = %local_addr, %upstream);
        let task = tokio::spawn(listener.run(shutdown_rx).instrument(span));
        Ok(ProxyHandle {
            local_addr,
            shared,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }
}

/// Bounds of a proxy; constants in production, small in tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_flows: usize,
    pub(crate) idle_timeout: Duration,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        max_flows: MAX_FLOWS,
        idle_timeout: IDLE_TIMEOUT,
    };
}

/// A running proxy. Dropping it stops the proxy (its tasks are aborted and
/// its sockets closed); [`shutdown`](Self::shutdown) also waits for that.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The client-facing address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Totals so far. Each flow publishes its counters after every loop
    /// pass, so this lags at most one datagram per flow.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            up: s.up.load(),
            down: s.down.load(),
            flows_active: s.flows_active.load(Ordering::Relaxed),
            flows_created: s.flows_created.load(Ordering::Relaxed),
            dropped_flow_limit: s.dropped_flow_limit.load(Ordering::Relaxed),
            dropped_overload: s.dropped_overload.load(Ordering::Relaxed),
        }
    }

    /// Stops the proxy and waits until every socket is closed. Datagrams
    /// still in a link are dropped, as on a cut cable.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            // Err: the listener is already gone, which is what we want.
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "netsim listener task failed");
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Counters shared between the flows (writers) and the handle (reader).
#[derive(Debug, Default)]
struct Shared {
    up: AtomicLinkStats,
    down: AtomicLinkStats,
    flows_active: AtomicUsize,
    flows_created: AtomicU64,
    dropped_flow_limit: AtomicU64,
    dropped_overload: AtomicU64,
}

#[derive(Debug, Default)]
struct AtomicLinkStats([AtomicU64; 7]);

impl AtomicLinkStats {
    fn add(&self, delta: &LinkStats) {
        for (slot, value) in self.0.iter().zip(fields(delta)) {
            if value != 0 {
                slot.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> LinkStats {
        let [offered, delivered, lost_random, lost_burst, dropped_queue, duplicated, reordered] =
            self.0.each_ref().map(|a| a.load(Ordering::Relaxed));
        LinkStats {
            offered,
            delivered,
            lost_random,
            lost_burst,
            dropped_queue,
            duplicated,
            reordered,
        }
    }
}

fn fields(s: &LinkStats) -> [u64; 7] {
    [
        s.offered,
        s.delivered,
        s.lost_random,
        s.lost_burst,
        s.dropped_queue,
        s.duplicated,
        s.reordered,
    ]
}

/// A warning that is logged at most once per [`WARN_INTERVAL`], with the
/// number of occurrences it stood for.
#[derive(Debug, Default)]
struct Warning {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warning {
    /// `Some(occurrences since the last log)` when this one should be logged.
    fn due(&mut self, now: Instant) -> Option<u64> {
        self.suppressed += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct FlowEntry {
    task: task::Id,
    tx: mpsc::Sender<Vec<u8>>,
}

/// The client-facing half: receives from clients and routes to flows.
struct Listener {
    socket: Arc<UdpSocket>,
    config: ProxyConfig,
    limits: Limits,
    shared: Arc<Shared>,
    /// Client addresses are chosen by remote peers: std's SipHash with a
    /// random key keeps this map safe from crafted collisions.
    flows: HashMap<SocketAddr, FlowEntry>,
    by_task: HashMap<task::Id, SocketAddr>,
    tasks: JoinSet<()>,
    next_index: u64,
    recycle_tx: mpsc::Sender<Vec<u8>>,
    recycle_rx: mpsc::Receiver<Vec<u8>>,
    limit_warning: Warning,
}

impl Listener {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        debug!("netsim proxy started");
        let mut scratch = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.flow_ended(done);
                }
                received = self.socket.recv_from(&mut scratch) => match received {
                    Ok((len, client)) => self.on_datagram(client, &scratch[..len]),
                    // Nothing a client sends can break the socket; log and go on.
                    Err(e) => debug!(error = %e, "receive on the listen socket failed"),
                },
            }
        }
        self.tasks.shutdown().await;
        self.shared.flows_active.store(0, Ordering::Relaxed);
        debug!("netsim proxy stopped");
    }

    fn on_datagram(&mut self, client: SocketAddr, data: &[u8]) {
        let mut buf = self
            .recycle_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF_CAPACITY));
        buf.clear();
        buf.extend_from_slice(data);
        if let Some(flow) = self.flows.get(&client) {
            match flow.tx.try_send(buf) {
                Ok(()) => return,
                Err(TrySendError::Full(buf)) => {
                    self.shared.dropped_overload.fetch_add(1, Ordering::Relaxed);
                    trace!(%client, "flow behind; datagram dropped");
                    let _ = self.recycle_tx.try_send(buf);
                    return;
                }
                Err(TrySendError::Closed(returned)) => {
                    // The flow went idle just now; open a fresh one.
                    buf = returned;
                    self.flows.remove(&client);
                }
            }
        }
        if self.flows.len() >= self.limits.max_flows {
            self.shared
                .dropped_flow_limit
                .fetch_add(1, Ordering::Relaxed);
            if let Some(count) = self.limit_warning.due(Instant::now()) {
                warn!(
                    %client,
                    max_flows = self.limits.max_flows,
                    dropped = count,
                    "flow limit reached; datagrams from new clients dropped"
                );
            }
            let _ = self.recycle_tx.try_send(buf);
            return;
        }
        let tx = self.open_flow(client);
        // A new channel has room for one datagram.
        let _ = tx.try_send(buf);
    }

    fn open_flow(&mut self, client: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let index = self.next_index;
        self.next_index += 1;
        let cfg = &self.config;
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let flow = Flow {
            client,
            upstream: cfg.upstream,
            listen: Arc::clone(&self.socket),
            up: Link::new(cfg.up.clone(), flow_seed(cfg.seed, index, Direction::Up)),
            down: Link::new(
                cfg.down.clone(),
                flow_seed(cfg.seed, index, Direction::Down),
            ),
            rx,
            pool: Vec::new(),
            recycle: self.recycle_tx.clone(),
            shared: Arc::clone(&self.shared),
            idle_timeout: self.limits.idle_timeout,
            published_up: LinkStats::default(),
            published_down: LinkStats::default(),
        };
        let span = debug_span!("flow", index, %client);
        let task = self.tasks.spawn(flow.run().instrument(span)).id();
        self.by_task.insert(task, client);
        self.flows.insert(
            client,
            FlowEntry {
                task,
                tx: tx.clone(),
            },
        );
        self.shared
            .flows_active
            .store(self.flows.len(), Ordering::Relaxed);
        self.shared.flows_created.fetch_add(1, Ordering::Relaxed);
        debug!(index, %client, "flow opened");
        tx
    }

    fn flow_ended(&mut self, done: Result<(task::Id, ()), JoinError>) {
        let task = match done {
            Ok((task, ())) => task,
            Err(e) => {
                if e.is_panic() {
                    warn!(error = %e, "netsim flow task panicked");
                }
                e.id()
            }
        };
        let Some(client) = self.by_task.remove(&task) else {
            return;
        };
        // The entry may already belong to a newer flow of the same client.
        if self.flows.get(&client).is_some_and(|f| f.task == task) {
            self.flows.remove(&client);
        }
        self.shared
            .flows_active
            .store(self.flows.len(), Ordering::Relaxed);
    }
}

/// One client's flow: its upstream socket and a link each way.
struct Flow {
    client: SocketAddr,
    upstream: SocketAddr,
    listen: Arc<UdpSocket>,
    up: Link<Vec<u8>>,
    down: Link<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    recycle: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    published_up: LinkStats,
    published_down: LinkStats,
}

impl Flow {
    async fn run(mut self) {
        let socket = match connect_upstream(self.upstream).await {
            Ok(socket) => socket,
            Err(e) => {
                warn!(error = %e, upstream = %self.upstream, "cannot open the upstream socket; flow dropped");
                return;
            }
        };
        debug!(local = ?socket.local_addr().ok(), "flow connected upstream");
        let mut scratch = vec![0u8; MAX_DATAGRAM];
        let mut last_activity = Instant::now();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let idle_at = last_activity + self.idle_timeout;
            // With packets in a link, wake for them (idleness is checked
            // after); otherwise wake to close the flow when it goes idle.
            let wake = match (self.up.poll_timeout(), self.down.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => idle_at,
            };
            sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
            tokio::select! {
                from_client = self.rx.recv() => {
                    // None: the listener is gone, so the proxy is stopping.
                    let Some(buf) = from_client else { break };
                    let now = Instant::now();
                    last_activity = now;
                    let len = buf.len();
                    self.up.push(now, len, buf);
                }
                from_server = socket.recv(&mut scratch) => match from_server {
                    Ok(len) => {
                        let now = Instant::now();
                        last_activity = now;
                        let mut buf = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(BUF_CAPACITY));
                        buf.clear();
                        buf.extend_from_slice(&scratch[..len]);
                        self.down.push(now, len, buf);
                    }
                    // ICMP port unreachable from the server shows up here on a
                    // connected socket: the server is not there (yet).
                    Err(e) => trace!(error = %e, "upstream receive failed"),
                },
                () = &mut sleep => {}
            }
            let now = Instant::now();
            self.deliver(now, &socket).await;
            self.publish();
            let idle = now.duration_since(last_activity) >= self.idle_timeout;
            if idle && self.up.in_flight() == 0 && self.down.in_flight() == 0 {
                debug!("flow idle; closed");
                break;
            }
        }
    }

    async fn deliver(&mut self, now: Instant, socket: &UdpSocket) {
        for _ in 0..MAX_SENDS_PER_PASS {
            let Some(buf) = self.up.poll(now) else { break };
            if let Err(e) = socket.send(&buf).await {
                trace!(error = %e, "send upstream failed");
            }
            self.reuse(buf);
        }
        for _ in 0..MAX_SENDS_PER_PASS {
            let Some(buf) = self.down.poll(now) else {
                break;
            };
            if let Err(e) = self.listen.send_to(&buf, self.client).await {
                trace!(error = %e, "send to client failed");
            }
            self.reuse(buf);
        }
    }

    fn reuse(&mut self, buf: Vec<u8>) {
        if self.pool.len() < FLOW_POOL {
            self.pool.push(buf);
        } else {
            // Full: the listener is out of buffers then, or the buffer is freed.
            let _ = self.recycle.try_send(buf);
        }
    }

    fn publish(&mut self) {
        let up = self.up.stats();
        if up != self.published_up {
            self.shared.up.add(&up.since(&self.published_up));
            self.published_up = up;
        }
        let down = self.down.stats();
        if down != self.published_down {
            self.shared.down.add(&down.since(&self.published_down));
            self.published_down = down;
        }
    }
}

/// A socket of the upstream's family, on loopback when the upstream is,
/// connected so it only hears from the upstream.
async fn connect_upstream(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match upstream.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(ip) if ip.is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = socket.local_addr().expect("echo addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn start(limits: Limits) -> (ProxyHandle, SocketAddr) {
        let upstream = echo_server().await;
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            upstream,
            up: LinkConfig::default(),
            down: LinkConfig::default(),
            seed: 7,
        };
        let proxy = Proxy::start_with(config, limits).await.expect("start");
        let addr = proxy.local_addr();
        (proxy, addr)
    }

    async fn ping(client: &UdpSocket, to: SocketAddr) -> bool {
        client.send_to(b"ping", to).await.expect("send");
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn idle_flow_is_evicted_and_reopened() {
        let limits = Limits {
            max_flows: 4,
            idle_timeout: Duration::from_millis(100),
        };
        let (proxy, addr) = start(limits).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert!(ping(&client, addr).await);
        assert_eq!(proxy.stats().flows_active, 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(proxy.stats().flows_active, 0, "idle flow closed");
        assert!(ping(&client, addr).await, "a new flow opens");
        let stats = proxy.stats();
        assert_eq!((stats.flows_active, stats.flows_created), (1, 2));
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn flow_limit_drops_new_clients() {
        let limits = Limits {
            max_flows: 1,
            idle_timeout: IDLE_TIMEOUT,
        };
        let (proxy, addr) = start(limits).await;
        let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let second = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert!(ping(&first, addr).await);
        assert!(!ping(&second, addr).await, "over the limit: dropped");
        assert!(ping(&first, addr).await, "the existing flow still works");
        assert_eq!(proxy.stats().dropped_flow_limit, 1);
        proxy.shutdown().await;
    }

    #[test]
    fn flow_seeds_differ_by_flow_and_direction() {
        let seeds = [
            flow_seed(1, 0, Direction::Up),
            flow_seed(1, 0, Direction::Down),
            flow_seed(1, 1, Direction::Up),
            flow_seed(2, 0, Direction::Up),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
