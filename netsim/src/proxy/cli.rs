//! `meridian netsim`: the proxy as a command, for putting an impaired link
//! in front of any UDP server by hand.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;

use super::{Proxy, ProxyConfig, ProxyStats};
use crate::model::LinkConfig;

/// How often `run` logs the proxy's counters.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

const SPEC_HELP: &str = "\
SPEC is a comma-separated list of key=value items, optionally starting with a preset:
  loss=PROB                          independent loss (20% or 0.2)
  ge=p:PROB/r:PROB[/k:PROB][/h:PROB] Gilbert-Elliott bursty loss: p good->bad, r bad->good,
                                     k loss while good (default 0%), h loss while bad (100%)
  delay=DUR                          one-way delay (30ms, 1.5ms, 500us, 2s)
  jitter=DUR[:uniform|:normal]       delay varies within +-DUR; never reorders by itself
  reorder=PROB[:DUR]                 hold a packet back DUR (10ms) so later ones overtake it
  dup=PROB                           deliver a packet twice
  rate=RATE                          bandwidth cap: bit, kbit, mbit, gbit (2mbit)
  queue=DUR|BYTES                    queue bound at the cap (100ms; or 64kb, 64kib, 1mb)
Presets: perfect, burst, wifi, cellular (later items override them).
Example: --both delay=30ms,jitter=5ms,loss=1% --up rate=2mbit,queue=200ms";

/// Arguments of `meridian netsim`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = SPEC_HELP)]
pub struct NetsimArgs {
    /// Address clients send to, e.g. 127.0.0.1:4000.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The UDP server behind the proxy, e.g. 127.0.0.1:3478.
    #[arg(long, value_name = "ADDR")]
    pub upstream: SocketAddr,
    /// Impairment of client-to-server datagrams (see --help for SPEC).
    #[arg(long, value_name = "SPEC")]
    pub up: Option<LinkConfig>,
    /// Impairment of server-to-client datagrams.
    #[arg(long, value_name = "SPEC")]
    pub down: Option<LinkConfig>,
    /// Impairment of both directions where --up or --down does not say.
    #[arg(long, value_name = "SPEC")]
    pub both: Option<LinkConfig>,
    /// Seed of every random decision: the same seed and traffic give the
    /// same losses, delays and reorderings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl NetsimArgs {
    /// The proxy these arguments describe: `--up`/`--down`, else `--both`,
    /// else a perfect link.
    pub fn proxy_config(&self) -> ProxyConfig {
        let pick = |own: &Option<LinkConfig>| {
            own.as_ref()
                .or(self.both.as_ref())
                .cloned()
                .unwrap_or_default()
        };
        ProxyConfig {
            listen: self.listen,
            upstream: self.upstream,
            up: pick(&self.up),
            down: pick(&self.down),
            seed: self.seed,
        }
    }
}

/// Why `meridian netsim` stopped early. (Bad specs are rejected while the
/// arguments are parsed, with the spec error as the message.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetsimError {
    /// The listen address could not be bound, or the upstream is unusable.
    #[error("cannot start the netsim proxy on {listen}: {source}")]
    Start {
        /// The `--listen` address.
        listen: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("cannot listen for Ctrl-C: {0}")]
    Signal(io::Error),
}

/// Runs the proxy until Ctrl-C: logs the effective settings once, then
/// per-direction counters every [`STATS_INTERVAL`].
pub async fn run(args: NetsimArgs) -> Result<(), NetsimError> {
    let config = args.proxy_config();
    let proxy = Proxy::start(config.clone())
        .await
        .map_err(|source| NetsimError::Start {
            listen: args.listen,
            source,
        })?;
    info!(
        listen = %proxy.local_addr(),
        upstream = %config.upstream,
        up = %config.up,
        down = %config.down,
        seed = config.seed,
        "netsim proxy running; Ctrl-C stops it"
    );
    let start = tokio::time::Instant::now() + STATS_INTERVAL;
    let mut ticker = tokio::time::interval_at(start, STATS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        tokio::select! {
            signal = &mut ctrl_c => break signal.map_err(NetsimError::Signal),
            _ = ticker.tick() => log_stats(&proxy.stats()),
        }
    };
    let last = proxy.stats();
    proxy.shutdown().await;
    log_stats(&last);
    info!("netsim proxy stopped");
    result
}

fn log_stats(stats: &ProxyStats) {
    info!(
        flows = stats.flows_active,
        flows_created = stats.flows_created,
        dropped_flow_limit = stats.dropped_flow_limit,
        dropped_overload = stats.dropped_overload,
        "netsim flows"
    );
    info!(direction = "up", stats = %stats.up, "netsim link");
    info!(direction = "down", stats = %stats.down, "netsim link");
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NetsimArgs,
    }

    /// How the main binary mounts it: `meridian netsim …`.
    #[derive(Parser)]
    struct Main {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Netsim(NetsimArgs),
    }

    #[test]
    fn long_help_of_the_subcommand_explains_spec() {
        let err = Main::try_parse_from(["meridian", "netsim", "--help"])
            .err()
            .expect("--help exits");
        let help = err.to_string();
        assert!(help.contains("SPEC is a comma-separated list"), "{help}");
        assert!(help.contains("--upstream <ADDR>"), "{help}");
    }

    fn parse(argv: &[&str]) -> Result<NetsimArgs, clap::Error> {
        let base = [
            "netsim",
            "--listen",
            "127.0.0.1:4000",
            "--upstream",
            "127.0.0.1:5000",
        ];
        Cli::try_parse_from(base.iter().chain(argv)).map(|c| c.args)
    }

    #[test]
    fn both_applies_unless_overridden() {
        let args = parse(&["--both", "delay=30ms", "--up", "loss=5%"]).expect("parses");
        let cfg = args.proxy_config();
        assert_eq!(cfg.up.to_string(), "loss=5%");
        assert_eq!(cfg.down.to_string(), "delay=30ms");
        assert_eq!(cfg.seed, 1);
        let args = parse(&[]).expect("parses");
        assert!(args.proxy_config().up.is_perfect());
    }

    #[test]
    fn bad_spec_is_a_clear_argument_error() {
        let err = parse(&["--down", "loss=150%"]).expect_err("rejected");
        let text = err.to_string();
        assert!(text.contains("--down"), "{text}");
        assert!(text.contains("invalid value `150%` for `loss`"), "{text}");
    }

    #[tokio::test]
    async fn bind_failure_is_reported_with_the_address() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let listen = taken.local_addr().expect("addr");
        let args = NetsimArgs {
            listen,
            upstream: "127.0.0.1:9".parse().expect("addr"),
            up: None,
            down: None,
            both: None,
            seed: 1,
        };
        let err = run(args).await.expect_err("address in use");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot start the netsim proxy on {listen}")),
            "{text}"
        );
    }
}
