//! The russh client transport: log in to the store's SSH server and run `gridvfs-server`
//! on an exec channel.
//!
//! Tuned as measured here (DESIGN §7): AES-GCM first (chacha20, russh's default, costs 2.4×
//! the CPU), a 16 MiB channel window (2 MiB halves throughput at 40 ms; ≥ 32 MiB made
//! sshd's CPU jump), no SSH compression (our packed reads compress already). The channel's
//! messages are pumped by one task that keeps stderr and the exit status, which russh's
//! channel stream would drop, and always drains data so one slow reader cannot stall the
//! connection.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, cipher};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{oneshot, watch};

use super::{Connection, Exit, StderrTail};
use crate::error::{Error, Result};

/// SSH channel window: bandwidth × delay of a fast WAN, and no more (see module doc).
pub const WINDOW: u32 = 16 << 20;
/// How long to wait for TCP connect + key exchange + login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who to log in as, where, and which export directory to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// The export directory on the store (relative paths are relative to the login's home).
    pub path: String,
}

impl SshTarget {
    /// `ssh://[user@]host[:port]/path` or sshfs's `[user@]host:path`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::BadRemote(s.to_string());
        let (user_host, port, path) = if let Some(rest) = s.strip_prefix("ssh://") {
            let slash = rest.find('/').ok_or_else(bad)?;
            let (authority, path) = rest.split_at(slash);
            let (uh, port) = split_port(authority).ok_or_else(bad)?;
            (uh, port, path.to_string())
        } else {
            // sshfs form: the first ':' outside [brackets] ends the host.
            let (uh, path) = match s.find('[') {
                Some(open) => {
                    let close = s[open..].find("]:").ok_or_else(bad)? + open;
                    (&s[..close + 1], &s[close + 2..])
                }
                None => s.split_once(':').ok_or_else(bad)?,
            };
            if uh.contains('/') {
                return Err(bad());
            }
            (uh, 22, path.to_string())
        };
        let (user, host) = match user_host.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err(bad()),
            None => (None, user_host),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.is_empty() {
            return Err(bad());
        }
        // A host or user starting with '-' would be an option to a system ssh (issue 11,
        // item 5): no real one does, so refuse it outright.
        if host.starts_with('-') || user.as_deref().is_some_and(|u| u.starts_with('-')) {
            return Err(bad());
        }
        Ok(Self {
            user,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// Arguments for the system `ssh` binary to reach this target.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut a = vec!["-p".to_string(), self.port.to_string()];
        if let Some(u) = &self.user {
            a.push("-l".into());
            a.push(u.clone());
        }
        // Options end before the destination, whatever it looks like.
        a.push("--".into());
        a.push(self.host.clone());
        a
    }

    fn host_port(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// `host[:port]`, `[v6]` or `[v6]:port` → (host, port).
fn split_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(end) = authority.rfind(']') {
        let port = match &authority[end + 1..] {
            "" => 22,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((&authority[..=end], port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((authority, 22)),
    }
}

/// How to log in and what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// Private keys to offer first (`-i`); then ssh-agent's, then `~/.ssh/id_*`.
    pub identities: Vec<PathBuf>,
    /// Default `~/.ssh/known_hosts` (and `/etc/ssh/ssh_known_hosts` is read too).
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing it (never a changed one).
    pub accept_new_host_key: bool,
    /// The server program on the store.
    pub server_command: String,
    /// Use this system ssh command line instead of russh (e.g. `ssh -F ~/.ssh/config`).
    pub ssh_command: Option<String>,
    pub read_only: bool,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            identities: Vec::new(),
            known_hosts: None,
            accept_new_host_key: false,
            server_command: "gridvfs-server".into(),
            ssh_command: None,
            read_only: false,
        }
    }
}

impl SshOptions {
    /// The command run on the store; the path is quoted for its shell.
    pub fn server_command_line(&self, path: &str) -> String {
        let mut c = format!(
            "{} serve --stdio --export {}",
            self.server_command,
            shell_words::quote(path)
        );
        if self.read_only {
            c.push_str(" --read-only");
        }
        c
    }

    fn known_hosts_file(&self) -> PathBuf {
        self.known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh").join("known_hosts"))
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The login name when the remote gives none: `$USER`, `$LOGNAME`, else from /etc/passwd.
fn local_user() -> Result<String> {
    for v in ["USER", "LOGNAME"] {
        if let Some(u) = std::env::var_os(v).filter(|u| !u.is_empty()) {
            return Ok(u.to_string_lossy().into_owned());
        }
    }
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid)
        .map(|f| f[0].to_string())
        .ok_or_else(|| Error::Config("no user name: give one as user@host".into()))
}

/// Checks the store's host key against known_hosts, as OpenSSH's
/// `StrictHostKeyChecking=yes` (or `accept-new` with `--accept-new-host-key`) would.
struct HostKeyCheck {
    target: SshTarget,
    file: PathBuf,
    accept_new: bool,
    /// Why the key was refused, for the error the user sees.
    refusal: Arc<Mutex<Option<String>>>,
}

impl HostKeyCheck {
    fn verdict(&self, key: &PublicKey) -> Result<(), String> {
        let (host, port) = (self.target.host.as_str(), self.target.port);
        let shown = self.target.host_port();
        let fp = key.fingerprint(HashAlg::Sha256);
        let alg = key.algorithm();
        let global = Path::new("/etc/ssh/ssh_known_hosts");
        // Key types the host is already known by, for the downgrade check below.
        let mut known_algs: Vec<String> = Vec::new();
        for file in [self.file.as_path(), global] {
            let known = russh::keys::known_hosts::known_host_keys_path(host, port, file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for (line, k) in known {
                if k.algorithm() != alg {
                    known_algs.push(format!(
                        "{} ({} line {line})",
                        k.algorithm(),
                        file.display()
                    ));
                    continue;
                }
                if &k == key {
                    return Ok(());
                }
                return Err(format!(
                    "the host key of {shown} has CHANGED: {} line {line} holds another {alg} key, the server presented {fp}. \
                     Someone may be intercepting the connection. If the store's key really changed, remove the old entry \
                     with `ssh-keygen -R '{shown}' -f {}` and connect again",
                    file.display(),
                    file.display()
                ));
            }
        }
        if !known_algs.is_empty() {
            // Known, but by another type of key: recording this one would let whoever
            // answers with a type we never saw (perhaps a weaker one) in. OpenSSH treats
            // it the same way. Refused even with --accept-new-host-key.
            return Err(format!(
                "the host key of {shown} has CHANGED type: the server presented {alg} {fp}, but the host is known by \
                 {}. Someone may be intercepting the connection. If the store really has a new key, check its \
                 fingerprint with the store's administrator, remove the old entry with `ssh-keygen -R '{shown}' -f {}`, \
                 and connect again",
                known_algs.join(", "),
                self.file.display()
            ));
        }
        if !self.accept_new {
            return Err(format!(
                "the host key of {shown} ({alg} {fp}) is not in {}. Check that fingerprint with the store's administrator \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there), then connect once with `ssh -p {port} {host}` to \
                 record it, or pass --accept-new-host-key",
                self.file.display()
            ));
        }
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        russh::keys::known_hosts::learn_known_hosts_path(host, port, key, &self.file)
            .map_err(|e| format!("cannot record the host key in {}: {e}", self.file.display()))?;
        tracing::warn!(
            "recorded the host key of {shown} ({alg} {fp}) in {}",
            self.file.display()
        );
        Ok(())
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verdict(&key.public_key()) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().expect("refusal lock") = Some(why);
                Ok(false)
            }
        }
    }
}

/// Host key algorithms to ask for: those already recorded for this host first, so a store
/// known by its RSA key is not refused for showing an Ed25519 one (as OpenSSH orders them).
fn preferred_host_keys(target: &SshTarget, file: &Path) -> Vec<russh::keys::Algorithm> {
    let mut algs: Vec<_> =
        russh::keys::known_hosts::known_host_keys_path(&target.host, target.port, file)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, k)| k.algorithm())
            .collect();
    for a in russh::Preferred::DEFAULT.key.iter() {
        let is_rsa = |x: &russh::keys::Algorithm| matches!(x, russh::keys::Algorithm::Rsa { .. });
        let known_rsa = is_rsa(a) && algs.iter().any(is_rsa);
        if !algs.contains(a) && !known_rsa {
            algs.push(a.clone());
        }
    }
    // A recorded RSA key appears as plain `ssh-rsa`: offer the SHA-2 signatures for it.
    let mut out = Vec::new();
    for a in algs {
        if matches!(a, russh::keys::Algorithm::Rsa { .. }) {
            for hash in [Some(HashAlg::Sha512), Some(HashAlg::Sha256), None] {
                let r = russh::keys::Algorithm::Rsa { hash };
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        } else if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn config(target: &SshTarget, known_hosts: &Path) -> client::Config {
    let preferred = russh::Preferred {
        cipher: Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::AES_128_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_128_CTR,
        ]),
        key: Cow::Owned(preferred_host_keys(target, known_hosts)),
        ..russh::Preferred::DEFAULT
    };
    client::Config {
        window_size: WINDOW,
        preferred,
        // A link that died silently (no FIN) is noticed within ~45 s; a cut one at once.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

/// Log in to `target` and run `command` on an exec channel.
pub async fn connect(target: &SshTarget, opts: &SshOptions, command: String) -> Result<Connection> {
    let user = match &target.user {
        Some(u) => u.clone(),
        None => local_user()?,
    };
    let known_hosts = opts.known_hosts_file();
    let refusal = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        target: target.clone(),
        file: known_hosts.clone(),
        accept_new: opts.accept_new_host_key,
        refusal: refusal.clone(),
    };
    let shown = format!("{user}@{}", target.host_port());
    let cfg = Arc::new(config(target, &known_hosts));
    let login = async {
        let mut handle =
            match client::connect(cfg, (target.host.as_str(), target.port), check).await {
                Ok(h) => h,
                Err(e) => {
                    return Err(match refusal.lock().expect("refusal lock").take() {
                        Some(why) => Error::HostKey(why),
                        None => Error::Disconnected(format!("cannot reach {shown}: {e}")),
                    });
                }
            };
        authenticate(&mut handle, &user, &shown, opts).await?;
        Ok(handle)
    };
    let handle = tokio::time::timeout(LOGIN_TIMEOUT, login)
        .await
        .map_err(|_| Error::Disconnected(format!("logging in to {shown} timed out")))??;
    let channel = handle.channel_open_session().await?;
    channel.exec(true, command.clone()).await?;
    tracing::debug!("{shown}: running `{command}`");
    let (mut rx, tx) = channel.split();
    // A duplex end reads EOF once the other is dropped (a simplex half would not).
    let (output, pipe) = tokio::io::duplex(4 << 20);
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let (exit_tx, exit) = watch::channel(None);
    let tail = StderrTail::default();
    tokio::spawn(async move {
        let mut status = None;
        let mut reason = None;
        let mut out = Some(pipe);
        loop {
            tokio::select! {
                msg = rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        if let Some(w) = out.as_mut()
                            && w.write_all(&data).await.is_err()
                        {
                            out = None; // our reader is gone; keep draining the channel
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => tail.push(&data),
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status as i32),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        reason = Some(format!("killed by signal {signal_name:?}"));
                    }
                    Some(ChannelMsg::Failure) => {
                        reason = Some("the store refused to run the command".into());
                        break;
                    }
                    Some(ChannelMsg::Eof) => out = None,
                    Some(ChannelMsg::Close) => break,
                    None => {
                        reason.get_or_insert_with(|| "the SSH connection was lost".into());
                        break;
                    }
                    Some(_) => {}
                },
                _ = &mut stop_rx => {
                    reason = Some("closed by the client".into());
                    break;
                }
            }
        }
        drop(out);
        let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
        let _ = exit_tx.send(Some(Exit {
            command,
            status,
            stderr: tail.lines(),
            reason,
        }));
    });
    Ok(Connection {
        input: Box::new(BufWriter::with_capacity(64 << 10, tx.make_writer())),
        output: Box::new(output),
        exit,
        stop,
    })
}

