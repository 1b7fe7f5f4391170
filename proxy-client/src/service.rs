//! Running under systemd (`Type=notify`, `dist/systemd/gridvfs@.service`): readiness once
//! the NFS port is bound and the store answered (or the cache serves it offline), a
//! `STATUS=` line with the cache and link figures, watchdog pings from the runtime (a
//! wedged runtime stops them, and systemd restarts the unit), and at stop `STOPPING=1`
//! then `EXTEND_TIMEOUT_USEC` while write-back data drains. All of it is silent without
//! `$NOTIFY_SOCKET` (sd_notify's own rule), so the same binary runs in a terminal.

use std::sync::Arc;
use std::time::Duration;

use gridvfs::control::Sources;
use sd_notify::NotifyState;

/// How often the `STATUS=` line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How much more stop time each extension asks for while the drain makes progress.
const EXTEND_BY: Duration = Duration::from_secs(30);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Tell the service manager the client serves; start the status line and watchdog.
pub fn ready(sources: Arc<Sources>) {
    let status = status_line(&sources);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(STATUS_EVERY).await;
            send(&[NotifyState::Status(&status_line(&sources))]);
        }
    });
    if let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) {
        // At half the interval, as sd_watchdog_enabled(3) advises.
        let every = interval / 2;
        tokio::spawn(async move {
            loop {
                send(&[NotifyState::Watchdog]);
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// The client is shutting down (a real stop, not a restart of the store's link).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Ask for more stop time while the drain works, with where it is.
pub fn draining(pending_bytes: u64) {
    let status = format!(
        "stopping: uploading {:.1} MiB of write-back data to the store",
        pending_bytes as f64 / (1 << 20) as f64
    );
    send(&[
        NotifyState::ExtendTimeoutUsec(EXTEND_BY.as_micros() as u32),
        NotifyState::Status(&status),
    ]);
}

/// One line for `systemctl status`: online or offline, cache hits, what crossed the link,
/// write-back backlog.
fn status_line(s: &Sources) -> String {
    let st = s.snapshot();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let state = match st.offline_seconds {
        Some(secs) => format!("OFFLINE for {secs:.0} s, serving the cache"),
        None => "online".into(),
    };
    format!(
        "export {}: {state}; {} block hits, {} misses, {:.1} MiB fetched; link {:.1} MiB in, \
         {} reconnects; write-back {} entries ({:.1} MiB) pending",
        st.export_id,
        st.block_hits,
        st.block_misses,
        mib(st.bytes_fetched),
        mib(st.tunnel_bytes_received),
        st.reconnects,
        st.dirty_entries,
        mib(st.dirty_bytes)
    )
}
