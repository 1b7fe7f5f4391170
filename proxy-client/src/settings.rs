//! A client's settings, in layers, each overriding the one before:
//!
//! 1. built-in defaults;
//! 2. the config file's `[defaults]` table, then its `[mount.NAME]` table (`--name NAME`:
//!    the instance `gridvfs@NAME.service` and `mount.gridvfs` start), for
//!    `/etc/gridvfs/gridvfs.toml` (or `--config FILE`) and then each `conf.d/*.toml`
//!    beside it, in name order;
//! 3. `GRIDVFS_*` environment variables (`GRIDVFS_CACHE_SIZE=32G`);
//! 4. command-line flags (or `mount -o` options).
//!
//! The keys are the flags' names (`cache-size = "32G"`). figment keeps where each value
//! came from, for `config show --origin` and for errors that name the file and key. The
//! result is validated once, into a [`ClientConfig`]; nothing downstream re-checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use gridvfs::client::ClientConfig;
use gridvfs::tunnel::Remote;
use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/gridvfs/gridvfs.toml";
const ENV_PREFIX: &str = "GRIDVFS_";

/// Which config file and which of its mounts.
#[derive(clap::Args, Clone, Default, Debug)]
pub struct ConfigArgs {
    /// Config file (then `conf.d/*.toml` beside it) [default: $GRIDVFS_CONFIG, else
    /// /etc/gridvfs/gridvfs.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the config's `[mount.NAME]` table (over its `[defaults]`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offline {
    Cached,
    Wait,
    Fail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Through,
    Back,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    Off,
    Near,
    All,
}

/// Every setting, after the layers are merged. Field names are the keys (kebab-case).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(deserialize_with = "list")]
    pub identity: Vec<PathBuf>,
    pub known_hosts: String,
    pub accept_new_host_key: bool,
    pub server_command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    pub listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    pub attr_timeout: f64,
    pub reconnect_timeout: f64,
    pub offline: Offline,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_limit: Option<f64>,
    pub request_timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopt_export: Option<String>,
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portmapper: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    pub block_size: u64,
    #[serde(deserialize_with = "size")]
    pub cache_size: u64,
    pub write_policy: Policy,
    pub fill: Fill,
    #[serde(deserialize_with = "list")]
    pub block_source: Vec<String>,
    pub block_source_timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_profiles: Option<f64>,
    #[serde(deserialize_with = "list")]
    pub allow_clients: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub allow_uid: Vec<u32>,
    pub no_root_squash: bool,
    pub all_squash: bool,
    pub anonuid: u32,
    pub anongid: u32,
    pub allow_unprivileged_ports: bool,
    pub insecure: bool,
}

/// Every key a layer may set (the fields of [`Settings`]; a test keeps them equal).
pub const KEYS: &[&str] = &[
    "remote",
    "identity",
    "known-hosts",
    "accept-new-host-key",
    "server-command",
    "ssh-command",
    "listen",
    "cache-dir",
    "attr-timeout",
    "reconnect-timeout",
    "offline",
    "offline-limit",
    "request-timeout",
    "adopt-export",
    "read-only",
    "portmapper",
    "metrics-addr",
    "block-size",
    "cache-size",
    "write-policy",
    "fill",
    "block-source",
    "block-source-timeout",
    "site-listen",
    "site-url",
    "share-profiles",
    "allow-clients",
    "allow-uid",
    "no-root-squash",
    "all-squash",
    "anonuid",
    "anongid",
    "allow-unprivileged-ports",
    "insecure",
];

impl Default for Settings {
    fn default() -> Self {
        Self {
            remote: None,
            identity: Vec::new(),
            known_hosts: "~/.ssh/known_hosts".into(),
            accept_new_host_key: false,
            server_command: "gridvfs-server".into(),
            ssh_command: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 20490)),
            cache_dir: None,
            attr_timeout: 1.0,
            reconnect_timeout: 60.0,
            offline: Offline::Cached,
            offline_limit: None,
            request_timeout: 60.0,
            adopt_export: None,
            read_only: false,
            portmapper: None,
            metrics_addr: None,
            block_size: gridvfs::cache::DEFAULT_BLOCK_SIZE,
            cache_size: 16 << 30,
            write_policy: Policy::Through,
            fill: Fill::All,
            block_source: Vec::new(),
            block_source_timeout: 10.0,
            site_listen: None,
            site_url: None,
            share_profiles: None,
            allow_clients: Vec::new(),
            allow_uid: Vec::new(),
            no_root_squash: false,
            all_squash: false,
            anonuid: gridvfs::nfs::access::NOBODY,
            anongid: gridvfs::nfs::access::NOBODY,
            allow_unprivileged_ports: false,
            insecure: false,
        }
    }
}

