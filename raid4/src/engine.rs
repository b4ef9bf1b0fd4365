//! The IO engine: one io_uring on a dedicated thread, fixed (registered) buffers, a bounded
//! number of requests in flight, and completions delivered as runtime-agnostic futures
//! (futures::channel::oneshot), so tokio tasks and plain threads (`block_on`) both use it.
//!
//! Callers push requests on a queue and poke an eventfd; the ring thread keeps a read on that
//! eventfd in flight, so one `submit_and_wait` sleeps on both new work and completions.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use io_uring::{opcode, types, IoUring};

use crate::buf::{BufPool, PoolMemory, Slot};
use crate::disk::Disk;

/// Default bound on submission-queue entries in flight in the kernel at once.
pub const INFLIGHT_SQES_MAX_DEFAULT: usize = 256;

/// A contiguous transfer between a disk and part of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset on the disk.
    pub disk_offset: u64,
    /// Byte offset inside the slot.
    pub slot_offset: usize,
    /// Bytes to move.
    pub len: usize,
}

/// Segments per request: a data range plus the chunk's checksum block.
pub const SEGMENTS_PER_REQUEST_MAX: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    /// Caller memory then one block of the slot, in one vectored write.
    WriteBorrowed,
    Fsync,
}

/// What a finished request gives back: its result and the slot it borrowed.
pub struct IoDone {
    /// Ok when every segment moved all its bytes.
    pub result: io::Result<()>,
    /// The slot, returned so the caller can use (read) or recycle (write) it.
    pub slot: Option<Slot>,
}

struct Request {
    disk: Arc<Disk>,
    kind: Kind,
    slot: Option<Slot>,
    segs: Vec<Segment>,
    /// For `WriteBorrowed`: the two iovecs, boxed so their address is stable in flight.
    iov: Option<Box<[libc::iovec; 2]>>,
    reply: oneshot::Sender<IoDone>,
}

// SAFETY: the raw pointers in `iov` point at memory the submitter promised to keep valid
// (see `write_borrowed`); they are only handed to the kernel.
unsafe impl Send for Request {}

struct Inflight {
    req: Request,
    remaining: usize,
    error: Option<io::Error>,
}

struct Shared {
    queue: Mutex<VecDeque<Request>>,
    wake: OwnedFd,
    /// Set by the ring thread just before it blocks; a submitter that clears it pokes the
    /// eventfd. Saves one syscall per request while the thread is busy.
    sleeping: AtomicBool,
    shutdown: AtomicBool,
}

/// An io_uring engine on its own thread, owning a pool of registered buffers.
pub struct Engine {
    shared: Arc<Shared>,
    pool: BufPool,
    thread: Option<JoinHandle<()>>,
}

const WAKE_TAG: u64 = u64::MAX;

impl Engine {
    /// Starts the ring thread with `pool`'s slots registered and at most `inflight_sqes_max`
    /// kernel requests in flight.
    pub fn new(pool: BufPool, inflight_sqes_max: usize) -> io::Result<Engine> {
        assert!(inflight_sqes_max >= SEGMENTS_PER_REQUEST_MAX);
        assert!(
            pool.slot_count() <= u16::MAX as usize,
            "fixed buffer index is 16 bits"
        );
        let entries = (inflight_sqes_max + 1).next_power_of_two() as u32;
        let ring = IoUring::new(entries)?;
        let memory = pool.memory();
        // SAFETY: the iovecs point into `memory`, which the ring thread keeps alive until
        // after the ring is dropped.
        unsafe { ring.submitter().register_buffers(&memory.iovecs())? };
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh, owned descriptor.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake,
            sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raid4-uring".into())
            .spawn(move || ring_thread(ring, memory, s2, inflight_sqes_max))?;
        Ok(Engine {
            shared,
            pool,
            thread: Some(thread),
        })
    }

    /// The registered buffer pool.
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// Reads the segments from `disk` into `slot`.
    pub async fn read(&self, disk: &Arc<Disk>, slot: Slot, segs: &[Segment]) -> IoDone {
        self.submit(disk, Kind::Read, Some(slot), segs).await
    }

    /// Writes the segments of `slot` to `disk`.
    pub async fn write(&self, disk: &Arc<Disk>, slot: Slot, segs: &[Segment]) -> IoDone {
        self.submit(disk, Kind::Write, Some(slot), segs).await
    }

