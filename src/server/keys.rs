//! Session keys for `gridvfs-server listen`: who may reach which export.
//!
//! The file is OpenSSH's authorized_keys format, so existing tooling reads it; each line
//! is a key with options. Two options make it a GVFS session key:
//!
//! ```text
//! export="/srv/images",read-only ssh-ed25519 AAAA… vm-host-7
//! ```
//!
//! `export="DIR"` is required: the key reaches that one directory and nothing else (the
//! same key may appear on several lines for several exports). `read-only` makes every
//! session of the key read-only whatever the client asks. OpenSSH's restriction options
//! (`restrict`, `no-pty`, …) are accepted and have nothing to restrict here; any other
//! option is an error, so a typo such as `readonly` never grants write access silently.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{LineEnding, PrivateKey};
use russh::keys::{HashAlg, PublicKey};

use crate::error::{Error, Result};

/// One authorized_keys line: a key and what it may reach.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key: PublicKey,
    /// Canonical path of the export directory.
    pub export: PathBuf,
    /// (device, inode) of that directory when the line was read: the directory a session
    /// opens must be this one, not whatever a path swap put there since.
    pub dir_id: (u64, u64),
    pub read_only: bool,
}

/// OpenSSH options with nothing to restrict in a server that only runs the protocol.
const HARMLESS: &[&str] = &[
    "restrict",
    "no-pty",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-X11-forwarding",
    "no-user-rc",
];

/// Parse an authorized_keys file's text; the first bad line is an error naming it.
pub fn parse_authorized_keys(text: &str) -> Result<Vec<Grant>> {
    let (grants, mut errors) = parse_authorized_keys_lenient(text);
    if errors.is_empty() {
        Ok(grants)
    } else {
        Err(errors.remove(0))
    }
}

/// Parse an authorized_keys file's text: the good lines' grants, and an error per bad
/// line (which grants nothing).
pub fn parse_authorized_keys_lenient(text: &str) -> (Vec<Grant>, Vec<Error>) {
    let (mut grants, mut errors) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(g)) => grants.push(g),
            Ok(None) => {}
            Err(why) => errors.push(Error::Config(format!(
                "authorized keys line {}: {why}",
                n + 1
            ))),
        }
    }
    (grants, errors)
}

/// One line: a grant, nothing (blank or comment), or why it is bad.
fn parse_line(line: &str) -> std::result::Result<Option<Grant>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (options, key_text) = split_options(line)?;
    let key = PublicKey::from_openssh(key_text).map_err(|e| format!("not a public key ({e})"))?;
    let (mut export, mut read_only) = (None, false);
    for (name, value) in options {
        match (name.as_str(), value) {
            ("export", Some(v)) => {
                let p = std::fs::canonicalize(&v).map_err(|e| format!("export {v:?}: {e}"))?;
                export = Some(p);
            }
            ("read-only", None) => read_only = true,
            (o, None) if HARMLESS.contains(&o) => {}
            (o, _) => {
                return Err(format!(
                    "unknown option `{o}` (known: export=\"DIR\", read-only, restrict, no-*)"
                ));
            }
        }
    }
    let export = export
        .ok_or("no export=\"DIR\" option: this server only accepts keys confined to an export")?;
    let meta =
        std::fs::metadata(&export).map_err(|e| format!("export {}: {e}", export.display()))?;
    if !meta.is_dir() {
        return Err(format!("export {} is not a directory", export.display()));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(Some(Grant {
        key,
        dir_id: (meta.dev(), meta.ino()),
        export,
        read_only,
    }))
}

/// Options of one line: name and value (`export="DIR"`) or name alone (`read-only`).
type Options = Vec<(String, Option<String>)>;