/// `16G`, `512M`, `1073741824`: bytes, or with a K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.to_ascii_uppercase().chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 512M, 16G, 1073741824)"))
}

/// A size as a number of bytes or a string with a suffix (`cache-size = "32G"`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// A list as an array, one value, or a comma-separated string (`GRIDVFS_ALLOW_UID=0,64055`).
fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List<T> {
        Many(Vec<T>),
        Text(String),
        One(T),
    }
    match List::<T>::deserialize(d)? {
        List::Many(v) => Ok(v),
        List::One(v) => Ok(vec![v]),
        List::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| serde::de::Error::custom(format!("`{p}`: {e}")))
            })
            .collect(),
    }
}

/// A layer of values with a name of its own (figment names `Serialized` by its type).
struct Layer {
    name: String,
    values: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Where a value of the merged settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: PathBuf, table: String },
    Env(String),
    Given(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "built-in default"),
            Origin::File { path, table } => write!(f, "{} [{table}]", path.display()),
            Origin::Env(var) => write!(f, "environment {var}"),
            Origin::Given(how) => write!(f, "{how}"),
        }
    }
}

/// The merged layers of one client's settings.
pub struct Loaded {
    figment: Figment,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// The mount tables the files define.
    pub mounts: Vec<String>,
    name: Option<String>,
    /// For each file, the keys its `[mount.NAME]` table sets (to tell it from `[defaults]`).
    named_keys: BTreeMap<PathBuf, Vec<String>>,
    given_as: String,
}

/// The config files to read: the one named (which must exist) or the default (if it
/// exists), then `conf.d/*.toml` beside it in name order.
fn config_files(args: &ConfigArgs) -> anyhow::Result<Vec<PathBuf>> {
    let named = args
        .config
        .clone()
        .or_else(|| std::env::var_os("GRIDVFS_CONFIG").map(PathBuf::from));
    let main = match named {
        Some(p) => {
            anyhow::ensure!(
                p.is_file(),
                "config file {} does not exist (or is not a file)",
                p.display()
            );
            p
        }
        None => PathBuf::from(DEFAULT_CONFIG),
    };
    let mut files = Vec::new();
    if main.is_file() {
        files.push(main.clone());
    }
    let confd = main.parent().unwrap_or(Path::new("/")).join("conf.d");
    if let Ok(rd) = std::fs::read_dir(&confd) {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        more.sort();
        files.extend(more);
    }
    Ok(files)
}

/// The top level of a config file: only these two tables (a typo is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTop {
    #[serde(default)]
    #[allow(dead_code)]
    defaults: Option<Dict>,
    #[serde(default)]
    mount: BTreeMap<String, Dict>,
}

impl Loaded {
    /// Merge defaults < files < environment < `given` (flags or mount options, named
    /// `given_as` in origins, e.g. "flag").
    pub fn load(args: &ConfigArgs, given: Dict, given_as: &str) -> anyhow::Result<Self> {
        let files = config_files(args)?;
        let defaults = Figment::from(Layer {
            name: "built-in default".into(),
            values: Serialized::defaults(Settings::default())
                .data()?
                .remove(&Profile::Default)
                .unwrap_or_default(),
        });
        let mut figment = defaults;
        let mut mounts = Vec::new();
        let mut named_keys = BTreeMap::new();
        for f in &files {
            let file = Figment::from(Toml::file_exact(f));
            let top: FileTop = file
                .extract()
                .with_context(|| format!("config file {}", f.display()))?;
            mounts.extend(top.mount.keys().cloned());
            figment = figment.merge(file.focus("defaults"));
            if let Some(name) = &args.name {
                let table = format!("mount.{name}");
                if let Some(dict) = top.mount.get(name) {
                    named_keys.insert(f.clone(), dict.keys().cloned().collect());
                }
                figment = figment.merge(file.focus(&table));
            }
        }
        mounts.sort();
        mounts.dedup();
        if let Some(name) = &args.name {
            anyhow::ensure!(
                mounts.contains(name),
                "no [mount.{name}] table in {} (tables: {})",
                if files.is_empty() {
                    "any config file (none found)".to_string()
                } else {
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if mounts.is_empty() {
                    "none".to_string()
                } else {
                    mounts.join(", ")
                }
            );
        }
        let env = Env::prefixed(ENV_PREFIX).filter_map(|k| {
            let key = k.as_str().to_ascii_lowercase().replace('_', "-");
            KEYS.contains(&key.as_str()).then(|| key.into())
        });
        let figment = figment.merge(env).merge(Layer {
            name: given_as.into(),
            values: given,
        });
        Ok(Self {
            figment,
            files,
            mounts,
            name: args.name.clone(),
            named_keys,
            given_as: given_as.into(),
        })
    }

    /// The merged, typed settings (an error names the key and where its value came from).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.figment.extract::<Settings>().map_err(|e| {
            let mut msg = String::new();
            for e in e {
                let key = e.path.join(".");
                let origin = (!key.is_empty())
                    .then(|| self.origin(&key))
                    .flatten()
                    .map(|o| format!(" (from {o})"))
                    .unwrap_or_default();
                if !msg.is_empty() {
                    msg.push_str("; ");
                }
                msg.push_str(&format!("{}{origin}", e.kind));
                if !key.is_empty() {
                    msg.push_str(&format!(" for `{key}`"));
                }
            }
            anyhow::anyhow!("bad setting: {msg}")
        })
    }

    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        let md = self.figment.find_metadata(key)?;
        if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
            let named = self
                .named_keys
                .get(path)
                .is_some_and(|keys| keys.iter().any(|k| k == key));
            let table = match (&self.name, named) {
                (Some(n), true) => format!("mount.{n}"),
                _ => "defaults".into(),
            };
            return Some(Origin::File {
                path: path.to_path_buf(),
                table,
            });
        }
        Some(if md.name == "built-in default" {
            Origin::Default
        } else if md.name == self.given_as {
            Origin::Given(if self.given_as == "flag" {
                format!("flag --{key}")
            } else {
                format!("{} {key}", self.given_as)
            })
        } else {
            Origin::Env(format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('-', "_")
            ))
        })
    }
}

