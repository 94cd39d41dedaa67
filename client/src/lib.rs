//! `meridian-client`: a native Rust client for Meridian.
//!
//! Connects over the WebSocket protocol (rooms, events, renegotiation) or
//! over WHIP/WHEP, publishes RTP you hand it, and gives back every RTP packet
//! it receives with its arrival time. Each client is one str0m `Rtc` on its
//! own UDP socket, driven by one tokio task; many clients fit in one process
//! (the load tester and the tests run hundreds).

pub mod capture;
mod driver;
pub mod load;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use meridian_sfu::core::publish::Protection;
pub use meridian_signaling::protocol::{ClientMsg, ServerMsg};
use str0m::format::Codec;
pub use str0m::media::{MediaKind, Mid};
use tokio::sync::mpsc;

use crate::driver::{Driver, DriverCmd, Signaling};

/// Events buffered per client before the driver waits for the reader.
const EVENT_QUEUE: usize = 4096;

/// Commands (outgoing RTP) buffered per client.
const COMMAND_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {detail} (is `meridian serve` running there?)")]
    Unreachable { url: String, detail: String },
    #[error("the server refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the server answered with HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the WebRTC stack failed: {0}")]
    Rtc(String),
    #[error("local socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the client has stopped")]
    Closed,
}

/// Video codec to publish with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
    Vp9,
}

