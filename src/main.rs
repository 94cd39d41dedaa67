//! `meridian`: one binary that is a signaling server, an SFU media node and
//! (later) a relay node. This file only parses flags and configuration and
//! wires the crates together.

mod config;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meridian_signaling::auth::Auth;
use meridian_signaling::{serve, ServerConfig};
use tracing::{error, warn};

use crate::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "meridian", version, about = "Meridian: a WebRTC SFU network")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a single-node SFU with WebSocket signaling, WHIP/WHEP and the web demo.
    Serve(ServeArgs),
    /// Print an access token (JWT, HS256) for the configured API key/secret.
    Token(TokenArgs),
    /// Replay a pcap/pcapng capture into an SFU through many publishers and
    /// subscribers, and report delivery, latency, join time and cost.
    Load(LoadArgs),
    /// A UDP impairment proxy: loss, bursts, delay, jitter, reordering,
    /// duplication and a bandwidth cap, set per direction (the kernel's
    /// netem in user space, for testing on 127.0.0.1).
    Netsim(Box<meridian_netsim::NetsimArgs>),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Capture file (pcap or pcapng) holding RTP.
    #[arg(long)]
    pcap: std::path::PathBuf,
    /// Only RTP to or from this UDP port.
    #[arg(long)]
    udp_port: Option<u16>,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room; each publishes the capture's audio and video.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Replay speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "ws")]
    protocol: ProtocolArg,
    /// Codec of the capture's video stream.
    #[arg(long, value_enum, default_value = "vp8")]
    video_codec: VideoCodecArg,
    /// Token for every client.
    #[arg(long)]
    token: Option<String>,
    /// Mint a token per client with this secret instead.
    #[arg(long, env = "MERIDIAN_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    #[arg(long, env = "MERIDIAN_API_KEY", default_value = "meridian")]
    api_key: String,
    /// Rooms are named PREFIX0, PREFIX1, …
    #[arg(long, default_value = "load-")]
    room_prefix: String,
    /// Measure this server process's CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the report as an HTML page with plots.
    #[arg(long)]
    html: Option<std::path::PathBuf>,
    /// Publishers also receive the others in their room (the meeting case).
    #[arg(long)]
    publishers_subscribe: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Ws,
    Whip,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VideoCodecArg {
    Vp8,
    H264,
    Vp9,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    identity: String,
    /// Grant publishing.
    #[arg(long)]
    publish: bool,
    /// Grant subscribing.
    #[arg(long)]
    subscribe: bool,
    /// Lifetime, e.g. 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// TOML configuration file holding api_key / api_secret.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long, env = "MERIDIAN_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "MERIDIAN_API_SECRET")]
    api_secret: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,dimpl=warn,sctp_proto=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => {
            init_tracing();
            match Config::load(args) {
                Ok(cfg) => run_serve(cfg),
                Err(e) => {
                    eprintln!("meridian serve: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Token(args) => token(args),
        Cmd::Load(args) => load(args),
        Cmd::Netsim(args) => netsim(*args),
    }
}

fn netsim(args: meridian_netsim::NetsimArgs) -> ExitCode {
    init_tracing();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian netsim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(meridian_netsim::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian netsim: {e}");
            ExitCode::from(1)
        }
    }
}

fn load(args: LoadArgs) -> ExitCode {
    use meridian_client::load::{self, LoadError, LoadOptions, LoadProtocol, TokenMinter};
    use meridian_client::VideoCodec;
    // The tester's own output is its report; logs only when asked for
    // (e.g. RUST_LOG=meridian_client=debug for each client's join timeline).
    if std::env::var_os("RUST_LOG").is_some() {
        init_tracing();
    }
    let mint = match (&args.token, &args.api_secret) {
        (None, Some(secret)) => {
            let auth = Auth::new(args.api_key.clone(), Some(secret.clone()));
            Some(TokenMinter(std::sync::Arc::new(
                move |room: &str, identity: &str| {
                    auth.issue(room, identity, true, true, Duration::from_secs(24 * 3600))
                        .unwrap_or_default()
                },
            )))
        }
        _ => None,
    };
    let opts = LoadOptions {
        pcap: args.pcap,
        udp_port: args.udp_port,
        rooms: args.rooms,
        publishers: args.publishers,
        subscribers: args.subscribers,
        duration: args.duration,
        speed: args.speed,
        url: args.url.trim_end_matches('/').to_string(),
        protocol: match args.protocol {
            ProtocolArg::Ws => LoadProtocol::Ws,
            ProtocolArg::Whip => LoadProtocol::Whip,
        },
        token: args.token,
        mint,
        room_prefix: args.room_prefix,
        server_pid: args.server_pid,
        progress: !args.quiet,
        video_codec: match args.video_codec {
            VideoCodecArg::Vp8 => VideoCodec::Vp8,
            VideoCodecArg::H264 => VideoCodec::H264,
            VideoCodecArg::Vp9 => VideoCodec::Vp9,
        },
        publishers_subscribe: args.publishers_subscribe,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian load: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match rt.block_on(load::run(opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meridian load: {e}");
            return match e {
                LoadError::NoClients(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            };
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("meridian load: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &args.html {
        if let Err(e) = std::fs::write(path, load::write_html(&report)) {
            eprintln!("meridian load: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn token(args: TokenArgs) -> ExitCode {
    let file = match args.config.as_deref().map(Config::read_file).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("meridian token: {e}");
            return ExitCode::from(2);
        }
    };
    let key = args
        .api_key
        .or(file.api_key)
        .unwrap_or_else(|| "meridian".into());
    let Some(secret) = args.api_secret.or(file.api_secret) else {
        eprintln!(
            "meridian token: no API secret: pass --api-secret, set MERIDIAN_API_SECRET, or put api_secret in the --config file"
        );
        return ExitCode::from(2);
    };
    if !args.publish && !args.subscribe {
        eprintln!("meridian token: grant at least one of --publish, --subscribe");
        return ExitCode::from(2);
    }
    let auth = Auth::new(key, Some(secret));
    match auth.issue(
        &args.room,
        &args.identity,
        args.publish,
        args.subscribe,
        args.ttl,
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian token: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_serve(cfg: Config) -> ExitCode {
    let auth = Auth::new(cfg.api_key.clone(), cfg.api_secret.clone());
    if auth.dev_mode() {
        warn!("==============================================================");
        warn!("DEV MODE: no api_secret configured; anyone can join any room.");
        warn!("Set MERIDIAN_API_SECRET or api_secret in --config for production.");
        warn!("==============================================================");
    }
    let node = match meridian_sfu::io::spawn_node(
        cfg.udp,
        cfg.public_ip,
        cfg.max_peers_per_room,
        cfg.recovery,
    ) {
        Ok(n) => n,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let server = ServerConfig {
        http: cfg.http,
        web_root: cfg.web_root.clone(),
        auth,
    };
    match rt.block_on(serve(server, node, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
