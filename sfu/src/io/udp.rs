//! The media socket: batched receive (`recvmmsg`, and GRO where the kernel
//! coalesces a sender's burst) and segmented send (UDP GSO: the packets one
//! subscriber gets in a row leave in one system call), both through
//! `quinn-udp`, which also falls back to one datagram per call where the
//! kernel or the NIC cannot segment.
//!
//! Why: nearly all of a forwarding server's CPU is the kernel's per-datagram
//! send path (docs/BENCHMARKS.md). A video frame is several packets to the
//! same subscriber, back to back (str0m's pacer hands out a frame in one
//! run with the `pacer-burst` patch), so a frame costs one send instead of
//! one per packet.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Most datagrams (or GRO groups) taken per `recvmmsg`.
pub const RECV_BATCH: usize = 32;

/// Room for one received datagram; anything larger is not WebRTC.
pub const MAX_DATAGRAM: usize = 2048;

/// Most bytes one GSO send may carry: the IP payload limit, less headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Sets the socket options quinn-udp needs (nonblocking, GRO, packet info)
/// and probes GSO; needs no runtime, so a server can fail at start-up.
pub fn prepare(std_sock: &std::net::UdpSocket) -> io::Result<UdpSocketState> {
    UdpSocketState::new(UdpSockRef::from(std_sock))
}

/// A UDP socket with quinn-udp's batched, segmented I/O.
pub struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Receive buffers: `slots` slots of `slot` bytes.
    recv_buf: Vec<u8>,
    slot: usize,
    slots: usize,
    metas: [RecvMeta; RECV_BATCH],
}

impl MediaSocket {
    /// Wraps a bound socket (made nonblocking here), reading up to
    /// `RECV_BATCH` datagrams per call: a server's socket.
    pub fn new(std_sock: std::net::UdpSocket) -> io::Result<Self> {
        Self::with_batch(std_sock, RECV_BATCH)
    }

    /// As `new`, reading up to `slots` (≤ `RECV_BATCH`) datagrams or GRO
    /// groups per call: a client's socket, where one slot (a GRO group of a
    /// whole frame) is the common case and memory is per client.
    pub fn with_batch(std_sock: std::net::UdpSocket, slots: usize) -> io::Result<Self> {
        let state = prepare(&std_sock)?;
        Self::from_parts(std_sock, state, slots)
    }

    /// Registers a socket `prepare`d earlier (possibly on another thread)
    /// with this thread's tokio runtime.
    pub fn from_parts(
        std_sock: std::net::UdpSocket,
        state: UdpSocketState,
        slots: usize,
    ) -> io::Result<Self> {
        let socket = UdpSocket::from_std(std_sock)?;
        // With GRO on, one slot may hold a whole coalesced burst.
        let slot = MAX_DATAGRAM * state.gro_segments().max(1);
        let slots = slots.clamp(1, RECV_BATCH);
        Ok(MediaSocket {
            socket,
            state,
            recv_buf: vec![0; slot * slots],
            slot,
            slots,
            metas: [RecvMeta::default(); RECV_BATCH],
        })
    }

    /// Binds `addr` and wraps it (see `with_batch`).
    pub fn bind(addr: SocketAddr, slots: usize) -> io::Result<Self> {
        Self::with_batch(std::net::UdpSocket::bind(addr)?, slots)
    }