impl VideoCodec {
    fn codec(self) -> Codec {
        match self {
            VideoCodec::Vp8 => Codec::Vp8,
            VideoCodec::H264 => Codec::H264,
            VideoCodec::Vp9 => Codec::Vp9,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the server's HTTP side, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub room: String,
    pub name: String,
    pub token: Option<String>,
    pub publish_audio: bool,
    pub publish_video: bool,
    pub video_codec: VideoCodec,
    pub auto_subscribe: bool,
    /// Local IP to bind the client's UDP socket to.
    pub bind_ip: IpAddr,
    /// Send media to this address instead of the server's ICE candidates
    /// (a UDP proxy in front of the server, e.g. `meridian netsim`).
    pub udp_via: Option<std::net::SocketAddr>,
    /// How published media is protected against uplink loss: by default it
    /// follows the loss the server's transport feedback shows (audio RED up
    /// to three earlier packets, video ULPFEC); `Protection::Fixed` sends
    /// as Chrome does, or nothing.
    pub protection: Protection,
}

impl ClientConfig {
    pub fn new(
        server: impl Into<String>,
        room: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ClientConfig {
            server: server.into(),
            room: room.into(),
            name: name.into(),
            token: None,
            publish_audio: false,
            publish_video: false,
            video_codec: VideoCodec::Vp8,
            auto_subscribe: true,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            udp_via: None,
            protection: Protection::Adaptive,
        }
    }

    pub fn publish(mut self, audio: bool, video: bool) -> Self {
        self.publish_audio = audio;
        self.publish_video = video;
        self
    }

    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn video_codec(mut self, c: VideoCodec) -> Self {
        self.video_codec = c;
        self
    }

    pub fn protection(mut self, p: Protection) -> Self {
        self.protection = p;
        self
    }

    /// Reach the server's UDP port through `addr` (see `udp_via`).
    pub fn udp_via(mut self, addr: std::net::SocketAddr) -> Self {
        self.udp_via = Some(addr);
        self
    }
}

/// One RTP packet as received.
#[derive(Debug, Clone)]
pub struct ReceivedRtp {
    /// The m-line it arrived on (`None` if str0m could not say).
    pub mid: Option<Mid>,
    pub kind: Option<MediaKind>,
    /// The server's track id for this m-line (WebSocket sessions).
    pub track_id: Option<Arc<str>>,
    pub ssrc: u32,
    /// Extended sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub received_at: Instant,
}

#[derive(Debug)]
pub enum ClientEvent {
    /// ICE and DTLS are up.
    Connected,
    Rtp(ReceivedRtp),
    /// A signaling message (participant and track events, errors).
    Signal(ServerMsg),
    /// A data-channel text message from another participant.
    Chat(String),
    Closed(String),
}

/// One outgoing RTP packet. Sequence numbers are assigned by the client so
/// the stream is continuous; the payload type follows the negotiated codec.
#[derive(Debug, Clone)]
pub struct OutRtp {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

/// A cloneable handle that sends RTP through a client.
#[derive(Clone, Debug)]
pub struct RtpSender {
    tx: mpsc::Sender<DriverCmd>,
}

impl RtpSender {
    pub async fn send(&self, pkt: OutRtp) -> Result<(), ClientError> {
        self.tx
            .send(DriverCmd::Rtp(pkt))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a signaling message (WebSocket sessions): subscribe,
    /// unsubscribe, mute, track_info, …
    pub async fn signal(&self, m: ClientMsg) -> Result<(), ClientError> {
        self.tx
            .send(DriverCmd::Signal(m))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a text message on the data channel (WebSocket sessions).
    pub async fn chat(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.tx
            .send(DriverCmd::Chat(text.into()))
            .await
            .map_err(|_| ClientError::Closed)
    }
}

pub struct Client {
    sender: RtpSender,
    events: mpsc::Receiver<ClientEvent>,
    /// Events `wait_connected` passed over, returned by `next_event` first.
    held: std::collections::VecDeque<ClientEvent>,
    /// The server's id for this peer (WebSocket sessions).
    pub peer_id: Option<String>,
    /// The WHIP/WHEP resource to DELETE, if any.
    pub location: Option<String>,
    pub local_addr: SocketAddr,
    token: Option<String>,
}

impl Client {
    /// Joins a room over the WebSocket protocol and negotiates.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let (driver, peer_id) = Driver::connect_ws(&cfg).await?;
        Ok(Self::spawn(driver, peer_id, None, cfg.token))
    }

    /// Publishes over WHIP (`POST {server}/whip/{room}`).
    pub async fn whip(cfg: ClientConfig) -> Result<Client, ClientError> {
        let url = format!("{}/whip/{}", cfg.server, cfg.room);
        let (driver, location) = Driver::connect_http(&cfg, &url, Signaling::Whip).await?;
        Ok(Self::spawn(driver, None, Some(location), cfg.token))
    }

    /// Plays over WHEP: the room's first publisher, or `identity`'s.
    pub async fn whep(cfg: ClientConfig, identity: Option<&str>) -> Result<Client, ClientError> {
        let url = match identity {
            Some(i) => format!("{}/whep/{}/{}", cfg.server, cfg.room, i),
            None => format!("{}/whep/{}", cfg.server, cfg.room),
        };
        let (driver, location) = Driver::connect_http(&cfg, &url, Signaling::Whep).await?;
        Ok(Self::spawn(driver, None, Some(location), cfg.token))
    }

    fn spawn(
        driver: Driver,
        peer_id: Option<String>,
        location: Option<String>,
        token: Option<String>,
    ) -> Client {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let local_addr = driver.local_addr();
        tokio::spawn(driver.run(cmd_rx, ev_tx));
        Client {
            sender: RtpSender { tx: cmd_tx },
            events: ev_rx,
            held: std::collections::VecDeque::new(),
            peer_id,
            location,
            local_addr,
            token,
        }
    }

    pub fn sender(&self) -> RtpSender {
        self.sender.clone()
    }

    pub async fn send_rtp(&self, pkt: OutRtp) -> Result<(), ClientError> {
        self.sender.send(pkt).await
    }

    /// The next event; `None` once the client has stopped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        if let Some(e) = self.held.pop_front() {
            return Some(e);
        }
        self.events.recv().await
    }

    /// Waits until ICE + DTLS are up. Other events that arrive meanwhile are
    /// kept and returned by `next_event` afterwards.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ClientEvent::Connected)) => return Ok(()),
                Ok(Some(ClientEvent::Closed(why))) => return Err(ClientError::Protocol(why)),
                Ok(Some(other)) => self.held.push_back(other),
                Ok(None) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout("ICE/DTLS connection")),
            }
        }
    }

    /// Leaves (WebSocket) or DELETEs the WHIP/WHEP resource, then stops.
    pub async fn close(mut self, server: &str) -> Result<(), ClientError> {
        // Nobody reads events any more: let the driver's sends fail instead
        // of waiting on a full queue (and never taking the Close below).
        self.events.close();
        if let Some(loc) = &self.location {
            let mut req = reqwest::Client::new().delete(format!("{server}{loc}"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let _ = req.send().await;
        }
        let _ = self.sender.tx.send(DriverCmd::Close).await;
        Ok(())
    }
}