/// Split `opt1,opt2="v,x" ssh-ed25519 AAAA…` into options and the key text.
fn split_options(line: &str) -> std::result::Result<(Options, &str), String> {
    const KEY_TYPES: &[&str] = &["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"];
    if KEY_TYPES.iter().any(|t| line.starts_with(t)) {
        return Ok((Vec::new(), line));
    }
    let mut opts = Vec::new();
    let (mut name, mut value, mut in_value, mut quoted) =
        (String::new(), None::<String>, false, false);
    let mut chars = line.char_indices();
    let rest = loop {
        let Some((i, c)) = chars.next() else {
            return Err(if quoted {
                "unterminated quote in options".into()
            } else {
                "options but no key".into()
            });
        };
        match c {
            '"' if in_value => quoted = !quoted,
            '\\' if quoted => {
                if let Some((_, next)) = chars.next() {
                    value.get_or_insert_default().push(next);
                }
            }
            '=' if !in_value => {
                in_value = true;
                value = Some(String::new());
            }
            ',' | ' ' | '\t' if !quoted => {
                opts.push((std::mem::take(&mut name), value.take()));
                in_value = false;
                if c != ',' {
                    break line[i..].trim_start();
                }
            }
            c if in_value => value.get_or_insert_default().push(c),
            c => name.push(c),
        }
    };
    Ok((opts, rest))
}

/// The grants of `key` (the first line wins when it appears twice for one export).
pub fn grants_for<'a>(grants: &'a [Grant], key: &PublicKey) -> Vec<&'a Grant> {
    grants
        .iter()
        .filter(|g| g.key.key_data() == key.key_data())
        .collect()
}

/// A fresh Ed25519 key from the kernel's random source.
pub fn new_key(comment: &str) -> Result<PrivateKey> {
    let mut seed = [0u8; 32];
    let n = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| Error::Io(e.into()))?;
    if n != seed.len() {
        return Err(Error::Config("short read from getrandom".into()));
    }
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    Ok(key)
}

/// The private key in OpenSSH's file format.
pub fn openssh_private(key: &PrivateKey) -> Result<String> {
    Ok(key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Config(format!("cannot encode the key: {e}")))?
        .to_string())
}

/// A new session key: the private key in OpenSSH format and its authorized_keys line.
pub fn mint_session_key(export: &Path, read_only: bool, comment: &str) -> Result<(String, String)> {
    let export = std::fs::canonicalize(export)
        .map_err(|e| Error::Config(format!("export {}: {e}", export.display())))?;
    let key = new_key(comment)?;
    let private = openssh_private(&key)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Config(format!("cannot encode the key: {e}")))?;
    let path = export
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let line = format!(
        "export=\"{path}\"{} {public}",
        if read_only { ",read-only" } else { "" }
    );
    tracing::debug!("minted {}", key.public_key().fingerprint(HashAlg::Sha256));
    Ok((private, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_back_with_their_grant() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("vm \"images\", 2");
        std::fs::create_dir(&odd).unwrap();
        let (private, line) = mint_session_key(&odd, true, "host-7").unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let grants = parse_authorized_keys(&format!("# comment\n\n{line}\n")).unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].export, odd.canonicalize().unwrap());
        assert!(grants[0].read_only);
        let key = russh::keys::decode_secret_key(&private, None).unwrap();
        assert_eq!(grants_for(&grants, key.public_key()).len(), 1);
    }

    #[test]
    fn refuses_lines_that_would_grant_more_than_meant() {
        let dir = tempfile::tempdir().unwrap();
        let (_, line) = mint_session_key(dir.path(), false, "x").unwrap();
        let key = line.split_once(' ').unwrap().1;
        let d = dir.path().display();
        for (text, why) in [
            (key.to_string(), "no export"),
            (
                format!("export=\"{d}\",readonly {key}"),
                "unknown option `readonly`",
            ),
            (format!("export=\"{d}/missing\" {key}"), "missing"),
            (format!("export=\"{d} {key}"), "quote"),
            (
                format!("export=\"{d}\" ssh-ed25519 !!!"),
                "not a public key",
            ),
        ] {
            let e = parse_authorized_keys(&text).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("line 1"), "{text}: {e}");
        }
        let ok = parse_authorized_keys(&format!("restrict,export=\"{d}\",no-pty {key}")).unwrap();
        assert!(!ok[0].read_only);
    }
}
