//! `meridian serve` configuration: flags, optionally over a TOML file.
//! Every flag has a config key of the same name (with `_` for `-`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// HTTP address: web demo, /ws, WHIP/WHEP, /healthz, /metrics.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// UDP address all media arrives on.
    #[arg(long)]
    pub udp: Option<SocketAddr>,
    /// Address to put in ICE candidates when it differs from the bound one.
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the web demo.
    #[arg(long)]
    pub web_root: Option<PathBuf>,
    /// Most peers (publishers, subscribers, WHIP/WHEP sessions) in one room.
    #[arg(long)]
    pub max_peers_per_room: Option<usize>,
    /// Do not answer subscribers' NACKs (for measuring; on by default).
    #[arg(long)]
    pub no_nack: bool,
    /// Never send audio as RED to subscribers.
    #[arg(long)]
    pub no_audio_red: bool,
    /// Never send video FEC (ULPFEC) to subscribers.
    #[arg(long)]
    pub no_video_fec: bool,
    /// Do not estimate subscribers' bandwidth with TWCC (then tile sizes and
    /// REMB alone choose simulcast layers).
    #[arg(long)]
    pub no_bwe: bool,
    #[arg(long, env = "MERIDIAN_API_KEY")]
    pub api_key: Option<String>,
    /// HS256 secret for access tokens. Without it the server runs in dev mode.
    #[arg(long, env = "MERIDIAN_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
}

/// The TOML file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub public_ip: Option<IpAddr>,
    pub web_root: Option<PathBuf>,
    pub max_peers_per_room: Option<usize>,
    pub nack: Option<bool>,
    pub audio_red: Option<bool>,
    pub video_fec: Option<bool>,
    pub bwe: Option<bool>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
}

#[derive(Debug)]
pub struct Config {
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub public_ip: Option<IpAddr>,
    pub web_root: PathBuf,
    pub max_peers_per_room: usize,
    pub recovery: meridian_sfu::io::Recovery,
    pub api_key: String,
    pub api_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("web demo directory {0} not found: run from the repository root or pass --web-root")]
    WebRoot(PathBuf),
}

impl Config {
    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Flags win over the file, the file over defaults.
    pub fn load(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => Self::read_file(p)?,
            None => FileConfig::default(),
        };
        let web_root = args
            .web_root
            .or(file.web_root)
            .unwrap_or_else(default_web_root);
        if !web_root.is_dir() {
            return Err(ConfigError::WebRoot(web_root));
        }
        Ok(Config {
            http: args
                .http
                .or(file.http)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            udp: args
                .udp
                .or(file.udp)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081))),
            public_ip: args.public_ip.or(file.public_ip),
            web_root,
            max_peers_per_room: args
                .max_peers_per_room
                .or(file.max_peers_per_room)
                .unwrap_or(meridian_sfu::core::DEFAULT_MAX_PEERS_PER_ROOM),
            // A flag turns a mechanism off; the file can set it either way.
            recovery: meridian_sfu::io::Recovery {
                nack: !args.no_nack && file.nack.unwrap_or(true),
                audio_red: !args.no_audio_red && file.audio_red.unwrap_or(true),
                video_fec: !args.no_video_fec && file.video_fec.unwrap_or(true),
                bwe: !args.no_bwe && file.bwe.unwrap_or(true),
            },
            api_key: args
                .api_key
                .or(file.api_key)
                .unwrap_or_else(|| "meridian".into()),
            api_secret: args
                .api_secret
                .or(file.api_secret)
                .filter(|s| !s.is_empty()),
        })
    }
}

/// `web-demo/` under the working directory, else next to the source tree
/// this binary was built from.
fn default_web_root() -> PathBuf {
    let local = PathBuf::from("web-demo");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web-demo")
}
