//! Byte transports to a `gridvfs-server`: anything with a stdin and a stdout.
//!
//! `local:/dir` spawns `gridvfs-server serve --stdio --export /dir`; `exec:COMMAND` runs
//! `sh -c COMMAND`, whose stdin/stdout must speak the protocol (as rsync's `-e` and sshfs's
//! `ssh_command`): that is how tests and the bench put the tunnel through a relay. The
//! child's stderr is inherited, so the server's messages reach the client's log.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::{Error, Result};

/// Where the server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// Spawn the server binary on this machine for the export at this path.
    Local { export: PathBuf, read_only: bool },
    /// Run a shell command that speaks the protocol on stdin/stdout.
    Exec { command: String },
}

impl Remote {
    /// Parse `local:/path` or `exec:COMMAND`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(Error::BadRemote(s.to_string()));
            }
            Ok(Self::Local {
                export: PathBuf::from(path),
                read_only: false,
            })
        } else if let Some(cmd) = s.strip_prefix("exec:") {
            if cmd.trim().is_empty() {
                return Err(Error::BadRemote(s.to_string()));
            }
            Ok(Self::Exec {
                command: cmd.to_string(),
            })
        } else {
            Err(Error::BadRemote(s.to_string()))
        }
    }
}

/// A running transport: write requests to `input`, read replies from `output`.
pub struct Connection {
    pub input: ChildStdin,
    pub output: ChildStdout,
    /// Kept so the child is killed when the connection is dropped.
    pub child: Child,
}

/// The `gridvfs-server` binary to spawn for `local:`: `$GRIDVFS_SERVER`, else the one next
/// to this executable (cargo puts both binaries in one directory), else `$PATH`.
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GRIDVFS_SERVER") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let cand = dir.join("gridvfs-server");
            if cand.is_file() {
                return cand;
            }
        }
    }
    PathBuf::from("gridvfs-server")
}

/// Start the transport.
pub fn connect(remote: &Remote) -> Result<Connection> {
    let (mut cmd, shown) = match remote {
        Remote::Local { export, read_only } => {
            let bin = server_binary();
            let mut c = Command::new(&bin);
            c.arg("serve").arg("--stdio").arg("--export").arg(export);
            if *read_only {
                c.arg("--read-only");
            }
            (
                c,
                format!(
                    "{} serve --stdio --export {}",
                    bin.display(),
                    export.display()
                ),
            )
        }
        Remote::Exec { command } => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(command);
            (c, command.clone())
        }
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: shown,
        source,
    })?;
    let input = child.stdin.take().expect("piped stdin");
    let output = child.stdout.take().expect("piped stdout");
    Ok(Connection {
        input,
        output,
        child,
    })
}
