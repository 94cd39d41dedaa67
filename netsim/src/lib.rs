//! Network impairment: a seeded, sans-IO link model and a UDP proxy built on it.
//!
//! The kernel here has no netem, so every lossy-network test and benchmark
//! gets its links from this crate:
//!
//! - [`model`] (always built, no tokio): a [`LinkConfig`] says what a link
//!   does — random and Gilbert–Elliott loss, delay, bounded jitter,
//!   reordering, duplication, a rate cap with a drop-tail queue — and a
//!   [`Link`] applies it to packets on a clock the caller passes in. The same
//!   seed, configuration and pushes give the same deliveries on every
//!   platform (ChaCha8 and integer time arithmetic).
//! - `proxy` (feature `proxy`, on by default): [`Proxy`] puts a `Link` in each
//!   direction of every client flow between real UDP sockets, and
//!   [`NetsimArgs`] / [`run`] are `meridian netsim`.
//!
//! A link in text form (`FromStr`/`Display`), e.g.
//! `loss=1%,delay=30ms,jitter=5ms,reorder=1%,dup=0.5%,rate=2mbit,queue=200ms`
//! or `ge=p:5%/r:50%/k:0%/h:100%` or the preset `burst`; the grammar is on
//! [`LinkConfig`]'s `FromStr` impl.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use meridian_netsim::{Link, LinkConfig};
//!
//! let cfg: LinkConfig = "delay=30ms,loss=0%".parse()?;
//! let mut link = Link::new(cfg, 42);
//! let t0 = Instant::now();
//! link.push(t0, 1200, "hello");
//! assert_eq!(link.poll(t0), None);
//! assert_eq!(link.poll_timeout(), Some(t0 + Duration::from_millis(30)));
//! assert_eq!(link.poll(t0 + Duration::from_millis(30)), Some("hello"));
//! # Ok::<(), meridian_netsim::SpecError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod model;
#[cfg(feature = "proxy")]
pub mod proxy;

pub use model::{
    GilbertElliott, JitterDist, Link, LinkConfig, LinkStats, QueueLimit, RateLimit, SpecError,
};
#[cfg(feature = "proxy")]
pub use proxy::{run, NetsimArgs, NetsimError, Proxy, ProxyConfig, ProxyHandle, ProxyStats};
