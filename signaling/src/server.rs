//! The HTTP server: web demo, `/ws`, WHIP/WHEP, `/healthz`, `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use meridian_sfu::core::PeerId;
use meridian_sfu::io::{Command, NodeHandle};
use tokio::sync::{oneshot, watch};
use tower_http::cors::{Any, CorsLayer};
use tower_http::services::ServeDir;
use tracing::info;

use crate::auth::Auth;
use crate::ratelimit::BAD_INPUT;
use crate::{whip, ws};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http: SocketAddr,
    /// Directory holding the web demo (index.html, meridian.js, …).
    pub web_root: PathBuf,
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot bind HTTP {addr}: {source} (is another process using the port? pick another with --http)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub(crate) struct AppState {
    pub node: NodeHandle,
    pub auth: Auth,
    pub shutting_down: AtomicBool,
    /// Flips to true once when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// WHIP/WHEP sessions by the (random) id in their Location.
    pub sessions: Mutex<HashMap<String, HttpSession>>,
    pub next_guest: AtomicU64,
}

pub(crate) type Shared = Arc<AppState>;

/// A WHIP/WHEP resource: only a token for its room and identity may end it.
#[derive(Debug, Clone)]
pub(crate) struct HttpSession {
    pub room: String,
    pub identity: String,
    pub peer: PeerId,
}

/// Room names: 1–128 characters, no '/' (they appear in URLs) and no
/// control characters.
pub(crate) fn valid_room(room: &str) -> bool {
    !room.is_empty() && room.len() <= 128 && !room.chars().any(|c| c.is_control() || c == '/')
}

/// An HTTP error with a JSON body: `{"error": code, "message": …}`.
pub(crate) fn http_error(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.to_string() });
    (status, Json(body)).into_response()
}

/// Runs the HTTP server until `shutdown` resolves, then stops accepting
/// joins, tells every client, closes all peers and returns.
pub async fn serve(
    config: ServerConfig,
    node: NodeHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        node: node.clone(),
        auth: config.auth.clone(),
        shutting_down: AtomicBool::new(false),
        shutdown: stop_rx,
        sessions: Mutex::new(HashMap::new()),
        next_guest: AtomicU64::new(1),
    });
    let app = router(state.clone(), config.web_root.clone());
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    info!("web demo at http://{local}/  (WebSocket /ws, WHIP /whip/{{room}}, WHEP /whep/{{room}})");
    let graceful_state = state.clone();
    let graceful = async move {
        shutdown.await;
        info!("shutting down: refusing new joins, closing peers");
        graceful_state.shutting_down.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        // Give sessions a moment to tell their clients.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (done_tx, done_rx) = oneshot::channel();
        if graceful_state
            .node
            .send(Command::Shutdown { done: done_tx })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    };
    // Signaling is small request/response messages: without TCP_NODELAY a
    // message written right after another waits for the peer's delayed ACK
    // (40 ms on Linux), which showed in every join.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful)
    .await
    .map_err(ServerError::Serve)
}

