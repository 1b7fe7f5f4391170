//! Byte transports to a `gridvfs-server`: anything that carries its stdin and stdout.
//!
//! - `ssh://[user@]host[:port]/path` or `[user@]host:path`: log in to the store's ordinary
//!   OpenSSH server (or `gridvfs-server listen`) with the russh client ([`ssh`]) and run
//!   `gridvfs-server serve --stdio --export PATH` on an exec channel, as sshfs and rsync do;
//!   with `--ssh-command`, the system `ssh` binary carries the same bytes instead.
//! - `local:/dir` spawns `gridvfs-server serve --stdio --export /dir` on this machine.
//! - `exec:COMMAND` runs `sh -c COMMAND`, whose stdin/stdout must speak the protocol (how
//!   tests and the bench put a tunnel through a relay).
//!
//! Whatever the transport, the store's stderr reaches the client's log line by line and
//! its exit status is kept ([`Exit`]), so a failed start says why (e.g. exit 127: no
//! `gridvfs-server` on the store) instead of "connection closed".

pub mod memory;
mod process;
pub mod ssh;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};

pub use ssh::{SshOptions, SshTarget};

use crate::error::{Error, Result};

/// Where the server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// Log in over SSH and run the server there.
    Ssh { target: SshTarget, opts: SshOptions },
    /// Spawn the server binary on this machine for the export at this path.
    Local { export: PathBuf, read_only: bool },
    /// Run a shell command that speaks the protocol on stdin/stdout.
    Exec { command: String },
    /// A store in this process behind a fault plan (tests; see [`memory`]).
    Memory(memory::MemoryStore),
}

impl Remote {
    /// Which store this names, as one line (the store path, not how it is reached): kept
    /// beside each export's cache so a cache left behind by a changed export id is found.
    pub fn store_key(&self) -> String {
        match self {
            Self::Ssh { target, .. } => format!(
                "ssh://{}{}:{}/{}",
                target
                    .user
                    .as_deref()
                    .map(|u| format!("{u}@"))
                    .unwrap_or_default(),
                target.host,
                target.port,
                target.path.trim_start_matches('/')
            ),
            Self::Local { export, .. } => format!("local:{}", export.display()),
            Self::Exec { command } => format!("exec:{command}"),
            Self::Memory(m) => format!("memory:{}", m.export.id()),
        }
    }

    /// Parse `ssh://…`, `[user@]host:path`, `local:/path` or `exec:COMMAND`.
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
            Ok(Self::Ssh {
                target: SshTarget::parse(s)?,
                opts: SshOptions::default(),
            })
        }
    }

    /// Ask the server to refuse writes (for transports that start it).
    pub fn set_read_only(&mut self, ro: bool) {
        match self {
            Self::Local { read_only, .. } => *read_only = ro,
            Self::Ssh { opts, .. } => opts.read_only = ro,
            Self::Exec { .. } | Self::Memory(_) => {}
        }
    }
}

/// How the store's side of a connection ended.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    /// What was run on the store, for messages.
    pub command: String,
    /// Exit status, if the store reported one (a signal or a dropped link gives none).
    pub status: Option<i32>,
    /// The last lines the store wrote to stderr.
    pub stderr: Vec<String>,
    /// Why the transport ended, when it was not the command exiting (e.g. "link dropped").
    pub reason: Option<String>,
}

impl Exit {
    /// One line for the user: what failed, and what to do when we know.
    pub fn describe(&self) -> String {
        let tail = if self.stderr.is_empty() {
            String::new()
        } else {
            format!(": {}", self.stderr.join(" | "))
        };
        match (self.status, &self.reason) {
            (Some(127), _) => format!(
                "`{}` was not found on the store (exit status 127{tail}); install gridvfs-server there or pass --server-command",
                self.command
            ),
            (Some(code), _) => format!("`{}` exited with status {code}{tail}", self.command),
            (None, Some(why)) => format!("`{}` ended: {why}{tail}", self.command),
            (None, None) => format!("`{}` ended without an exit status{tail}", self.command),
        }
    }
}

/// Lines of stderr kept for [`Exit::stderr`].
const STDERR_TAIL: usize = 8;

/// Collects the store's stderr: each line goes to the log at once, the last few are kept.
#[derive(Clone, Default)]
pub(crate) struct StderrTail {
    partial: Arc<Mutex<(Vec<u8>, VecDeque<String>)>>,
}

