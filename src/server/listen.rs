//! `gridvfs-server listen`: an SSH server of our own, for stores that want a dedicated
//! daemon rather than accounts in the system's sshd.
//!
//! Public keys only, checked against an authorized_keys file whose lines confine each key
//! to one export and optionally to reading ([`keys`](super::keys)); the file is read
//! again for every connection, so a new session key works without a restart. A client
//! runs `gridvfs-server serve --stdio --export DIR` on an exec channel, exactly as under
//! sshd; here the command is not run but parsed, and the protocol is served in-process
//! if the key was granted that export. Anything else is refused with a message on the
//! channel's stderr and exit status 1, which the client shows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Server as _, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, cipher};
use tokio::io::BufWriter;

use super::keys::{Grant, grants_for, parse_authorized_keys};
use super::{Export, serve};
use crate::error::{Error, Result};

/// Where to listen, with which host key, for which keys.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: std::net::SocketAddr,
    /// Created (Ed25519) if it does not exist.
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
}

/// Load the host key, or make one the first time (as sshd-keygen does).
fn host_key(path: &Path) -> Result<russh::keys::PrivateKey> {
    if !path.exists() {
        let private =
            super::keys::openssh_private(&super::keys::new_key("gridvfs-server host key")?)?;
        let mut f = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(f.write(true).create_new(true), 0o600);
        std::io::Write::write_all(&mut f.open(path)?, private.as_bytes())?;
        tracing::warn!("created host key {}", path.display());
    }
    russh::keys::load_secret_key(path, None)
        .map_err(|e| Error::Config(format!("host key {}: {e}", path.display())))
}

fn load_grants(path: &Path) -> Result<Vec<Grant>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("authorized keys {}: {e}", path.display())))?;
    parse_authorized_keys(&text)
}

/// Serve until the process is stopped.
pub async fn listen(cfg: ListenConfig) -> Result<()> {
    let key = host_key(&cfg.host_key)?;
    // Fail at start, not at the first login, if the file is wrong.
    let grants = load_grants(&cfg.authorized_keys)?;
    tracing::warn!(
        "gridvfs-server listening on {} (host key {}), {} authorized key line(s)",
        cfg.addr,
        key.public_key().fingerprint(HashAlg::Sha256),
        grants.len()
    );
    let config = russh::server::Config {
        keys: vec![key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        window_size: crate::tunnel::ssh::WINDOW,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
                cipher::CHACHA20_POLY1305,
                cipher::AES_256_CTR,
            ]),
            ..russh::Preferred::DEFAULT
        },
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keepalive_interval: Some(Duration::from_secs(15)),
        nodelay: true,
        ..Default::default()
    };
    let socket = tokio::net::TcpListener::bind(cfg.addr).await?;
    let mut server = Listener {
        authorized_keys: cfg.authorized_keys,
        sessions: Arc::default(),
    };
    let config = Arc::new(config);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Our own accept loop, not russh's run_on_socket, which returns (ending the daemon)
    // on the first failed accept (EMFILE under a connection flood).
    loop {
        let (sock, peer) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed (retrying): {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!("{peer}: refused, {MAX_CONNECTIONS} connections already open");
            continue;
        };
        let (authed_tx, authed_rx) = tokio::sync::oneshot::channel();
        let mut handler = server.new_client(Some(peer));
        handler.authed = Some(authed_tx);
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = sock.set_nodelay(true);
            // OpenSSH's LoginGraceTime: a connection that has not logged in by then is
            // closed, so idle or slow handshakes cannot hold slots for ever.
            let grace = async {
                if let Ok(Ok(())) = tokio::time::timeout(LOGIN_GRACE, authed_rx).await {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                r = async {
                    match russh::server::run_stream(config, sock, handler).await {
                        Ok(session) => session.await,
                        Err(e) => Err(e),
                    }
                } => {
                    if let Err(e) = r {
                        tracing::debug!("{peer}: connection ended: {e}");
                    }
                }
                () = grace => tracing::info!("{peer}: no login within {LOGIN_GRACE:?}; closed"),
            }
        });
    }
}

