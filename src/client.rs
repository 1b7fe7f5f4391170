//! Assembles the client proxy: index, tunnel, NFS front.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CacheStats, DataPath, Index};
use crate::error::{Error, Result};
use crate::nfs::{Front, NfsFront};
use crate::remote::RemoteStore;
use crate::tunnel::Remote;

/// Everything `gridvfs-client serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub remote: Remote,
    pub listen: SocketAddr,
    /// Root of the cache directory; each export gets its own subdirectory.
    pub cache_dir: PathBuf,
    pub attr_timeout: Duration,
    /// Reconnecting, the request watchdog, and what to do while the store is unreachable.
    pub timeouts: crate::remote::Timeouts,
    /// Make the cache of this earlier export id the current export's first.
    pub adopt_export: Option<String>,
    /// Also serve a portmapper here (e.g. `127.0.0.1:111`) for qemu's `nfs://` driver.
    pub portmapper: Option<SocketAddr>,
    /// Serve Prometheus metrics at `/metrics` here (`--metrics-addr`; off when `None`).
    pub metrics: Option<SocketAddr>,
    /// Cache block size in bytes (power of two, 4 KiB to 4 MiB).
    pub block_size: u64,
    /// Cache capacity in bytes; least recently used blocks are evicted past it.
    pub cache_size: u64,
    pub write_policy: crate::cache::WritePolicy,
    /// `--fill`: background fill of files being read.
    pub fill: crate::cache::FillPolicy,
    /// Who may use the NFS port and what each caller may do (knfsd's export options).
    pub access: crate::nfs::AccessPolicy,
    /// `--block-source`: HTTP cache tiers block payloads of hinted files come from, tried
    /// in order (e.g. the site's Squid, then the site process itself).
    pub block_source: Vec<String>,
    /// Per block from the tier, request and body together, before the session takes over.
    pub block_source_timeout: Duration,
    /// `--site-listen`: also serve sealed blocks to a site tier here.
    pub site_listen: Option<SocketAddr>,
    /// `--site-url`: where hosts reach the site directly (told to them in its answers).
    pub site_url: Option<String>,
    /// `--share-profiles`: record this long of a first boot, then save it to the hint.
    pub share_profiles: Option<Duration>,
}

/// A client proxy that is connected and bound, not yet serving.
pub struct Client {
    pub nfs: NfsFront,
    pub store: Arc<RemoteStore>,
    pub index: Arc<Index>,
    pub export_dir: PathBuf,
    pub stats: Arc<CacheStats>,
    /// For draining write-back data at shutdown.
    pub data: Arc<DataPath>,
    /// This process's hold on the export's cache directory (released when dropped).
    pub export_lock: crate::cache::dir::ExportDir,
    /// The figures `status` reports (also the service manager's status line).
    pub sources: Arc<crate::control::Sources>,
}

