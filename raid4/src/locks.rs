//! Per-stripe exclusion between writers, scrub and rebuild (readers do not lock: in a
//! write-anywhere file system nobody reads a stripe while it is being written).

use std::collections::HashSet;
use std::sync::Mutex;

use futures::channel::oneshot;

/// A set of locked stripes with async waiters.
#[derive(Default)]
pub(crate) struct StripeLocks {
    inner: Mutex<(HashSet<u64>, Vec<oneshot::Sender<()>>)>,
}

/// Holds one stripe; unlocks on drop.
pub(crate) struct StripeGuard<'a> {
    locks: &'a StripeLocks,
    stripe: u64,
}

impl StripeLocks {
    /// Waits until `stripe` is free and takes it.
    pub(crate) async fn lock(&self, stripe: u64) -> StripeGuard<'_> {
        loop {
            let rx = {
                let mut g = self.inner.lock().expect("stripe locks");
                if g.0.insert(stripe) {
                    return StripeGuard {
                        locks: self,
                        stripe,
                    };
                }
                let (tx, rx) = oneshot::channel();
                g.1.push(tx);
                rx
            };
            // Woken on any unlock; re-check (bounded by the number of holders ahead of us).
            let _ = rx.await;
        }
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut g = self.locks.inner.lock().expect("stripe locks");
            g.0.remove(&self.stripe);
            std::mem::take(&mut g.1)
        };
        for w in waiters {
            let _ = w.send(());
        }
    }
}
