//! Fetching blocks from the site tier (`--block-source`): per file version, the manifest
//! (the store's block sums, asked over the session) names each block; a run of missing
//! blocks is then fetched from the tier by id, each payload verified against its sum, and
//! whatever the tier does not give is fetched over the session (DESIGN §13).
//!
//! Only files with a current hint file whose block size is the cache's get a manifest:
//! their sums are already on the store (asking for others would make the store hash whole
//! files), and a hint is how an admin says "this is a published image".

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{DataPath, validator};
use crate::error::Result;
use crate::proto::{Attr, FileRef, HintSource};
use crate::tier::{Locator, Tier, seal::Sum};

/// A file version's block sums, block by block.
type Manifest = Arc<Vec<Sum>>;

/// The file version (validator) a manifest was asked for, and the answer.
type Known = (Vec<u8>, Option<Manifest>);

/// Manifests remembered at most (one per file version: 16 bytes per block, 128 KiB for a
/// 2 GiB image at 256 KiB blocks, 4 MiB at the store's cap of 256 Ki sums).
const MAX_MANIFESTS: usize = 256;

/// Per file: the version a manifest was asked for, and the manifest (`None`: the file
/// has none, e.g. no hint file; not asked again for this version).
#[derive(Default)]
pub(super) struct Manifests {
    map: Mutex<HashMap<u64, Known>>,
    /// Per file, held while its manifest is asked for: concurrent first misses of one file
    /// make one request (other files' are not held up behind a slow one).
    asking: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Manifests {
    fn known(&self, id: u64, v: &[u8]) -> Option<Option<Manifest>> {
        let map = self.map.lock().expect("manifests lock");
        map.get(&id)
            .filter(|(mv, _)| mv == v)
            .map(|(_, m)| m.clone())
    }

    fn put(&self, id: u64, v: Vec<u8>, m: Option<Manifest>) {
        let mut map = self.map.lock().expect("manifests lock");
        if map.len() >= MAX_MANIFESTS && !map.contains_key(&id) {
            map.clear();
        }
        map.insert(id, (v, m));
    }
}

impl DataPath {
    /// The manifest of file `id` as `attr` describes it, if it has one.
    async fn manifest(&self, id: u64, file: &FileRef, attr: &Attr) -> Option<Manifest> {
        let v = validator(attr);
        if let Some(m) = self.manifests.known(id, &v) {
            return m;
        }
        let one = {
            let mut asking = self.manifests.asking.lock().expect("asking lock");
            if asking.len() >= MAX_MANIFESTS {
                asking.retain(|_, l| Arc::strong_count(l) > 1);
            }
            asking.entry(id).or_default().clone()
        };
        let _one = one.lock().await;
        if let Some(m) = self.manifests.known(id, &v) {
            return m;
        }
        let bs = self.block_size;
        let hint = self.hints.known(id, &v)?;
        let m = if hint.source == HintSource::File && u64::from(hint.block_size) == bs {
            match self.remote.block_sums(file.clone(), bs as u32).await {
                Ok((now, sums))
                    if validator(&now) == v && sums.len() as u64 == attr.size.div_ceil(bs) =>
                {
                    Some(Arc::new(sums))
                }
                Ok(_) => None,
                // The store refused for good (e.g. more blocks than it sends sums for):
                // remembered for this version, not asked again at every miss.
                Err(e @ crate::error::Error::Status(_)) => {
                    tracing::debug!(file = id, "no manifest ({e}); blocks come over the session");
                    None
                }
                Err(e) => {
                    tracing::debug!(file = id, "no manifest ({e}); blocks come over the session");
                    return None;
                }
            }
        } else {
            None
        };
        self.manifests.put(id, v, m.clone());
        m
    }

