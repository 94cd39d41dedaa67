//! Meridian's signaling: the WebSocket protocol, WHIP/WHEP, access tokens,
//! and the HTTP server that also serves the web demo.
//!
//! Signaling never touches media: it turns client messages into commands for
//! the media worker (`meridian_sfu::io::NodeHandle`) and the worker's peer
//! events back into messages.

pub mod auth;
pub mod procstat;
pub mod protocol;
mod ratelimit;
pub mod server;
mod whip;
mod ws;

pub use server::{serve, ServerConfig, ServerError};