/// Offer keys until one is accepted: `-i` files, then ssh-agent's, then `~/.ssh/id_*`.
async fn authenticate(
    handle: &mut Handle<HostKeyCheck>,
    user: &str,
    shown: &str,
    opts: &SshOptions,
) -> Result<()> {
    let rsa_hash = handle.best_supported_rsa_hash().await?.flatten();
    let mut tried = Vec::new();
    for path in &opts.identities {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| {
            Error::Auth(format!(
                "cannot use identity {}: {e}{}",
                path.display(),
                if matches!(e, russh::keys::Error::KeyIsEncrypted) {
                    " (add it to ssh-agent instead)"
                } else {
                    ""
                }
            ))
        })?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        if handle.authenticate_publickey(user, key).await?.success() {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let key = id.public_key().into_owned();
                    match handle
                        .authenticate_publickey_with(user, key, rsa_hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => tracing::debug!("ssh-agent could not sign: {e}"),
                    }
                    tried.push(format!("agent key {}", id.comment()));
                }
            }
            Err(e) => tracing::debug!("no ssh-agent: {e}"),
        }
    }
    if opts.identities.is_empty() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = home().join(".ssh").join(name);
            if !path.exists() {
                continue;
            }
            let key = match russh::keys::load_secret_key(&path, None) {
                Ok(k) => k,
                Err(e) => {
                    tracing::info!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
            if handle.authenticate_publickey(user, key).await?.success() {
                return Ok(());
            }
            tried.push(path.display().to_string());
        }
    }
    Err(Error::Auth(if tried.is_empty() {
        format!(
            "no key to log in to {shown} with: pass -i KEY, start ssh-agent, or create ~/.ssh/id_ed25519"
        )
    } else {
        format!(
            "{shown} refused every key offered ({}); is the public key in the store's authorized_keys?",
            tried.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_command_quotes_the_path() {
        let o = SshOptions {
            read_only: true,
            ..Default::default()
        };
        assert_eq!(
            o.server_command_line("/srv/vm images/a'b"),
            "gridvfs-server serve --stdio --export '/srv/vm images/a'\\''b' --read-only"
        );
    }

    #[test]
    fn recorded_algorithms_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            "[store]:2222 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=\n",
        )
        .unwrap();
        let t = SshTarget::parse("ssh://store:2222/x").unwrap();
        let algs = preferred_host_keys(&t, &kh);
        assert!(
            matches!(algs[0], russh::keys::Algorithm::Ecdsa { .. }),
            "{algs:?}"
        );
        assert!(algs.contains(&russh::keys::Algorithm::Ed25519));
    }
}