    /// `len` bytes at block-aligned `off` of file `id` (version `attr`) from the site tier,
    /// completed over the session where the tier fails; `None` if the tier is not used for
    /// this file (no tier, no manifest, tier down), so the caller fetches as usual.
    pub(super) async fn fetch_from_tier(
        &self,
        id: u64,
        file: &FileRef,
        attr: &Attr,
        off: u64,
        len: u64,
    ) -> Result<Option<(Bytes, Attr)>> {
        if self.tiers.is_empty() {
            return Ok(None);
        }
        let bs = self.block_size;
        if !off.is_multiple_of(bs) || len == 0 {
            return Ok(None);
        }
        let Some(sums) = self.manifest(id, file, attr).await else {
            return Ok(None);
        };
        let (first, n) = (off / bs, len.div_ceil(bs));
        if first + n > sums.len() as u64 {
            return Ok(None);
        }
        let all = self.tiers();
        let Some(first_up) = all.iter().find(|t| t.available()) else {
            // All down a moment ago: these blocks are the tiers', fetched over the session.
            self.tiers[0]
                .stats
                .fallbacks
                .fetch_add(n, Ordering::Relaxed);
            return Ok(None);
        };
        let mut tasks = tokio::task::JoinSet::new();
        for b in first..first + n {
            let (tiers, sums) = (all.clone(), sums.clone());
            let at = Locator {
                path: file.path.clone(),
                block_size: bs,
                block: b,
            };
            let want = (bs.min(attr.size - b * bs)) as usize;
            tasks.spawn(async move {
                // In order, as CernVM-FS's proxy list: the next source only when one fails.
                for tier in tiers.iter().filter(|t| t.available()) {
                    if let Ok(d) = tier.get(&at, &sums[b as usize], want).await {
                        return (b, Some(d).filter(|d| d.len() == want));
                    }
                }
                (b, None)
            });
        }
        let mut got: Vec<Option<Vec<u8>>> = vec![None; n as usize];
        while let Some(r) = tasks.join_next().await {
            if let Ok((b, d)) = r {
                got[(b - first) as usize] = d;
            }
        }
        // What no tier gave comes over the session, consecutive blocks in one request.
        let failed: Vec<u64> = (first..first + n)
            .filter(|b| got[(b - first) as usize].is_none())
            .collect();
        for (start, k) in super::range::runs(&failed, n) {
            first_up.stats.fallbacks.fetch_add(k, Ordering::Relaxed);
            let want = (k * bs).min(attr.size - start * bs);
            let (d, a) = self.fetch(file.clone(), start * bs, want).await?;
            if validator(&a) != validator(attr) || (d.len() as u64) < want {
                // The file changed meanwhile: the tier's blocks are of the old version and
                // must not be glued to the new one. The whole range, once more, from the
                // session (the caller caches it only if it is of `attr`'s version).
                return self.fetch(file.clone(), off, len).await.map(Some);
            }
            for (i, chunk) in d.chunks(bs as usize).enumerate() {
                got[(start - first) as usize + i] = Some(chunk.to_vec());
            }
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for block in got.into_iter().flatten() {
            out.extend_from_slice(&block);
        }
        out.truncate(len as usize);
        let now = *attr;
        Ok(Some((out.freeze(), now)))
    }

    /// The tiers this client takes blocks from, first first: those configured, then the
    /// site the first of them named (learned once, so a host given only the site's Squid
    /// still goes to the site, not the WAN, when the Squid dies).
    pub fn tiers(&self) -> Vec<Arc<Tier>> {
        let mut all = self.tiers.clone();
        let Some(first) = self.tiers.first() else {
            return all;
        };
        // One lock at a time (lock order, level 4): the tier's, then ours.
        let named = first.site_url.lock().expect("tier lock").clone();
        let mut learned = self.learned.lock().expect("learned lock");
        if learned.is_none()
            && let Some(url) = named
            && !self
                .tiers
                .iter()
                .any(|t| t.url() == url.trim_end_matches('/'))
        {
            match Tier::new(&url, first.deadline()) {
                Ok(t) => {
                    tracing::info!("the site behind {} is {url}: its next source", first.url());
                    *learned = Some(Arc::new(t));
                }
                Err(e) => {
                    tracing::warn!("{} names its site as {url:?}: {e}", first.url());
                    drop(learned);
                    // Not parsed again at every fetch.
                    first.site_url.lock().expect("tier lock").take();
                    return all;
                }
            }
        }
        all.extend(learned.iter().cloned());
        all
    }
}
