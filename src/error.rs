//! The library's error type. NFS and SSH types never appear here: the NFS front maps
//! [`Error`] to `nfsstat3` at its edge.

use crate::proto::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store answered the request with a failure status.
    #[error("store refused: {0}")]
    Status(#[from] Status),
    /// The peer broke the protocol; the connection is closed.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("malformed frame: {0}")]
    Frame(#[from] crate::proto::codec::FrameError),
    /// The tunnel to the server is gone (server exited, SSH dropped).
    #[error("tunnel closed: {0}")]
    Disconnected(String),
    /// The store stopped answering (the session's watchdog gave up on it): the request
    /// may or may not have been carried out.
    #[error("store not answering: {0}")]
    Stalled(String),
    /// The store is unreachable and the client is serving from its cache: the request
    /// needs the store and was not sent. The NFS client is told to retry later (JUKEBOX).
    #[error("store offline for {0:?}: asked to retry later")]
    Offline(std::time::Duration),
    /// Offline for longer than `--offline-limit`: requests that need the store fail.
    #[error("store unreachable for {0:.0?}, longer than --offline-limit")]
    OfflineTooLong(std::time::Duration),
    /// The tunnel was found closed before the request was sent: safe to send again.
    #[error("tunnel closed before sending: {0}")]
    Unsent(String),
    #[error("cannot start the tunnel `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "bad remote `{0}`: expected ssh://[user@]host[:port]/path, [user@]host:path, local:/path or exec:COMMAND"
    )]
    BadRemote(String),
    /// The store's host key is unknown or changed: the SSH connection was refused.
    #[error("{0}")]
    HostKey(String),
    /// The store refused every key we offered.
    #[error("{0}")]
    Auth(String),
    /// The SSH layer failed (connection, key exchange, channel).
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("cache index: {0}")]
    Index(String),
    #[error("configuration: {0}")]
    Config(String),
    /// Write-back data the store refused for good is kept in the journal, not uploaded.
    #[error(
        "{entries} write-back entries ({bytes} bytes) were refused by the store and are kept in the journal; see `gridvfs-client status`, fix the store, and restart the client to retry them"
    )]
    WriteBackRefused { entries: u64, bytes: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True for failures of the link (not of the request, nor final refusals): another
    /// attempt on a new session may succeed. The remote retries exactly these, and treats
    /// every other failure to reconnect as final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Disconnected(_)
                | Self::Io(_)
                | Self::Unsent(_)
                | Self::Stalled(_)
                | Self::Ssh(_)
                | Self::Spawn { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