    /// Writes `data` (caller memory) followed by the first block of `slot`, contiguously
    /// at `disk_offset`, in one vectored write: the data go to the disk without a copy.
    ///
    /// # Safety
    /// `data` must stay valid and unchanged until the IO completes, even if the returned
    /// future is dropped first (the kernel keeps reading it). For O_DIRECT disks `data` must
    /// start on a 4 KiB boundary and be a whole number of blocks.
    pub async unsafe fn write_borrowed(
        &self,
        disk: &Arc<Disk>,
        mut slot: Slot,
        data: &[u8],
        disk_offset: u64,
    ) -> IoDone {
        assert!(data.len().is_multiple_of(crate::layout::BLOCK_SIZE));
        let iov = Box::new([
            libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            },
            libc::iovec {
                iov_base: slot.as_mut_ptr() as *mut libc::c_void,
                iov_len: crate::layout::BLOCK_SIZE,
            },
        ]);
        let seg = Segment {
            disk_offset,
            slot_offset: 0,
            len: data.len() + crate::layout::BLOCK_SIZE,
        };
        self.submit_req(disk, Kind::WriteBorrowed, Some(slot), vec![seg], Some(iov))
            .await
    }

    /// fdatasync: everything written to `disk` before is durable.
    pub async fn flush(&self, disk: &Arc<Disk>) -> io::Result<()> {
        self.submit(disk, Kind::Fsync, None, &[]).await.result
    }

    fn submit(
        &self,
        disk: &Arc<Disk>,
        kind: Kind,
        slot: Option<Slot>,
        segs: &[Segment],
    ) -> impl std::future::Future<Output = IoDone> {
        assert!(segs.len() <= SEGMENTS_PER_REQUEST_MAX);
        assert!(
            kind == Kind::Fsync || !segs.is_empty(),
            "reads and writes move bytes"
        );
        if let Some(s) = &slot {
            for g in segs {
                assert!(
                    g.len > 0 && g.slot_offset + g.len <= s.len(),
                    "segment outside slot"
                );
            }
        }
        self.submit_req(disk, kind, slot, segs.to_vec(), None)
    }

    fn submit_req(
        &self,
        disk: &Arc<Disk>,
        kind: Kind,
        slot: Option<Slot>,
        segs: Vec<Segment>,
        iov: Option<Box<[libc::iovec; 2]>>,
    ) -> impl std::future::Future<Output = IoDone> {
        let (tx, rx) = oneshot::channel();
        if disk.faulted(kind != Kind::Read) {
            let _ = tx.send(IoDone {
                result: Err(io::Error::other("injected IO error (EIO)")),
                slot,
            });
        } else {
            let req = Request {
                disk: disk.clone(),
                kind,
                slot,
                segs,
                iov,
                reply: tx,
            };
            self.shared
                .queue
                .lock()
                .expect("engine queue")
                .push_back(req);
            if self.shared.sleeping.swap(false, Ordering::SeqCst) {
                self.shared.poke();
            }
        }
        async move {
            rx.await.unwrap_or_else(|_| IoDone {
                result: Err(io::Error::other("io engine stopped")),
                slot: None,
            })
        }
    }
}