fn router(state: Shared, web_root: PathBuf) -> Router {
    // WHIP/WHEP players and ingest tools may live on other origins.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([header::LOCATION, header::ETAG]);
    let whip_whep = Router::new()
        .route("/whip/{room}", post(whip::whip_post))
        .route(
            "/whip/{room}/{session}",
            axum::routing::delete(whip::session_delete).patch(whip::patch_unsupported),
        )
        .route("/whep/{room}", post(whip::whep_post))
        .route(
            "/whep/{room}/{target}",
            post(whip::whep_post_identity)
                .delete(whip::session_delete)
                .patch(whip::patch_unsupported),
        )
        .layer(cors);
    Router::new()
        .route("/ws", get(ws::ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(whip_whep)
        .fallback_service(ServeDir::new(web_root))
        .with_state(state)
}

async fn healthz(State(state): State<Shared>) -> Response {
    let stats = state.node.stats();
    let shutting_down = state.shutting_down.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "status": if shutting_down { "shutting_down" } else { "ok" },
        "dev_mode": state.auth.dev_mode(),
        "udp": state.node.candidate_addr.to_string(),
        "rooms": stats.rooms,
        "peers": stats.peers,
        "tracks": stats.tracks,
    });
    let status = if shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of the node's counters.
async fn metrics(State(state): State<Shared>) -> Response {
    let s = state.node.stats();
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    gauge(
        "meridian_rooms",
        "Rooms on this node.",
        "gauge",
        s.rooms as u64,
    );
    gauge(
        "meridian_peers",
        "Peer connections on this node.",
        "gauge",
        s.peers as u64,
    );
    gauge(
        "meridian_tracks",
        "Published tracks on this node.",
        "gauge",
        s.tracks as u64,
    );
    gauge(
        "meridian_rtp_received_total",
        "RTP packets received from publishers.",
        "counter",
        s.rtp_in,
    );
    gauge(
        "meridian_rtp_forwarded_total",
        "RTP packets forwarded to subscribers.",
        "counter",
        s.rtp_forwarded,
    );
    gauge(
        "meridian_rtp_forwarded_bytes_total",
        "RTP payload bytes forwarded.",
        "counter",
        s.bytes_forwarded,
    );
    gauge(
        "meridian_udp_datagrams_sent_total",
        "UDP datagrams sent (media, RTCP, DTLS, STUN).",
        "counter",
        s.io.datagrams_out,
    );
    gauge(
        "meridian_udp_send_calls_total",
        "UDP send system calls (one GSO call carries several datagrams).",
        "counter",
        s.io.send_calls,
    );
    gauge(
        "meridian_udp_datagrams_received_total",
        "UDP datagrams received.",
        "counter",
        s.io.datagrams_in,
    );
    gauge(
        "meridian_udp_recv_calls_total",
        "UDP receive system calls that returned datagrams (recvmmsg).",
        "counter",
        s.io.recv_calls,
    );
    gauge(
        "meridian_fec_packets_total",
        "ULPFEC packets sent to subscribers.",
        "counter",
        s.fec_packets,
    );
    gauge(
        "meridian_fec_bytes_total",
        "ULPFEC payload bytes sent to subscribers.",
        "counter",
        s.fec_bytes,
    );
    gauge(
        "meridian_red_recovered_total",
        "Audio packets recovered from publishers' RED.",
        "counter",
        s.red_recovered,
    );
    gauge(
        "meridian_resends_duplicated_total",
        "Retransmissions sent twice to a subscriber on a lossy link.",
        "counter",
        s.nack.duplicated,
    );
    gauge(
        "meridian_upstream_fec_recovered_total",
        "Video packets rebuilt from publishers' ULPFEC.",
        "counter",
        s.upstream_fec_recovered,
    );
    gauge(
        "meridian_keyframe_requests_total",
        "Keyframe requests sent to publishers (after merging).",
        "counter",
        s.keyframe_requests_upstream,
    );
    gauge(
        "meridian_bad_client_input_total",
        "Malformed signaling messages, SDPs and tokens.",
        "counter",
        BAD_INPUT.total.load(Ordering::Relaxed),
    );
    let proc = crate::procstat::ProcStat::read_self();
    gauge(
        "process_resident_memory_bytes",
        "Resident memory.",
        "gauge",
        proc.rss_bytes,
    );
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
        proc.cpu_seconds()
    );
    let _ = writeln!(
        out,
        "# HELP meridian_dropped_total Datagrams and packets dropped, by reason.\n# TYPE meridian_dropped_total counter"
    );
    for (r, n) in s.drops.iter() {
        let _ = writeln!(
            out,
            "meridian_dropped_total{{reason=\"{}\"}} {n}",
            r.as_str()
        );
    }
    let _ = writeln!(
        out,
        "# HELP meridian_nack_total Sequence numbers subscribers NACKed, by outcome.\n# TYPE meridian_nack_total counter"
    );
    let n = &s.nack;
    for (outcome, v) in [
        ("resent", n.resent),
        ("unknown", n.unknown),
        ("missing_upstream", n.missing_upstream),
        ("too_late", n.too_late),
        ("in_flight", n.in_flight),
        ("max_resends", n.max_resends),
        ("over_budget", n.over_budget),
    ] {
        let _ = writeln!(out, "meridian_nack_total{{outcome=\"{outcome}\"}} {v}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
