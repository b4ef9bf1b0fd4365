//! Reading RPC records from a TCP stream into buffers we own: the server reads calls with
//! it, and the node's NFS client (server/src/nfsclient) reads replies with it.
//!
//! The common case — a record sent as one final fragment — is taken straight out of the read
//! buffer with `split_to`, so a 1 MiB WRITE arrives as one [`Bytes`] holding the bytes the
//! kernel copied in, with no further copy. Anything else (multi-fragment records, and every
//! fragment header that breaks a bound) goes through [`RecordDecoder`], which reassembles
//! (one copy) and enforces the record and fragment caps. The caps are checked on the header
//! alone: a client claiming a 2 GiB fragment gets its connection closed before we allocate.
//!
//! Small records are read many to a read. A big one (at least a read buffer long) is read
//! to its last byte and no further, and after it the next header is read alone: otherwise
//! the start of the next record would share the big record's buffer, and the next
//! `reserve` would move it (a quarter of all bytes, measured, when 1 MiB replies stream).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use twinfiler_proto::record::{RecordDecoder, RecordError, RECORD_MARK_BYTES};

const LAST_FRAGMENT_BIT: u32 = 0x8000_0000;
/// A read into what is left of the buffer needs at least this much room; with less, the
/// next read gets a new buffer.
const SPARE_BYTES_MIN: usize = 4096;

/// Why a stream cannot deliver more records. The connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A fragment header broke a bound (size or count).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The peer closed the stream in the middle of a record.
    #[error("connection closed in the middle of a record ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished record we held.
        buffered: usize,
    },
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`RecordReader::poll_record`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// A whole record.
    Record(Bytes),
    /// No whole record yet (any part of one that came is kept).
    Nothing,
    /// The peer closed the stream.
    Ended,
}

/// Frames records from a byte stream. Cancel-safe: all state lives in `self`, and the only
/// await point is a `read_buf`, which either appended bytes or did nothing.
#[derive(Debug)]
pub struct RecordReader {
    buf: BytesMut,
    decoder: RecordDecoder,
    record_bytes_max: usize,
    read_buffer_bytes: usize,
    /// The last record was a big one: read the next header alone.
    last_was_big: bool,
}

/// How much one socket read may bring in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadSize {
    /// Exactly up to this many bytes: the rest of a big record, or the header after one.
    Exact(usize),
    /// As much as the buffer has room for, with room for at least this many bytes.
    Fill(usize),
}

impl RecordReader {
    /// A reader of records up to `record_bytes_max` bytes whose buffers hold
    /// `read_buffer_bytes` (a record that long or longer gets a buffer of its own size).
    pub fn new(record_bytes_max: usize, read_buffer_bytes: usize) -> Self {
        assert!(record_bytes_max > 0 && read_buffer_bytes > 0);
        RecordReader {
            buf: BytesMut::with_capacity(read_buffer_bytes),
            decoder: RecordDecoder::new(record_bytes_max),
            record_bytes_max,
            read_buffer_bytes,
            last_was_big: false,
        }
    }