impl Shared {
    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our eventfd. An overflowing counter (EAGAIN)
        // still leaves the eventfd readable, which is all we need.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ring_thread(
    mut ring: IoUring,
    memory: Arc<PoolMemory>,
    shared: Arc<Shared>,
    inflight_sqes_max: usize,
) {
    let mut wake_buf: Box<u64> = Box::new(0);
    let mut wake_armed = false;
    let mut slab: Vec<Option<Inflight>> = Vec::new();
    let mut slab_free: Vec<usize> = Vec::new();
    let mut sqes_inflight = 0usize;
    loop {
        let stopping = shared.shutdown.load(Ordering::SeqCst);
        if !wake_armed && !stopping {
            let e = opcode::Read::new(
                types::Fd(shared.wake.as_raw_fd()),
                &mut *wake_buf as *mut u64 as *mut u8,
                8,
            )
            .build()
            .user_data(WAKE_TAG);
            // SAFETY: wake_buf outlives the request (we never exit with it armed).
            unsafe {
                ring.submission()
                    .push(&e)
                    .expect("ring has room for the wake read")
            };
            wake_armed = true;
        }
        // Admit queued requests while the in-flight bound allows.
        {
            let mut q = shared.queue.lock().expect("engine queue");
            while let Some(front) = q.front() {
                let need = front.segs.len().max(1);
                if sqes_inflight + need > inflight_sqes_max {
                    break;
                }
                let req = q.pop_front().expect("front exists");
                let id = slab_free.pop().unwrap_or_else(|| {
                    slab.push(None);
                    slab.len() - 1
                });
                let mut req = req;
                push_sqes(&mut ring, id, &mut req);
                sqes_inflight += need;
                slab[id] = Some(Inflight {
                    req,
                    remaining: need,
                    error: None,
                });
            }
        }
        if stopping && sqes_inflight == 0 && !wake_armed {
            break;
        }
        // Announce the sleep, then re-check the queue: a request pushed before the flag was
        // set would otherwise wait for an unrelated completion.
        shared.sleeping.store(true, Ordering::SeqCst);
        let admissible = {
            let q = shared.queue.lock().expect("engine queue");
            q.front()
                .is_some_and(|f| sqes_inflight + f.segs.len().max(1) <= inflight_sqes_max)
        };
        let want = if admissible {
            shared.sleeping.store(false, Ordering::SeqCst);
            0
        } else {
            1
        };
        let submitted = ring.submit_and_wait(want);
        shared.sleeping.store(false, Ordering::SeqCst);
        match submitted {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                tracing::error!("io_uring submit failed: {e}; the engine stops");
                break;
            }
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            if ud == WAKE_TAG {
                wake_armed = false;
                continue;
            }
            sqes_inflight -= 1;
            let id = (ud >> 8) as usize;
            let seg = (ud & 0xff) as usize;
            let done = {
                let inf = slab[id].as_mut().expect("completion for a live request");
                let want = inf.req.segs.get(seg).map(|s| s.len).unwrap_or(0);
                if res < 0 {
                    inf.error.get_or_insert(io::Error::from_raw_os_error(-res));
                } else if inf.req.kind != Kind::Fsync && res as usize != want {
                    inf.error.get_or_insert(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short transfer: {res} of {want} bytes (disk truncated?)"),
                    ));
                }
                inf.remaining -= 1;
                inf.remaining == 0
            };
            if done {
                let inf = slab[id].take().expect("live");
                slab_free.push(id);
                let result = match inf.error {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                let _ = inf.req.reply.send(IoDone {
                    result,
                    slot: inf.req.slot,
                });
            }
        }
    }
    // Ring first, then the memory it had registered.
    drop(ring);
    drop(memory);
}

fn push_sqes(ring: &mut IoUring, id: usize, req: &mut Request) {
    let fd = types::Fd(req.disk.fd());
    if req.kind == Kind::Fsync {
        let e = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data((id as u64) << 8);
        // SAFETY: no buffers involved.
        unsafe {
            ring.submission()
                .push(&e)
                .expect("ring sized for the in-flight bound")
        };
        return;
    }
    if let Some(iov) = &req.iov {
        let e = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
            .offset(req.segs[0].disk_offset)
            .build()
            .user_data((id as u64) << 8);
        // SAFETY: the iovecs live in the request until completion; the memory they point
        // to is the submitter's promise (`write_borrowed`) and the request's slot.
        unsafe {
            ring.submission()
                .push(&e)
                .expect("ring sized for the in-flight bound")
        };
        return;
    }
    let slot = req.slot.as_mut().expect("reads and writes carry a slot");
    let buf_index = slot.index() as u16;
    let base = slot.as_mut_ptr();
    for (i, seg) in req.segs.iter().enumerate() {
        // SAFETY: the segment lies inside the slot (asserted in submit).
        let ptr = unsafe { base.add(seg.slot_offset) };
        let len = seg.len as u32;
        let e = match req.kind {
            Kind::Read => opcode::ReadFixed::new(fd, ptr, len, buf_index)
                .offset(seg.disk_offset)
                .build(),
            _ => opcode::WriteFixed::new(fd, ptr, len, buf_index)
                .offset(seg.disk_offset)
                .build(),
        }
        .user_data(((id as u64) << 8) | i as u64);
        // SAFETY: the slot is owned by the in-flight request until its completion.
        unsafe {
            ring.submission()
                .push(&e)
                .expect("ring sized for the in-flight bound")
        };
    }
}