impl StderrTail {
    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut g = self.partial.lock().expect("stderr lock");
        let (partial, lines) = &mut *g;
        partial.extend_from_slice(bytes);
        while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            tracing::warn!(target: "gridvfs::store", "store: {line}");
            if lines.len() == STDERR_TAIL {
                lines.pop_front();
            }
            lines.push_back(line);
        }
        // A line with no end is cut at 4 KiB rather than growing without bound.
        if partial.len() > 4096 {
            partial.push(b'\n');
            drop(g);
            self.push(&[]);
        }
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.push(b"\n"); // whatever is left without a newline
        self.partial
            .lock()
            .expect("stderr lock")
            .1
            .iter()
            .cloned()
            .collect()
    }
}

/// A running transport: write requests to `input`, read replies from `output`.
pub struct Connection {
    pub input: Box<dyn AsyncWrite + Send + Unpin>,
    pub output: Box<dyn AsyncRead + Send + Unpin>,
    /// Becomes `Some` once the store's side has ended.
    pub exit: watch::Receiver<Option<Exit>>,
    /// Dropping (or firing) it stops the transport: kills the child, closes the SSH link.
    pub stop: oneshot::Sender<()>,
}

impl Connection {
    /// Wait up to `wait` for the store's side to end and say how it did.
    pub async fn exit_report(
        exit: &mut watch::Receiver<Option<Exit>>,
        wait: std::time::Duration,
    ) -> Option<Exit> {
        let _ = tokio::time::timeout(wait, exit.wait_for(|e| e.is_some())).await;
        exit.borrow().clone()
    }
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
pub async fn connect(remote: &Remote) -> Result<Connection> {
    match remote {
        Remote::Local { export, read_only } => {
            let bin = server_binary();
            let mut args = vec![
                "serve".to_string(),
                "--stdio".into(),
                "--export".into(),
                export.to_string_lossy().into_owned(),
            ];
            if *read_only {
                args.push("--read-only".into());
            }
            process::spawn(bin.as_os_str(), &args)
        }
        Remote::Exec { command } => process::spawn("sh".as_ref(), &["-c".into(), command.clone()]),
        Remote::Memory(store) => memory::connect(store),
        Remote::Ssh { target, opts } => {
            let command = opts.server_command_line(&target.path);
            match &opts.ssh_command {
                Some(ssh) => {
                    let mut argv = shell_words::split(ssh)
                        .map_err(|e| Error::Config(format!("--ssh-command {ssh:?}: {e}")))?;
                    if argv.is_empty() {
                        return Err(Error::Config("--ssh-command is empty".into()));
                    }
                    let prog = argv.remove(0);
                    // `… -- host command`: ssh_args ends the options before the host.
                    argv.extend(target.ssh_args());
                    argv.push(command);
                    process::spawn(prog.as_ref(), &argv)
                }
                None => ssh::connect(target, opts, command).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_remote_form() {
        let r = Remote::parse("ssh://alice@store.example:2222/srv/images").unwrap();
        let Remote::Ssh { target, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(target.user.as_deref(), Some("alice"));
        assert_eq!(target.host, "store.example");
        assert_eq!(target.port, 22_22);
        assert_eq!(target.path, "/srv/images");

        let Remote::Ssh { target, .. } = Remote::parse("bob@10.0.0.5:images/vm1").unwrap() else {
            panic!()
        };
        assert_eq!(target.user.as_deref(), Some("bob"));
        assert_eq!((target.host.as_str(), target.port), ("10.0.0.5", 22));
        assert_eq!(target.path, "images/vm1");

        let Remote::Ssh { target, .. } = Remote::parse("ssh://[::1]:2200/x").unwrap() else {
            panic!()
        };
        assert_eq!((target.host.as_str(), target.port), ("::1", 2200));

        assert!(matches!(
            Remote::parse("local:/x").unwrap(),
            Remote::Local { .. }
        ));
        assert!(matches!(
            Remote::parse("exec:cat").unwrap(),
            Remote::Exec { .. }
        ));
        for bad in [
            "",
            "local:",
            "exec: ",
            "ssh://",
            "ssh://host",
            "host",
            "ssh://h:notaport/x",
            "h:",
        ] {
            assert!(Remote::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn exit_reports_say_what_to_do() {
        let e = Exit {
            command: "gridvfs-server serve --stdio --export /x".into(),
            status: Some(127),
            stderr: vec!["sh: 1: gridvfs-server: not found".into()],
            reason: None,
        };
        let d = e.describe();
        assert!(
            d.contains("was not found on the store") && d.contains("--server-command"),
            "{d}"
        );
        assert!(d.contains("not found"), "{d}");
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let t = StderrTail::default();
        for i in 0..20 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(b"no newline");
        let lines = t.lines();
        assert_eq!(lines.len(), STDERR_TAIL);
        assert_eq!(lines.last().unwrap(), "no newline");
        assert_eq!(lines[0], "line 13");
    }
}
