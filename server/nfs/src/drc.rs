//! The in-memory duplicate-request cache (DRC).
//!
//! Only non-idempotent NFS procedures go through it (`Nfs3Proc::is_idempotent`). A request
//! is either in progress (a retransmission is dropped: the client retries and then finds the
//! reply) or done (a retransmission gets the cached reply, byte for byte, without a second
//! execution). The cache is bounded by entries and by reply bytes; it evicts the oldest
//! insertions first (retransmissions come within seconds, so age is the right measure).
//!
//! The durable side of the cache is the NVRAM log: replay re-executes every logged op and
//! puts its regenerated reply back here under the logged key.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use twinfiler_proto::drc::DrcKey;

/// Default bound on cached requests.
pub const DRC_ENTRIES_MAX_DEFAULT: usize = 16_384;
/// Default bound on the bytes of cached replies.
pub const DRC_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// Bytes charged per entry besides its reply (key, map and queue slots).
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// What the cache says about a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Not seen: now marked in progress; the caller executes it and calls
    /// [`Drc::finish`] or [`Drc::abort`].
    New,
    /// The same request is being executed: drop this copy.
    InProgress,
    /// Already answered: send this reply again.
    Done(Bytes),
}

enum State {
    InProgress,
    Done(Bytes),
}

struct Entry {
    state: State,
    /// Insertion stamp: the queue slot that owns this entry.
    stamp: u64,
}

struct Inner {
    map: HashMap<DrcKey, Entry>,
    /// Keys by insertion, with their stamp (stale slots are skipped on eviction).
    order: VecDeque<(DrcKey, u64)>,
    next_stamp: u64,
    bytes: usize,
}

/// The cache. Thread-safe; every call holds one mutex briefly.
pub struct Drc {
    inner: Mutex<Inner>,
    entries_max: usize,
    bytes_max: usize,
}

fn entry_bytes(s: &State) -> usize {
    ENTRY_OVERHEAD_BYTES
        + match s {
            State::InProgress => 0,
            State::Done(b) => b.len(),
        }
}

impl Drc {
    /// An empty cache with these bounds (each at least 1).
    pub fn new(entries_max: usize, bytes_max: usize) -> Drc {
        Drc {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_stamp: 0,
                bytes: 0,
            }),
            entries_max: entries_max.max(1),
            bytes_max: bytes_max.max(ENTRY_OVERHEAD_BYTES),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks the request up, marking it in progress if new.
    pub fn begin(&self, key: &DrcKey) -> Begin {
        let mut g = self.lock();
        if let Some(e) = g.map.get(key) {
            return match &e.state {
                State::InProgress => Begin::InProgress,
                State::Done(r) => Begin::Done(r.clone()),
            };
        }
        self.insert(&mut g, *key, State::InProgress);
        Begin::New
    }

    /// Records the reply of a request (also used by replay for keys never begun).
    pub fn finish(&self, key: &DrcKey, reply: Bytes) {
        let mut g = self.lock();
        self.insert(&mut g, *key, State::Done(reply));
    }

    /// Forgets an in-progress request that produced no reply (dropped), so a
    /// retransmission executes it.
    pub fn abort(&self, key: &DrcKey) {
        let mut g = self.lock();
        if let Some(e) = g.map.remove(key) {
            g.bytes -= entry_bytes(&e.state);
        }
    }

    /// Cached requests (in progress and done).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged to cached entries.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn insert(&self, g: &mut Inner, key: DrcKey, state: State) {
        let stamp = g.next_stamp;
        g.next_stamp += 1;
        let add = entry_bytes(&state);
        if let Some(old) = g.map.insert(key, Entry { state, stamp }) {
            g.bytes -= entry_bytes(&old.state);
        }
        g.bytes += add;
        g.order.push_back((key, stamp));
        // Evict oldest first; queue slots whose entry was re-inserted or removed since are
        // stale and just dropped. The newest entry always stays.
        while g.map.len() > self.entries_max
            || g.bytes > self.bytes_max
            || g.order.len() > 2 * self.entries_max + 16
        {
            let Some((k, s)) = g.order.pop_front() else {
                break;
            };
            if k == key && s == stamp {
                g.order.push_front((k, s));
                break;
            }
            if g.map.get(&k).is_some_and(|e| e.stamp == s) {
                if let Some(e) = g.map.remove(&k) {
                    g.bytes -= entry_bytes(&e.state);
                }
            }
        }
        debug_assert!(g.map.len() <= g.order.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfiler_proto::rpc::{CallHeader, Credential, OpaqueAuth};

    fn key(xid: u32) -> DrcKey {
        let h = CallHeader {
            xid,
            prog: 100_003,
            vers: 3,
            proc_: 12,
            cred: Credential::None,
            verf: OpaqueAuth::none(),
        };
        DrcKey::new("127.0.0.1:900".parse().unwrap(), &h, &[1, 2, 3, 4], 0)
    }

    #[test]
    fn states_and_abort() {
        let d = Drc::new(10, 1 << 20);
        assert_eq!(d.begin(&key(1)), Begin::New);
        assert_eq!(d.begin(&key(1)), Begin::InProgress);
        d.finish(&key(1), Bytes::from_static(b"reply"));
        assert_eq!(d.begin(&key(1)), Begin::Done(Bytes::from_static(b"reply")));
        assert_eq!(d.begin(&key(2)), Begin::New);
        d.abort(&key(2));
        assert_eq!(d.begin(&key(2)), Begin::New);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn bounded_by_entries_and_bytes_oldest_first() {
        let d = Drc::new(3, 1 << 20);
        for x in 0..10 {
            assert_eq!(d.begin(&key(x)), Begin::New);
            d.finish(&key(x), Bytes::from_static(b"r"));
            assert!(d.len() <= 3);
        }
        assert_eq!(d.begin(&key(9)), Begin::Done(Bytes::from_static(b"r")));
        assert_eq!(d.begin(&key(0)), Begin::New);

        let d = Drc::new(1000, 3 * (ENTRY_OVERHEAD_BYTES + 100));
        for x in 0..10 {
            d.finish(&key(x), Bytes::from(vec![0u8; 100]));
            assert!(d.bytes() <= 3 * (ENTRY_OVERHEAD_BYTES + 100));
        }
        assert_eq!(d.len(), 3);
        // One reply over the byte bound alone is still kept (the newest entry stays).
        d.finish(&key(50), Bytes::from(vec![0u8; 10_000]));
        assert!(matches!(d.begin(&key(50)), Begin::Done(_)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn reinsertion_keeps_queue_bounded() {
        let d = Drc::new(2, 1 << 20);
        for _ in 0..1000 {
            d.finish(&key(1), Bytes::from_static(b"a"));
        }
        assert!(d.lock().order.len() <= 2 * 2 + 16 + 1);
        assert_eq!(d.len(), 1);
    }
}