/// A value as a TOML literal, for `config show`.
fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match n.to_f64() {
            Some(f) if n.to_u128().is_none() && n.to_i128().is_none() => format!("{f:?}"),
            _ => n
                .to_i128()
                .map(|i| i.to_string())
                .or_else(|| n.to_u128().map(|u| u.to_string()))
                .unwrap_or_default(),
        },
        Value::Empty(..) => "\"\"".into(),
        Value::Array(_, a) => format!(
            "[{}]",
            a.iter().map(toml_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Dict(_, d) => format!(
            "{{ {} }}",
            d.iter()
                .map(|(k, v)| format!("{k} = {}", toml_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `config show`: every setting as TOML, with where it came from when asked.
pub fn show(loaded: &Loaded, origin: bool) -> anyhow::Result<String> {
    let settings = loaded.settings()?;
    let values = Serialized::defaults(&settings)
        .data()?
        .remove(&Profile::Default)
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "# files: {}\n",
        if loaded.files.is_empty() {
            "none".to_string()
        } else {
            loaded
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    out.push_str(&format!(
        "# mounts: {}\n",
        if loaded.mounts.is_empty() {
            "none".to_string()
        } else {
            loaded.mounts.join(", ")
        }
    ));
    for key in KEYS {
        let line = match values.get(*key) {
            Some(v) => format!("{key} = {}", toml_literal(v)),
            None => format!("# {key} (unset)"),
        };
        match loaded
            .origin(key)
            .filter(|_| origin && values.contains_key(*key))
        {
            Some(o) => out.push_str(&format!("{line:<48} # {o}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    Ok(out)
}

/// `~/x` as $HOME/x.
fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => PathBuf::from(p),
    }
}

impl Settings {
    /// Who may use the NFS port (knfsd's export options), warning loudly when opened up.
    fn access(&self) -> anyhow::Result<gridvfs::nfs::AccessPolicy> {
        use gridvfs::nfs::access::{ClientRule, Squash};
        anyhow::ensure!(
            !(self.no_root_squash && self.all_squash),
            "no-root-squash and all-squash exclude each other"
        );
        let clients = self
            .allow_clients
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| ClientRule::parse(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.insecure {
            tracing::warn!(
                "--insecure: NO ACCESS CHECKS. Any user who can reach the NFS port reads and \
                 writes every file of the export, whatever its mode"
            );
        } else if self.allow_unprivileged_ports {
            tracing::warn!(
                "--allow-unprivileged-ports: any local user can send NFS calls claiming any \
                 uid, root included"
            );
        }
        Ok(gridvfs::nfs::AccessPolicy {
            insecure: self.insecure,
            require_privileged_port: !self.allow_unprivileged_ports,
            squash: if self.all_squash {
                Squash::All
            } else if self.no_root_squash {
                Squash::None
            } else {
                Squash::Root
            },
            anon_uid: self.anonuid,
            anon_gid: self.anongid,
            allowed_uids: (!self.allow_uid.is_empty()).then(|| self.allow_uid.clone()),
            clients,
        })
    }

    /// The cache directory: as set, else the default (never a shared directory such as /tmp).
    pub fn cache_root(&self) -> anyhow::Result<PathBuf> {
        match &self.cache_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(gridvfs::cache::dir::default_root()?),
        }
    }

    /// Check every value and build what the client runs with.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let remote = self.remote.as_deref().context(
            "no store given: pass --remote, or set `remote` in the config's [mount.NAME] \
             table and pass --name NAME",
        )?;
        let mut remote = Remote::parse(remote).with_context(|| format!("bad remote `{remote}`"))?;
        remote.set_read_only(self.read_only);
        if let Remote::Ssh { opts, .. } = &mut remote {
            opts.identities = self.identity.clone();
            opts.known_hosts = Some(expand_home(&self.known_hosts));
            opts.accept_new_host_key = self.accept_new_host_key;
            opts.server_command = self.server_command.clone();
            opts.ssh_command = self.ssh_command.clone();
        } else {
            anyhow::ensure!(
                self.identity.is_empty() && self.ssh_command.is_none() && !self.accept_new_host_key,
                "identity, ssh-command and accept-new-host-key only apply to SSH remotes"
            );
        }
        let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
            anyhow::ensure!(
                v >= 0.0 && v.is_finite(),
                "{name} must be a number of seconds >= 0, not {v}"
            );
            Ok(Duration::from_secs_f64(v))
        };
        let access = self.access()?;
        access
            .check_listen(self.listen)
            .map_err(anyhow::Error::msg)?;
        if let Some(pm) = self.portmapper {
            access.check_listen(pm).map_err(anyhow::Error::msg)?;
        }
        Ok(ClientConfig {
            access,
            remote,
            listen: self.listen,
            cache_dir: self.cache_root()?,
            attr_timeout: secs("attr-timeout", self.attr_timeout)?,
            timeouts: gridvfs::remote::Timeouts {
                reconnect: secs("reconnect-timeout", self.reconnect_timeout)?,
                request: secs("request-timeout", self.request_timeout)?,
                offline: match self.offline {
                    Offline::Cached => gridvfs::remote::OfflinePolicy::Cached,
                    Offline::Wait => gridvfs::remote::OfflinePolicy::Wait,
                    Offline::Fail => gridvfs::remote::OfflinePolicy::Fail,
                },
                offline_limit: self
                    .offline_limit
                    .map(|l| secs("offline-limit", l))
                    .transpose()?,
            },
            adopt_export: self.adopt_export.clone(),
            portmapper: self.portmapper,
            metrics: self.metrics_addr,
            block_size: self.block_size,
            cache_size: self.cache_size,
            write_policy: match self.write_policy {
                Policy::Through => gridvfs::cache::WritePolicy::Through,
                Policy::Back => gridvfs::cache::WritePolicy::Back,
            },
            fill: match self.fill {
                Fill::Off => gridvfs::cache::FillPolicy::Off,
                Fill::Near => gridvfs::cache::FillPolicy::Near,
                Fill::All => gridvfs::cache::FillPolicy::All,
            },
            block_source: self.block_source.clone(),
            block_source_timeout: match secs("block-source-timeout", self.block_source_timeout)? {
                d if d.is_zero() => anyhow::bail!("block-source-timeout must be more than 0"),
                d => d,
            },
            site_listen: self.site_listen,
            site_url: self.site_url.clone(),
            share_profiles: match self.share_profiles {
                Some(0.0) => None,
                Some(w) => Some(secs("share-profiles", w)?),
                None => None,
            },
        })
    }
}

/// Flags as a layer: only those given.
pub fn given<T: Serialize>(flags: &T) -> anyhow::Result<Dict> {
    Ok(Serialized::defaults(flags)
        .data()?
        .remove(&Profile::Default)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KEYS` lists exactly the fields of `Settings`.
    #[test]
    fn keys_are_the_fields() {
        let mut s = Settings {
            remote: Some("local:/x".into()),
            ssh_command: Some("ssh".into()),
            cache_dir: Some("/c".into()),
            offline_limit: Some(1.0),
            adopt_export: Some("e".into()),
            portmapper: Some(SocketAddr::from(([127, 0, 0, 1], 111))),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9466))),
            block_source: vec!["http://cache:3128".into()],
            site_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            site_url: Some("http://site:8080".into()),
            share_profiles: Some(60.0),
            ..Settings::default()
        };
        s.identity.push("k".into());
        let d = given(&s).unwrap();
        let mut fields: Vec<&str> = d.keys().map(String::as_str).collect();
        fields.sort();
        let mut keys = KEYS.to_vec();
        keys.sort();
        assert_eq!(fields, keys);
    }
}
