//! A child process as the transport: `local:`, `exec:` and `--ssh-command`.

use std::ffi::OsStr;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use super::{Connection, Exit, StderrTail};
use crate::error::{Error, Result};

/// Spawn `prog args…` with piped stdio. The child is killed when the connection's `stop`
/// fires or is dropped; its exit status and stderr tail are published on `exit`.
pub(super) fn spawn(prog: &OsStr, args: &[String]) -> Result<Connection> {
    let shown = std::iter::once(prog.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: shown.clone(),
            source,
        })?;
    let input = child.stdin.take().expect("piped stdin");
    let output = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let tail = StderrTail::default();
    let reader_tail = tail.clone();
    let stderr_done = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            reader_tail.push(&buf[..n]);
        }
    });
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let (exit_tx, exit) = watch::channel(None);
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = &mut stop_rx => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        // The rest of stderr, but never wait on a grandchild that holds it open.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stderr_done).await;
        let _ = exit_tx.send(Some(Exit {
            command: shown,
            status: status.and_then(|s| s.code()),
            stderr: tail.lines(),
            reason: status
                .filter(|s| s.code().is_none())
                .map(|s| format!("killed ({s})")),
        }));
    });
    Ok(Connection {
        input: Box::new(input),
        output: Box::new(output),
        exit,
        stop,
    })
}
