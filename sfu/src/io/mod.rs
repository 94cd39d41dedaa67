//! The tokio shell around the sans-IO node: one worker owns the node and the
//! UDP socket, reads the clock, sleeps until the node's next timeout, and
//! takes commands from signaling over a bounded channel.

mod udp;
mod worker;

pub use udp::{GsoBatch, MediaSocket};

pub use worker::{
    spawn_node, Command, NodeHandle, PeerEvent, Recovery, Reply, SpawnError, PEER_EVENT_QUEUE,
};
