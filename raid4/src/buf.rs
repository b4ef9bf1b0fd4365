//! A pool of page-aligned IO buffers ("slots") registered with io_uring as fixed buffers.
//!
//! Every disk IO of a group moves data between a disk and one slot. Slots are handed out in
//! groups (`acquire(k)`) first come first served, so a stripe operation that needs one slot
//! per disk gets them all at once or waits: no caller can hold half of what it needs while
//! another holds the other half (no deadlock), and memory use is bounded by the pool size.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;

/// Alignment of every slot: O_DIRECT needs the logical block size, 4 KiB covers every device.
pub const SLOT_ALIGN_BYTES: usize = 4096;

/// The memory behind the slots. Freed only when the last slot and the engine are gone.
pub(crate) struct PoolMemory {
    ptr: *mut u8,
    layout: Layout,
    slot_bytes: usize,
    slot_count: usize,
}

// SAFETY: the memory is plain bytes; exclusive access to each slot is enforced by `Slot`
// ownership (one `Slot` value per index at a time).
unsafe impl Send for PoolMemory {}
unsafe impl Sync for PoolMemory {}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `BufPool::new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

impl PoolMemory {
    /// One iovec per slot, for `register_buffers`.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.slot_count)
            .map(|i| libc::iovec {
                // SAFETY: i < slot_count, so the offset is inside the allocation.
                iov_base: unsafe { self.ptr.add(i * self.slot_bytes) } as *mut libc::c_void,
                iov_len: self.slot_bytes,
            })
            .collect()
    }
}

struct Waiter {
    count: usize,
    reply: oneshot::Sender<Vec<Slot>>,
}

struct PoolState {
    free: Vec<u32>,
    waiters: VecDeque<Waiter>,
}

struct PoolInner {
    memory: Arc<PoolMemory>,
    state: Mutex<PoolState>,
}

/// A bounded set of aligned, registered buffers. Cheap to clone (shared).
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

impl BufPool {
    /// Allocates `slot_count` zeroed slots of `slot_bytes` each (a multiple of 4 KiB).
    pub fn new(slot_bytes: usize, slot_count: usize) -> BufPool {
        assert!(slot_bytes > 0 && slot_bytes.is_multiple_of(SLOT_ALIGN_BYTES));
        assert!(slot_count > 0 && slot_count < u32::MAX as usize);
        let layout = Layout::from_size_align(slot_bytes * slot_count, SLOT_ALIGN_BYTES)
            .expect("pool layout fits in memory");
        // SAFETY: non-zero size asserted above.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for the IO buffer pool");
        let memory = Arc::new(PoolMemory {
            ptr,
            layout,
            slot_bytes,
            slot_count,
        });
        let free = (0..slot_count as u32).rev().collect();
        BufPool {
            inner: Arc::new(PoolInner {
                memory,
                state: Mutex::new(PoolState {
                    free,
                    waiters: VecDeque::new(),
                }),
            }),
        }
    }

    pub(crate) fn memory(&self) -> Arc<PoolMemory> {
        self.inner.memory.clone()
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.inner.memory.slot_bytes
    }

    /// Number of slots in the pool.
    pub fn slot_count(&self) -> usize {
        self.inner.memory.slot_count
    }

    /// Waits for `count` slots, first come first served. `count` must not exceed the pool.
    pub async fn acquire(&self, count: usize) -> Vec<Slot> {
        assert!(
            count <= self.slot_count(),
            "asked {count} slots of a pool of {}",
            self.slot_count()
        );
        let rx = {
            let mut st = self.inner.state.lock().expect("pool lock");
            if st.waiters.is_empty() && st.free.len() >= count {
                let at = st.free.len() - count;
                let idx: Vec<u32> = st.free.drain(at..).collect();
                drop(st);
                return idx.into_iter().map(|i| self.slot(i)).collect();
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { count, reply: tx });
            rx
        };
        rx.await.expect("the pool outlives its waiters")
    }

    fn slot(&self, index: u32) -> Slot {
        Slot {
            index,
            pool: self.inner.clone(),
        }
    }
}

impl PoolInner {
    fn release(self: &Arc<Self>, index: u32) {
        let mut st = self.state.lock().expect("pool lock");
        st.free.push(index);
        while let Some(w) = st.waiters.front() {
            if w.count > st.free.len() {
                break;
            }
            let w = st.waiters.pop_front().expect("front exists");
            let at = st.free.len() - w.count;
            let slots: Vec<Slot> = st
                .free
                .drain(at..)
                .map(|index| Slot {
                    index,
                    pool: self.clone(),
                })
                .collect();
            if let Err(back) = w.reply.send(slots) {
                // The waiter gave up: take the indices back without running Slot::drop,
                // which would re-enter this lock.
                for s in back {
                    st.free.push(s.into_index());
                }
            }
        }
    }
}

/// Exclusive ownership of one slot; returns it to the pool on drop.
pub struct Slot {
    index: u32,
    pool: Arc<PoolInner>,
}

impl Slot {
    /// Index of the slot among the registered buffers.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Bytes in the slot.
    pub fn len(&self) -> usize {
        self.pool.memory.slot_bytes
    }

    /// Never true: slots have a positive size (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: index < slot_count (pool invariant).
        unsafe {
            self.pool
                .memory
                .ptr
                .add(self.index as usize * self.pool.memory.slot_bytes)
        }
    }

    /// The slot's bytes.
    pub fn bytes(&self) -> &[u8] {
        let m = &self.pool.memory;
        // SAFETY: this `Slot` is the only owner of the index; the memory outlives it.
        unsafe {
            std::slice::from_raw_parts(m.ptr.add(self.index as usize * m.slot_bytes), m.slot_bytes)
        }
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        let p = self.as_mut_ptr();
        // SAFETY: exclusive owner, see `bytes`.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    fn into_index(self) -> u32 {
        let i = self.index;
        // SAFETY: `self` is forgotten right after, so the Arc is moved out exactly once and
        // its reference count stays right; Slot::drop (which would release the index into a
        // lock the caller holds) never runs.
        let pool = unsafe { std::ptr::read(&self.pool) };
        std::mem::forget(self);
        drop(pool);
        i
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.index)
    }
}

/// An owned, zeroed byte buffer that starts on a 4 KiB boundary. Stripes written from such a
/// buffer reach the disks without a copy (see `Group::write_stripes`).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain owned bytes.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes (len > 0).
    pub fn zeroed(len: usize) -> AlignedBuf {
        assert!(len > 0);
        let layout = Layout::from_size_align(len, SLOT_ALIGN_BYTES).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: owned allocation of `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: owned allocation of `len` bytes, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, SLOT_ALIGN_BYTES).expect("layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn slots_are_aligned_exclusive_and_recycled() {
        let pool = BufPool::new(8192, 4);
        let mut a = block_on(pool.acquire(3));
        for s in &mut a {
            assert_eq!(s.as_mut_ptr() as usize % SLOT_ALIGN_BYTES, 0);
        }
        let mut idx: Vec<u32> = a.iter().map(|s| s.index()).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 3);
        // A waiter for 2 is served only when enough come back.
        let pool2 = pool.clone();
        let t = std::thread::spawn(move || block_on(pool2.acquire(2)).len());
        a.pop();
        assert_eq!(t.join().expect("thread"), 2);
        drop(a);
        assert_eq!(block_on(pool.acquire(4)).len(), 4);
    }
}