    /// True if no byte of an unfinished record is held (closing now loses nothing).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.decoder.is_idle()
    }

    /// The next record, or `None` at a clean end of stream. Every read is counted in
    /// `bytes_in`.
    pub async fn next_record<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        bytes_in: &std::sync::atomic::AtomicU64,
    ) -> Result<Option<Bytes>, FrameError> {
        // Each round either returns or reads at least one byte, and a record is at most
        // `record_bytes_max` bytes long plus its fragment headers, so this ends.
        loop {
            if let Some(record) = self.take_record()? {
                return Ok(Some(record));
            }
            let room = self.make_room();
            let mut upto = (&mut *stream).take(room as u64);
            let n = upto.read_buf(&mut self.buf).await?;
            bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            if n == 0 {
                if self.is_idle() {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    buffered: self.buf.len() + self.decoder.buffered(),
                });
            }
        }
    }

    /// The next record from what the socket `fd` holds right now, without waiting: a
    /// non-blocking `recv` on the descriptor itself. At [`Polled::Ended`] the next
    /// [`Self::next_record`] tells a clean end from a truncated record.
    ///
    /// Why the descriptor and not the runtime's stream: a busy poll must see bytes the
    /// event loop has not reported yet, and tokio answers reads from its readiness state
    /// (cleared by the last empty read) until its next `epoll_wait`. Reading behind the
    /// runtime's back loses no wake-up: epoll reports arrivals as edges, so bytes arriving
    /// after this read still wake a reader waiting in the runtime.
    pub fn poll_record(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        bytes_in: &std::sync::atomic::AtomicU64,
    ) -> Result<Polled, FrameError> {
        use std::os::fd::AsRawFd;
        loop {
            if let Some(record) = self.take_record()? {
                return Ok(Polled::Record(record));
            }
            let room = self.make_room();
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: `recv` writes at most `room` bytes into the spare capacity, which
            // `make_room` left at least that long, and which `self.buf` owns.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    room,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {
                        Ok(Polled::Nothing)
                    }
                    _ => Err(FrameError::Io(err)),
                };
            }
            if n == 0 {
                return Ok(Polled::Ended);
            }
            let n = n as usize;
            // SAFETY: the kernel initialised these `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + n) };
            bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Makes room in the buffer for the next socket read; returns how many bytes it may
    /// bring in (at most the spare capacity).
    fn make_room(&mut self) -> usize {
        match self.read_size() {
            ReadSize::Exact(n) => {
                self.buf.reserve(n);
                n
            }
            ReadSize::Fill(n) => {
                // Small records fill one buffer before the next is allocated. A new one per
                // read cost an allocation of `read_buffer_bytes` per read, too big for
                // malloc's per-thread cache: 77,453 of them in the node in one `bench nfs
                // --quick`, 1,772 after.
                if self.buf.capacity() - self.buf.len() < n.max(SPARE_BYTES_MIN) {
                    self.buf.reserve(n.max(self.read_buffer_bytes));
                }
                self.buf.capacity() - self.buf.len()
            }
        }
    }

    /// The length of the single final fragment starting the buffer, if the buffer starts a
    /// record that way and its length is within the cap (the fast path).
    fn single_fragment_len(&self) -> Option<usize> {
        if !self.decoder.is_idle() || self.buf.len() < RECORD_MARK_BYTES {
            return None;
        }
        let mut mark = [0u8; RECORD_MARK_BYTES];
        mark.copy_from_slice(&self.buf[..RECORD_MARK_BYTES]);
        let word = u32::from_be_bytes(mark);
        let len = (word & !LAST_FRAGMENT_BIT) as usize;
        (word & LAST_FRAGMENT_BIT != 0 && len <= self.record_bytes_max).then_some(len)
    }

    /// A record this long is read exactly, into a buffer of its own.
    fn is_big(&self, len: usize) -> bool {
        len >= self.read_buffer_bytes
    }

    /// Bytes to read before [`Self::take_record`] can make progress (≥ 1).
    fn bytes_wanted(&self) -> usize {
        match self.single_fragment_len() {
            Some(len) => (RECORD_MARK_BYTES + len)
                .saturating_sub(self.buf.len())
                .max(1),
            None if self.decoder.is_idle() => {
                RECORD_MARK_BYTES.saturating_sub(self.buf.len()).max(1)
            }
            None => self.decoder.wants().saturating_sub(self.buf.len()).max(1),
        }
    }

    /// The next socket read's size (see the module docs for why big records are exact).
    fn read_size(&self) -> ReadSize {
        let wanted = self.bytes_wanted();
        if self
            .single_fragment_len()
            .is_some_and(|len| self.is_big(len))
        {
            return ReadSize::Exact(wanted);
        }
        if self.last_was_big && self.buf.is_empty() && self.decoder.is_idle() {
            return ReadSize::Exact(RECORD_MARK_BYTES);
        }
        ReadSize::Fill(wanted)
    }

    /// A complete record from the buffered bytes, if there is one.
    fn take_record(&mut self) -> Result<Option<Bytes>, RecordError> {
        if let Some(len) = self.single_fragment_len() {
            if self.buf.len() < RECORD_MARK_BYTES + len {
                return Ok(None);
            }
            self.last_was_big = self.is_big(len);
            self.buf.advance(RECORD_MARK_BYTES);
            return Ok(Some(self.buf.split_to(len).freeze()));
        }
        if self.decoder.is_idle() && self.buf.len() < RECORD_MARK_BYTES {
            // Not even a whole first header: wait, so the fast path can look at it.
            return Ok(None);
        }
        // The slow path; feed consumes at most up to the end of one record per call, and
        // consumes at least one byte while input is left, so this loop is bounded by the
        // buffer length.
        while !self.buf.is_empty() {
            let fed = self.decoder.feed(&self.buf)?;
            debug_assert!(fed.consumed > 0 || fed.record.is_some());
            self.buf.advance(fed.consumed);
            if let Some(record) = fed.record {
                self.last_was_big = false;
                return Ok(Some(Bytes::from(record)));
            }
            if fed.consumed == 0 {
                break;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use twinfiler_proto::record::{frame, record_mark, RECORD_BYTES_MAX};

    async fn read_all(input: Vec<u8>, chunk: usize) -> Result<Vec<Bytes>, FrameError> {
        let (mut tx, mut rx) = tokio::io::duplex(chunk.max(16));
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut reader = RecordReader::new(RECORD_BYTES_MAX, 64);
        let counter = AtomicU64::new(0);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match reader.next_record(&mut rx, &counter).await? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        writer.await.unwrap();
        Ok(out)
    }

    #[tokio::test]
    async fn single_and_multi_fragment_records_in_any_chunking() {
        let mut stream = frame(b"first record");
        stream.extend_from_slice(&record_mark(3, false));
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&record_mark(0, false));
        stream.extend_from_slice(&record_mark(2, true));
        stream.extend_from_slice(b"de");
        let big = vec![7u8; 300_000];
        stream.extend_from_slice(&frame(&big));
        stream.extend_from_slice(&frame(b""));
        for chunk in [1, 3, 5, 64, 1000, 1 << 20] {
            let records = read_all(stream.clone(), chunk).await.unwrap();
            assert_eq!(records.len(), 4, "chunk {chunk}");
            assert_eq!(&records[0][..], b"first record");
            assert_eq!(&records[1][..], b"abcde");
            assert_eq!(&records[2][..], &big[..]);
            assert!(records[3].is_empty());
        }
    }

    #[tokio::test]
    async fn a_big_record_is_read_to_its_end_and_no_further() {
        // Big against the read buffer, and with a remainder after the first read smaller
        // than a read buffer: a plain read would run on into the next record.
        let big = vec![9u8; 6_000];
        let mut stream = frame(&big);
        stream.extend_from_slice(&frame(b"next"));
        stream.extend_from_slice(&frame(&big));
        let mut rx = &stream[..];
        let mut reader = RecordReader::new(RECORD_BYTES_MAX, 4096);
        let counter = AtomicU64::new(0);
        let record = reader.next_record(&mut rx, &counter).await.unwrap();
        assert_eq!(record.unwrap(), big);
        assert!(
            reader.buf.is_empty(),
            "the next record was read into the big one's buffer"
        );
        assert_eq!(reader.read_size(), ReadSize::Exact(RECORD_MARK_BYTES));
        let record = reader.next_record(&mut rx, &counter).await.unwrap();
        assert_eq!(record.unwrap(), &b"next"[..]);
        let record = reader.next_record(&mut rx, &counter).await.unwrap();
        assert_eq!(record.unwrap(), big);
        assert!(reader
            .next_record(&mut rx, &counter)
            .await
            .unwrap()
            .is_none());
        assert_eq!(counter.into_inner(), stream.len() as u64);
    }

    #[tokio::test]
    async fn a_poll_takes_what_the_socket_holds_and_never_waits() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut reader = RecordReader::new(RECORD_BYTES_MAX, 4096);
        let counter = AtomicU64::new(0);
        let poll = |reader: &mut RecordReader| reader.poll_record(rx.as_fd(), &counter).unwrap();
        let record = |bytes: &[u8]| Polled::Record(Bytes::copy_from_slice(bytes));
        assert_eq!(poll(&mut reader), Polled::Nothing);
        let first = frame(b"first call");
        tx.write_all(&first[..7]).unwrap();
        assert_eq!(poll(&mut reader), Polled::Nothing);
        // The rest of the first and a whole second record in one write.
        let mut rest = first[7..].to_vec();
        rest.extend_from_slice(&frame(b"second"));
        tx.write_all(&rest).unwrap();
        assert_eq!(poll(&mut reader), record(b"first call"));
        assert_eq!(poll(&mut reader), record(b"second"));
        // A big record and a small one in one write, to a reader whose buffer holds less
        // than the big one: it is read to its end and no further, as by the ordinary read.
        let mut reader = RecordReader::new(RECORD_BYTES_MAX, 4096);
        let big = vec![5u8; 6_000];
        let mut both = frame(&big);
        both.extend_from_slice(&frame(b"after"));
        tx.write_all(&both).unwrap();
        assert_eq!(poll(&mut reader), record(&big));
        assert!(reader.buf.is_empty(), "the poll read past the big record");
        assert_eq!(poll(&mut reader), record(b"after"));
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::Relaxed),
            (7 + rest.len() + both.len()) as u64
        );
        // A record cut by the end of the stream: the poll sees the end, and the ordinary
        // read reports the truncation.
        tx.write_all(&frame(b"cut short")[..6]).unwrap();
        drop(tx);
        assert_eq!(poll(&mut reader), Polled::Ended);
        let mut rx = tokio::net::UnixStream::from_std(rx).unwrap();
        match reader.next_record(&mut rx, &counter).await {
            Err(FrameError::Truncated { buffered: 6 }) => {}
            other => panic!("expected a truncation after 6 bytes, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn small_records_in_separate_reads_share_one_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let mut reader = RecordReader::new(RECORD_BYTES_MAX, 64 * 1024);
        let counter = AtomicU64::new(0);
        let mut records = Vec::new();
        for body in [&b"first"[..], b"second", b"third"] {
            // Each record is in the socket alone when the reader reads.
            tx.write_all(&frame(body)).await.unwrap();
            let record = reader.next_record(&mut rx, &counter).await.unwrap();
            records.push(record.unwrap());
        }
        for pair in records.windows(2) {
            let after = pair[0].as_ptr() as usize + pair[0].len() + RECORD_MARK_BYTES;
            assert_eq!(
                pair[1].as_ptr() as usize,
                after,
                "a record was read into a new buffer"
            );
        }
    }

    #[tokio::test]
    async fn oversized_fragment_fails_on_the_header() {
        let mut stream = record_mark(RECORD_BYTES_MAX + 1, true).to_vec();
        stream.extend_from_slice(b"xxxx");
        let err = read_all(stream, 8).await.unwrap_err();
        assert!(matches!(
            err,
            FrameError::Record(RecordError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn eof_inside_a_record_is_truncation() {
        let mut stream = frame(b"complete");
        stream.extend_from_slice(&record_mark(100, true));
        stream.extend_from_slice(b"only part");
        let err = read_all(stream, 7).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err:?}");
    }
}