impl Client {
    /// Connect to the store, open this export's index, bind the NFS socket.
    pub async fn start(cfg: &ClientConfig) -> Result<Self> {
        let root = crate::cache::dir::CacheRoot::open(&cfg.cache_dir)?;
        let key = cfg.remote.store_key();
        let store = match RemoteStore::connect_with(cfg.remote.clone(), cfg.timeouts).await {
            Ok(s) => s,
            // Issue 16: an unreachable store is no reason not to serve what is cached.
            Err(e @ (Error::Disconnected(_) | Error::Io(_) | Error::Unsent(_)))
                if cfg.timeouts.offline != crate::remote::OfflinePolicy::Fail =>
            {
                let Some((welcome, boot_id)) = root.saved_welcome(&key) else {
                    return Err(e);
                };
                tracing::warn!(
                    "the store is unreachable ({e}); starting offline from the cache of export {}: \
                     cached data is served, the rest waits until the store answers",
                    welcome.export_id
                );
                RemoteStore::offline(cfg.remote.clone(), cfg.timeouts, welcome, boot_id)
            }
            Err(e) => return Err(e),
        };
        let id = &store.welcome().export_id;
        if let Some(old) = &cfg.adopt_export {
            root.adopt(old, id)?;
        }
        // Issue 11, item 11: write-back data left in a cache of this same store under an
        // older export id would never be uploaded; say so rather than start beside it.
        if let Some((old, n, bytes)) = root.stranded(&key, id)?.into_iter().next() {
            return Err(Error::Config(format!(
                "the cache of an earlier export id of this store, {}, still holds {n} write-back \
                 entries ({bytes} bytes) not on the store; the store now answers as export {id}. \
                 If it is the same export (moved, or its device renumbered), start once with \
                 `--adopt-export {old}` to upload them; otherwise move that directory away",
                root.path().join(&old).display()
            )));
        }
        let export = root.export(id)?;
        export.note_store(&key)?;
        let export_dir = export.path().to_path_buf();
        let index = Arc::new(Index::open(&export.index())?);
        index.save_welcome(&key, store.welcome(), store.boot_id())?;
        let generation = index.generation()?;
        let mut data = DataPath::new(
            store.clone(),
            index.clone(),
            export_dir.clone(),
            cfg.block_size,
            cfg.cache_size,
            cfg.write_policy,
        )?
        .with_fill(cfg.fill);
        if let Some(w) = cfg.share_profiles {
            data = data.with_shared_profiles(w);
        }
        if !cfg.block_source.is_empty() {
            if cfg.site_listen.is_some() {
                // It would ask its own cache for the very block it is serving, and wait.
                return Err(Error::Config(
                    "a site (--site-listen) reads the store itself: --block-source is for the \
                     hosts behind it"
                        .into(),
                ));
            }
            let tiers = cfg
                .block_source
                .iter()
                .map(|u| crate::tier::Tier::new(u, cfg.block_source_timeout).map(Arc::new))
                .collect::<Result<Vec<_>>>()?;
            tracing::info!(
                "block payloads of hinted files from the site tier: {} (in order, then the session)",
                cfg.block_source.join(", ")
            );
            data = data.with_tiers(tiers);
        }
        let data = Arc::new(data);
        if let Some(wb) = &data.writeback {
            // Resumes whatever a previous run acknowledged and did not upload.
            tokio::spawn(wb.clone().run(store.clone()));
        }
        let drain = data.clone();
        let stats = data.stats.clone();
        let front = Front::new(index.clone(), store.clone(), data, cfg.attr_timeout).await?;
        let stale = front.stale_check();
        let boot = store.clone();
        let store_boot = Arc::new(move || boot.boot_id());
        let mut nfs = NfsFront::bind(
            front,
            generation,
            cfg.listen,
            cfg.access.clone(),
            store_boot,
        )
        .await?;
        if let Some(pm) = cfg.portmapper {
            nfs = nfs.with_portmapper(pm).await?;
        }
        let sources = crate::control::Sources {
            export_id: store.welcome().export_id.clone(),
            store_key: key.clone(),
            listen: nfs.local_addr()?,
            index: index.clone(),
            data: drain.clone(),
            block_size: cfg.block_size,
            tunnel: store.counters.clone(),
            store: store.clone(),
            cache: stats.clone(),
            writeback: drain.writeback.clone(),
            stale,
            site: None,
        };
        let mut sources = sources;
        if let Some(addr) = cfg.site_listen {
            // Hosts reach the site at --site-url, else at the address it listens on (unless
            // that is a wildcard, which names no host).
            let url = cfg.site_url.clone().or_else(|| {
                (!addr.ip().is_unspecified() && addr.port() != 0).then(|| format!("http://{addr}"))
            });
            if url.is_none() {
                tracing::warn!(
                    "--site-listen {addr} names no address hosts can reach: give --site-url, so \
                     hosts whose cache dies come here instead of to the store"
                );
            }
            let site = Arc::new(crate::tier::Site::new(
                drain.clone(),
                index.clone(),
                store.clone(),
                url,
            ));
            let bound = crate::tier::serve::serve(addr, site.clone())
                .await
                .map_err(|e| Error::Config(format!("--site-listen {addr}: {e}")))?;
            tracing::info!("serving sealed blocks to the site tier at http://{bound}/");
            sources.site = Some((site, bound));
        }
        let sources = Arc::new(sources);
        if let Some(addr) = cfg.metrics {
            let bound = crate::metrics::serve(addr, sources.clone())
                .await
                .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
            tracing::info!("Prometheus metrics at http://{bound}/metrics");
        }
        if let Err(e) = crate::control::serve(&export_dir, sources.clone()) {
            // Serving files matters more than figures (e.g. a socket path over 108 bytes).
            tracing::warn!(
                "no control socket in {} ({e}): `status` and `flush` will not reach this client",
                export_dir.display()
            );
        }
        Ok(Self {
            nfs,
            store,
            index,
            export_dir,
            stats,
            data: drain,
            export_lock: export,
            sources,
        })
    }

    pub fn port(&self) -> u16 {
        self.nfs.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The kernel mount command for this client.
    pub fn mount_command(&self, mountpoint: &str) -> String {
        let p = self.port();
        format!(
            "mount -t nfs -o vers=3,proto=tcp,mountproto=tcp,port={p},mountport={p},hard,nolock,noacl 127.0.0.1:/ {mountpoint}"
        )
    }
}
