//! gridvfs integration tests: real proxies (processes), real NFS clients, real files.
//!
//! Needs the workspace binaries built first: `cargo build --workspace && cargo test --workspace`.

/// The real sshd and the cuttable relay, shared with the bench.
use gridvfs_testkit::{net, sshd};

mod backpressure;
mod cache;
mod confinement;
mod guest;
mod harness;
mod hints;
mod libnfs;
mod mount_helper;
mod nfs_ops;
mod offline;
mod power_loss;
mod protocol;
mod restart;
mod security;
mod service;
mod site;
mod ssh;
mod writeback;
