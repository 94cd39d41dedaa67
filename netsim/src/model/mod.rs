//! The sans-IO impairment model: a [`LinkConfig`] (with its compact text
//! spec) and a [`Link`] that applies it to packets on a caller-driven clock.
//! No tokio, no sockets, no `Instant::now()`.

mod config;
mod link;
mod spec;

pub use config::{
    GilbertElliott, JitterDist, LinkConfig, QueueLimit, RateLimit, DEFAULT_QUEUE,
    DEFAULT_REORDER_HOLD,
};
pub use link::{Link, LinkStats, MAX_DELAY, MAX_IN_FLIGHT};
pub use spec::SpecError;