    /// How many segments one send may carry (1: no GSO here).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Resolves when the socket may have datagrams to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Waits until datagrams arrive, then calls `on_datagram` for each one
    /// read (splitting GRO groups), up to one batch.
    pub async fn recv(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            match self.try_recv(&mut on_datagram) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// One batch without waiting; `WouldBlock` if nothing is queued.
    /// Returns the number of datagrams passed to `on_datagram`.
    pub fn try_recv(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        self.try_recv_stamped(|source, d, _| on_datagram(source, d))
    }

    /// `try_recv`, with each datagram's arrival at the socket as the kernel
    /// stamped it (`SO_TIMESTAMPNS`, time since the Unix epoch; quinn-udp
    /// turns it on for Linux sockets, `None` elsewhere). The datagrams of
    /// one GRO buffer share its stamp.
    pub fn try_recv_stamped(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, &[u8], Option<Duration>),
    ) -> io::Result<usize> {
        let MediaSocket {
            socket,
            state,
            recv_buf,
            slot,
            slots,
            metas,
        } = self;
        let mut slices: [IoSliceMut<'_>; RECV_BATCH] = {
            let mut chunks = recv_buf.chunks_mut(*slot);
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
        };
        let n = socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(&*socket), &mut slices[..*slots], metas)
        })?;
        let mut count = 0;
        for (meta, buf) in metas.iter().zip(slices.iter()).take(n) {
            let data = &buf[..meta.len];
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            for d in data.chunks(stride.max(1)) {
                on_datagram(meta.addr, d, meta.timestamp);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sends one datagram (see `send`).
    pub async fn send_to(&self, contents: &[u8], destination: SocketAddr) {
        self.send(&Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        })
        .await
    }

    /// Sends one transmit (one datagram, or a GSO batch), waiting while the
    /// socket's buffer is full. Other errors are logged and the data dropped,
    /// as the network would.
    pub async fn send(&self, t: &Transmit<'_>) {
        loop {
            let r = self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send(UdpSockRef::from(&self.socket), t)
            });
            match r {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(dest = %t.destination, error = %e, "UDP send failed");
                    return;
                }
            }
        }
    }
}

/// Collects consecutive datagrams to one destination into one GSO send:
/// every segment but the last must have the same size, and the last may be
/// shorter (which ends the batch).
#[derive(Debug)]
pub struct GsoBatch {
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A short segment was added: nothing may follow it.
    closed: bool,
    max_segments: usize,
}

impl GsoBatch {
    pub fn new(max_segments: usize) -> Self {
        GsoBatch {
            buf: Vec::with_capacity(MAX_GSO_BYTES),
            dest: None,
            segment: 0,
            count: 0,
            closed: false,
            max_segments: max_segments.max(1),
        }
    }

