//! gridvfs: VM memory state and disk images from a remote store, over a WAN, through two
//! user-level proxies (a Rust reimplementation of GVFS, Zhao/Zhang/Figueiredo, HPDC 2004).
//!
//! A request's path, and the modules in that order:
//!
//! ```text
//! kernel NFS client -> nfs/    NFSv3 front on loopback (RPC gate + VFS impl, file handles)
//!                   -> cache/  the data seam + SQLite index (namespace map, generation)
//!                   -> remote/ typed, pipelined requests over one tunnel
//!                   -> tunnel/ byte transports (russh client, system ssh, child process)
//!                   -> server/ dispatch + confined disk access beneath the export
//!                              (under sshd, or its own SSH listener with per-key exports)
//! ```
//!
//! Many hosts may take block payloads from a shared HTTP cache tier instead (`tier/`:
//! sealed blocks by id, a site process in front of the store, any cache in between).
//!
//! `proto/` defines the messages and framing both ends speak.

pub mod cache;
pub mod client;
pub mod control;
pub mod error;
pub mod frames;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod nfs;
pub mod process;
pub mod proto;
pub mod remote;
pub mod server;
pub mod tier;
pub mod tunnel;

pub use error::{Error, Result};