/// Connections open at once, logged in or not (OpenSSH's MaxStartups covers only the
/// latter; a gridvfs store has a handful of VM hosts, not thousands).
const MAX_CONNECTIONS: usize = 256;
/// Time to log in (OpenSSH's LoginGraceTime defaults to 120 s).
const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Sessions (exec channels) per connection (OpenSSH's MaxSessions is 10).
const MAX_CHANNELS_PER_CONNECTION: usize = 10;
/// Sessions one key may hold at once over all its connections.
const MAX_SESSIONS_PER_KEY: usize = 32;
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Listener {
    authorized_keys: PathBuf,
    /// Sessions being served, per key fingerprint.
    sessions: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One session counted against its key while it lives.
struct SessionSlot {
    sessions: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    key: String,
}

impl SessionSlot {
    fn take(sessions: &Arc<std::sync::Mutex<HashMap<String, usize>>>, key: &str) -> Option<Self> {
        let mut map = sessions.lock().expect("sessions lock");
        let n = map.entry(key.to_string()).or_insert(0);
        if *n >= MAX_SESSIONS_PER_KEY {
            return None;
        }
        *n += 1;
        Some(Self {
            sessions: sessions.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut map = self.sessions.lock().expect("sessions lock");
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl russh::server::Server for Listener {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Connection {
        // Read again for every connection. A line broken since the start (a removed
        // export, a typo) is left out with an error; the other keys keep working.
        let grants = match std::fs::read_to_string(&self.authorized_keys) {
            Ok(text) => {
                let (grants, errors) = super::keys::parse_authorized_keys_lenient(&text);
                for e in errors {
                    tracing::error!("{e}; that line grants nothing");
                }
                grants
            }
            Err(e) => {
                tracing::error!(
                    "authorized keys {}: {e}; refusing every key until it is fixed",
                    self.authorized_keys.display()
                );
                Vec::new()
            }
        };
        Connection {
            peer,
            grants,
            granted: Vec::new(),
            channels: HashMap::new(),
            authed: None,
            key: None,
            sessions: self.sessions.clone(),
            serving: Arc::default(),
        }
    }
}

/// One client connection.
struct Connection {
    peer: Option<std::net::SocketAddr>,
    grants: Vec<Grant>,
    /// What the authenticated key may reach.
    granted: Vec<Grant>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Told once the key is accepted (ends the login grace timer).
    authed: Option<tokio::sync::oneshot::Sender<()>>,
    /// The accepted key's fingerprint.
    key: Option<String>,
    sessions: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Sessions of this connection being served now.
    serving: Arc<std::sync::atomic::AtomicUsize>,
}

/// What an exec request asks for: `… serve --stdio --export DIR [--read-only]`.
pub(crate) fn requested_export(command: &[u8]) -> std::result::Result<(PathBuf, bool), String> {
    let text = std::str::from_utf8(command).map_err(|_| "command is not UTF-8".to_string())?;
    let words = shell_words::split(text).map_err(|e| format!("cannot parse `{text}`: {e}"))?;
    let usage = || {
        format!(
            "this server only runs `gridvfs-server serve --stdio --export DIR [--read-only]`, not `{text}`"
        )
    };
    let mut args = words.iter().skip(1).map(String::as_str);
    if args.next() != Some("serve") {
        return Err(usage());
    }
    let (mut export, mut read_only) = (None, false);
    while let Some(a) = args.next() {
        match a {
            "--stdio" => {}
            "--read-only" => read_only = true,
            // One `--export DIR`, DIR neither empty nor an option (`--export --read-only`
            // forgot the directory): both found by fuzzing.
            "--export" => match args.next() {
                Some(dir) if export.is_none() && !dir.is_empty() && !dir.starts_with('-') => {
                    export = Some(PathBuf::from(dir))
                }
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        }
    }
    Ok((export.ok_or_else(usage)?, read_only))
}

impl Connection {
    fn auth(&mut self, user: &str, key: &PublicKey) -> Auth {
        let granted: Vec<Grant> = grants_for(&self.grants, key).into_iter().cloned().collect();
        if granted.is_empty() {
            tracing::info!(
                "{:?}: refused key {} for {user}",
                self.peer,
                key.fingerprint(HashAlg::Sha256)
            );
            return Auth::reject();
        }
        self.granted = granted;
        self.key = Some(key.fingerprint(HashAlg::Sha256).to_string());
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Auth::Accept
    }

    /// The grant for the export `command` asks for, or why there is none: the path, its
    /// directory's (device, inode), and whether the session is read-only.
    fn authorize(
        &self,
        command: &[u8],
    ) -> std::result::Result<(PathBuf, (u64, u64), bool), String> {
        let (path, ro) = requested_export(command)?;
        let canonical =
            std::fs::canonicalize(&path).map_err(|e| format!("export {}: {e}", path.display()))?;
        let lines: Vec<&Grant> = self
            .granted
            .iter()
            .filter(|g| g.export == canonical)
            .collect();
        match lines.first() {
            // The same key listed twice for one export: the more restrictive line holds.
            Some(g) => Ok((canonical, g.dir_id, ro || lines.iter().any(|g| g.read_only))),
            None => Err(format!(
                "this key may not reach {} (it is granted: {})",
                path.display(),
                self.granted
                    .iter()
                    .map(|g| g.export.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        Ok(if grants_for(&self.grants, offer.public_key).is_empty() {
            Auth::reject()
        } else {
            let _ = user;
            Auth::Accept
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        Ok(self.auth(user, key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let open = self.channels.len() + self.serving.load(std::sync::atomic::Ordering::SeqCst);
        if open >= MAX_CHANNELS_PER_CONNECTION {
            tracing::info!("{:?}: refused a channel: {open} open", self.peer);
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        command: &[u8],
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let handle = session.handle();
        let slot = self
            .key
            .as_deref()
            .and_then(|k| SessionSlot::take(&self.sessions, k));
        let grant = match slot {
            Some(_) => self.authorize(command),
            None => Err(format!(
                "this key already holds {MAX_SESSIONS_PER_KEY} sessions; close some first"
            )),
        };
        let peer = self.peer;
        let serving = self.serving.clone();
        serving.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let _slot = slot;
            let status = match grant {
                Err(why) => {
                    tracing::info!("{peer:?}: {why}");
                    let _ = handle
                        .extended_data(id, 1, format!("gridvfs-server: {why}\n").into_bytes())
                        .await;
                    1
                }
                Ok((export, dir_id, read_only)) => {
                    match Export::open(&export, read_only).and_then(|exp| {
                        // The directory granted, not whatever a path swap put there since.
                        let st = rustix::fs::fstat(exp.root_fd())?;
                        if (st.st_dev, st.st_ino) == dir_id {
                            Ok(exp)
                        } else {
                            Err(std::io::Error::other(
                                "it is not the directory the key was granted (replaced since?)",
                            ))
                        }
                    }) {
                        Err(e) => {
                            let _ = handle
                                .extended_data(
                                    id,
                                    1,
                                    format!(
                                        "gridvfs-server: cannot open export {}: {e}\n",
                                        export.display()
                                    )
                                    .into_bytes(),
                                )
                                .await;
                            1
                        }
                        Ok(exp) => {
                            tracing::info!(
                                "{peer:?}: serving {}{}",
                                export.display(),
                                if read_only { " read-only" } else { "" }
                            );
                            let (rd, wr) = tokio::io::split(channel.into_stream());
                            match serve(Arc::new(exp), rd, BufWriter::with_capacity(64 << 10, wr))
                                .await
                            {
                                Ok(()) => 0,
                                Err(e) => {
                                    tracing::info!("{peer:?}: session ended: {e}");
                                    1
                                }
                            }
                        }
                    }
                }
            };
            let _ = handle.exit_status_request(id, status).await;
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
            serving.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_serve_command_only() {
        assert_eq!(
            requested_export(b"gridvfs-server serve --stdio --export '/srv/vm images' --read-only"),
            Ok((PathBuf::from("/srv/vm images"), true))
        );
        assert_eq!(
            requested_export(b"/opt/bin/gridvfs-server serve --export /x --stdio"),
            Ok((PathBuf::from("/x"), false))
        );
        for bad in [
            &b"sh -c id"[..],
            b"gridvfs-server serve --stdio",
            b"x serve --export /x --evil",
            b"\xff",
            b"gridvfs-server serve --stdio --export --read-only",
            b"gridvfs-server serve --export --read-only --export /x",
            b"gridvfs-server serve --export /a --export /b",
            // Fuzzing found this accepted, with an empty export path.
            br#"v;iv'''''''iv'''%'''''iv'''rver se''rve --stdio --export ''''''''"#,
            b"gridvfs-server serve --stdio --export --read-only",
            // Fuzzing found this accepted, with an empty export path.
            br#"v;iv'''''''iv'''%'''''iv'''rver se''rve --stdio --export ''''''''"#,
        ] {
            assert!(requested_export(bad).is_err(), "{bad:?}");
        }
    }
}