    /// Appends a datagram if it can join the batch; false means: send the
    /// batch first, then push again (a datagram always fits an empty batch).
    #[must_use]
    pub fn push(&mut self, dest: SocketAddr, data: &[u8]) -> bool {
        if self.count == 0 {
            self.dest = Some(dest);
            self.segment = data.len();
            self.closed = false;
        } else if self.dest != Some(dest)
            || self.closed
            || self.count >= self.max_segments
            || data.len() > self.segment
            || self.buf.len() + data.len() > MAX_GSO_BYTES
        {
            return false;
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The batch as one quinn-udp transmit, if it holds anything.
    pub fn transmit(&self) -> Option<Transmit<'_>> {
        let destination = self.dest.filter(|_| self.count > 0)?;
        Some(Transmit {
            destination,
            ecn: None,
            contents: &self.buf,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        })
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.dest = None;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn received_datagrams_carry_the_kernels_arrival_stamp() {
        let mut rx = MediaSocket::bind(addr(0), 4).expect("binds");
        let tx = MediaSocket::bind(addr(0), 4).expect("binds");
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        tx.send_to(b"stamped", rx.local_addr().expect("an address"))
            .await;
        rx.socket.readable().await.expect("readable");
        let mut got = Vec::new();
        rx.try_recv_stamped(|_, d, stamp| got.push((d.to_vec(), stamp)))
            .expect("a datagram");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"stamped");
        let stamp = got[0].1.expect("Linux stamps received datagrams");
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        assert!(
            before <= stamp && stamp <= after,
            "{before:?} {stamp:?} {after:?}"
        );
    }

    #[test]
    fn a_frame_to_one_destination_is_one_batch() {
        let mut b = GsoBatch::new(64);
        assert!(b.push(addr(1), &[1; 1200]));
        assert!(b.push(addr(1), &[2; 1200]));
        assert!(b.push(addr(1), &[3; 700]));
        let t = b.transmit().expect("batch");
        assert_eq!(t.segment_size, Some(1200));
        assert_eq!(t.contents.len(), 3100);
        assert_eq!(&t.contents[2400..2401], &[3]);
        // The short last segment ends it.
        assert!(!b.push(addr(1), &[4; 700]));
    }

    #[test]
    fn a_new_destination_or_a_larger_packet_starts_a_new_batch() {
        let mut b = GsoBatch::new(64);
        assert!(b.push(addr(1), &[0; 1000]));
        assert!(!b.push(addr(2), &[0; 1000]), "other destination");
        assert!(!b.push(addr(1), &[0; 1001]), "larger than the segment");
        assert_eq!(b.len(), 1);
        let t = b.transmit().expect("batch");
        assert_eq!(t.segment_size, None, "one datagram is sent plainly");
        b.clear();
        assert!(b.transmit().is_none());
        assert!(b.push(addr(2), &[0; 1001]));
    }

    #[test]
    fn the_batch_respects_the_segment_and_byte_limits() {
        let mut b = GsoBatch::new(3);
        for _ in 0..3 {
            assert!(b.push(addr(1), &[0; 100]));
        }
        assert!(!b.push(addr(1), &[0; 100]), "segment limit");
        let mut b = GsoBatch::new(64);
        let mut n = 0;
        while b.push(addr(1), &[0; 1400]) {
            n += 1;
        }
        assert_eq!(n, MAX_GSO_BYTES / 1400);
    }

    /// Real sockets on 127.0.0.1: a GSO batch arrives as separate datagrams
    /// at a plain receiver, and as one GRO group (split again by `try_recv`)
    /// at a `MediaSocket`.
    #[tokio::test]
    async fn segments_arrive_as_datagrams() {
        let tx = MediaSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .expect("socket");
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut rx = MediaSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .expect("socket");
        let rx_addr = rx.local_addr().expect("addr");
        let sizes = [1200usize, 1200, 1200, 500];
        for dest in [plain.local_addr().expect("addr"), rx_addr] {
            let mut b = GsoBatch::new(tx.max_segments());
            for (i, &n) in sizes.iter().enumerate() {
                if !b.push(dest, &vec![i as u8; n]) {
                    tx.send(&b.transmit().expect("batch")).await;
                    b.clear();
                    assert!(b.push(dest, &vec![i as u8; n]));
                }
            }
            tx.send(&b.transmit().expect("batch")).await;
        }
        let mut buf = [0u8; 2048];
        for (i, &n) in sizes.iter().enumerate() {
            let (len, _) = plain.recv_from(&mut buf).expect("recv");
            assert_eq!(len, n);
            assert!(buf[..len].iter().all(|&b| b == i as u8));
        }
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            rx.recv(|_, d| got.push(d.to_vec())).await.expect("recv");
        }
        for (i, (d, &n)) in got.iter().zip(&sizes).enumerate() {
            assert_eq!(d.len(), n);
            assert!(d.iter().all(|&b| b == i as u8));
        }
    }

    /// Frames sent as GSO batches reach a small client socket (4 slots)
    /// whole and in order, however the kernel groups them.
    #[tokio::test]
    async fn frames_arrive_whole_and_in_order() {
        let tx = MediaSocket::bind(addr(0), RECV_BATCH).expect("socket");
        let mut rx = MediaSocket::bind(addr(0), 4).expect("socket");
        let dest = rx.local_addr().expect("addr");
        let mut want = Vec::new();
        for frame in 0..20u8 {
            let mut b = GsoBatch::new(tx.max_segments());
            for i in 0..4u8 {
                let n = if i == 3 { 300 } else { 1100 };
                want.push((n, frame * 4 + i));
                assert!(b.push(dest, &vec![frame * 4 + i; n]));
            }
            tx.send(&b.transmit().expect("batch")).await;
        }
        let mut got = Vec::new();
        while got.len() < want.len() {
            let read = rx.recv(|_, d| got.push((d.len(), d[0])));
            tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .expect("datagrams arrive")
                .expect("recv");
        }
        assert_eq!(got, want);
    }
}
