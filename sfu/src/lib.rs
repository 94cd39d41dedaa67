//! Meridian's media plane.
//!
//! `core` is sans-IO: it never reads a clock or touches a socket; every input
//! carries `now`, and output is drained with `poll_output`. `io` is the tokio
//! shell that owns the UDP socket and the timers and drives the core.

pub mod core;
pub mod io;
#[doc(hidden)]
pub mod sim;
