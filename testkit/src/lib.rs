//! The pieces gridvfs's integration tests (`tests/all`) and its bench (`bench/`) both need,
//! written once: a real OpenSSH `sshd` to log in to ([`sshd`]), loopback ports and a TCP
//! relay whose connections can be cut ([`net`]), the AUTH_SYS credential an NFS client sends
//! ([`nfs`]), deterministic test data ([`data`]) and a real Squid (or nginx) as a site
//! cache tier ([`squid`], [`nginx`]).
//!
//! Errors are `anyhow` (callers are tests and a benchmark binary, never the library).

pub mod data;
pub mod net;
pub mod nfs;
pub mod nginx;
pub mod squid;
pub mod sshd;
