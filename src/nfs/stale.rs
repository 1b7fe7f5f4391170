//! After an outage (issue 16): which answers given from the last known state were stale.
//!
//! While the store is unreachable the front answers GETATTR, LOOKUP and READDIR from what
//! it last saw. Each object answered that way is noted here with the attributes served;
//! when the store answers again, each is asked for its attributes once, and those that
//! changed meanwhile (or went away) are logged with how long they were served stale, and
//! kept for `status`. Their cached blocks need nothing here: a changed validator drops or
//! delta-revalidates them at the next read, as after any change on the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::{Index, validator};
use crate::error::Error;
use crate::proto::{Attr, FileRef, Status};
use crate::remote::RemoteStore;

/// Changed objects listed in a report (and in the log); the count is always exact.
const LISTED: usize = 50;

/// What the last outage served that turned out stale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutageReport {
    /// When the store answered again (ms since the epoch) and how long it had not.
    pub ended_ms: u64,
    pub lasted_secs: f64,
    /// Objects answered from the last known state during the outage.
    pub served: u64,
    /// Of those, how many had changed on the store (or were gone), and the first ones'
    /// paths with how long each was served stale.
    pub changed: u64,
    pub changed_paths: Vec<(String, f64)>,
}

#[derive(Default)]
pub struct StaleCheck {
    /// id -> (attributes served offline, first served).
    served: Mutex<HashMap<u64, (Attr, Instant)>>,
    last: Mutex<Option<OutageReport>>,
}

impl StaleCheck {
    /// Start checking at the end of every outage of `store`.
    pub fn start(store: Arc<RemoteStore>, index: Arc<Index>) -> Arc<Self> {
        let this = Arc::new(Self::default());
        let weak = Arc::downgrade(&this);
        let mut ends = store.outage_ends();
        tokio::spawn(async move {
            while ends.changed().await.is_ok() {
                let lasted = *ends.borrow_and_update();
                let Some(check) = weak.upgrade() else { return };
                check.check(&store, &index, lasted).await;
            }
        });
        this
    }

    /// `id` was answered offline with `a`.
    pub fn served(&self, id: u64, a: Attr) {
        self.served
            .lock()
            .expect("stale lock")
            .entry(id)
            .or_insert((a, Instant::now()));
    }

    /// The report of the last outage, if there was one.
    pub fn last(&self) -> Option<OutageReport> {
        self.last.lock().expect("stale lock").clone()
    }

    async fn check(&self, store: &RemoteStore, index: &Index, lasted: Duration) {
        let served: Vec<(u64, (Attr, Instant))> =
            self.served.lock().expect("stale lock").drain().collect();
        let mut report = OutageReport {
            ended_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            lasted_secs: lasted.as_secs_f64(),
            served: served.len() as u64,
            ..OutageReport::default()
        };
        for (id, (was, since)) in served {
            let Ok(Some((path, ident))) = index.get(id) else {
                continue;
            };
            let file = FileRef {
                path: path.clone(),
                ident: (id != crate::cache::index::ROOT_ID).then_some(ident),
            };
            let changed = match store.getattr(&file).await {
                Ok(now) => validator(&now) != validator(&was),
                Err(Error::Status(Status::NoEnt | Status::Stale)) => true,
                // Offline again, or another failure: not known to have changed.
                Err(_) => false,
            };
            if changed {
                report.changed += 1;
                if report.changed_paths.len() < LISTED {
                    let shown = String::from_utf8_lossy(&path).into_owned();
                    report
                        .changed_paths
                        .push((shown, since.elapsed().as_secs_f64()));
                }
            }
        }
        if report.changed > 0 {
            let list: Vec<String> = report
                .changed_paths
                .iter()
                .map(|(p, s)| format!("/{p} ({s:.0} s)"))
                .collect();
            tracing::warn!(
                "after the outage of {:.0?}: {} of the {} objects answered from the cache had \
                 changed on the store meanwhile, stale for the times shown: {}{}",
                lasted,
                report.changed,
                report.served,
                list.join(", "),
                if report.changed as usize > list.len() {
                    " ..."
                } else {
                    ""
                }
            );
        } else if report.served > 0 {
            tracing::info!(
                "after the outage of {lasted:.0?}: none of the {} objects answered from the \
                 cache had changed on the store",
                report.served
            );
        }
        *self.last.lock().expect("stale lock") = Some(report);
    }
}
