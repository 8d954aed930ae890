//! A pool of body buffers for ranged GETs, so a sequential reader reuses memory that is already
//! mapped instead of asking the kernel for fresh, zeroed pages for every part (page faults and
//! page clearing were a tenth of the daemon's CPU on a cold read).
//!
//! Each body starts at an address aligned to [`BODY_ALIGN`], so its whole blocks can go to the
//! block cache with O_DIRECT straight from where they were received, without a copy.
//!
//! Buffers come back to the pool when the last `Bytes` slice of them is dropped. The pool keeps
//! at most `IDLE_BYTES` of idle buffers, by size class (whole MiB), and frees the rest. The block
//! cache reads blocks from disk into buffers of its own pool the same way.

use crate::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes};

/// Idle buffers kept for reuse at most: eight 8 MiB parts.
const IDLE_BYTES: usize = 64 << 20;
/// Buffers are sized in whole MiB so parts of one size share a class.
const CLASS: usize = 1 << 20;
/// The largest buffer made up front: the largest --part-size. A body announced as larger (or of
/// unknown length) grows past it instead of reserving memory it may never fill.
const LARGEST_CLASS: usize = 1 << 30;
/// Where a body starts in its buffer: at an address that is a multiple of this (the largest
/// logical sector size in use, as O_DIRECT asks; the block cache's file layout is built on it).
/// The buffer has this much room more than its class for the padding before it.
pub const BODY_ALIGN: usize = 4096;

#[derive(Debug, Default)]
struct Idle {
    by_class: HashMap<usize, Vec<Vec<u8>>>,
    bytes: usize,
}

/// Reusable buffers, shared by every GET of a client.
#[derive(Clone, Debug, Default)]
pub struct BufferPool {
    idle: Arc<Mutex<Idle>>,
}

impl BufferPool {
    /// An empty body with room for `len` bytes (up to `LARGEST_CLASS`; a larger body grows it).
    pub fn take(&self, len: usize) -> Body {
        self.take_with_len(len, 0)
    }

    /// A body of `len` bytes that the caller overwrites whole (a read from disk). A reused
    /// buffer's old bytes stand in for them until then, rather than being zeroed first (zeroing
    /// 1 MiB per block read was a tenth of a warm read's CPU); only bytes it never held are.
    pub fn take_to_overwrite(&self, len: usize) -> Body {
        self.take_with_len(len, len)
    }

    /// A body with room for `room` bytes, `len` of them in it already: bytes a reused buffer
    /// held, else zeros.
    fn take_with_len(&self, room: usize, len: usize) -> Body {
        let class = room.min(LARGEST_CLASS).div_ceil(CLASS).max(1) * CLASS;
        let reused = {
            let mut idle = self.lock();
            let buffer = idle.by_class.get_mut(&class).and_then(Vec::pop);
            if let Some(buffer) = &buffer {
                idle.bytes -= buffer.capacity();
            }
            buffer
        };
        // A reused buffer comes back with the length it had (its bytes initialized up to there).
        let mut buffer = reused.unwrap_or_else(|| new_buffer(class + BODY_ALIGN));
        // `align_offset` may decline to align: the body then simply starts at 0.
        let start = Some(buffer.as_ptr().align_offset(BODY_ALIGN)).filter(|&pad| pad < BODY_ALIGN);
        let start = start.unwrap_or(0);
        if buffer.len() >= start + len {
            buffer.truncate(start + len);
        } else {
            buffer.resize(start + len, 0);
        }
        Body { buffer, start }
    }

    /// Freezes a filled body; its memory returns to the pool when the last slice goes.
    pub fn freeze(&self, body: Body) -> Bytes {
        Bytes::from_owner(Pooled {
            body,
            pool: self.clone(),
        })
    }

    fn give_back(&self, buffer: Vec<u8>) {
        let Some(class) = buffer.capacity().checked_sub(BODY_ALIGN) else {
            return;
        };
        if class == 0 || !class.is_multiple_of(CLASS) {
            return;
        }
        let mut idle = self.lock();
        if idle.bytes + buffer.capacity() <= IDLE_BYTES {
            idle.bytes += buffer.capacity();
            idle.by_class.entry(class).or_default().push(buffer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        lock(&self.idle)
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Transparent huge pages, where the kernel leaves them to the program (`madvise` mode): a
/// body in 2 MiB pages takes one page fault per 2 MiB instead of 512 when first filled, and its
/// pages are pinned for the block cache's O_DIRECT writes 512 at a time.
const HUGE_PAGE: usize = 2 << 20;

/// A new, empty buffer with room for `capacity` bytes, its whole huge pages marked as such.
fn new_buffer(capacity: usize) -> Vec<u8> {
    let buffer: Vec<u8> = Vec::with_capacity(capacity);
    let start = buffer.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + capacity) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: [first, end) lies inside the allocation `buffer` owns; MADV_HUGEPAGE only
        // advises the kernel how to back it and changes no byte of it. A refusal changes
        // nothing either, so its result is not needed.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
    buffer
}

/// A body being received: the bytes after `start` of `buffer` (before it, alignment padding).
pub struct Body {
    buffer: Vec<u8>,
    start: usize,
}

impl Body {
    pub fn extend_from_slice(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    pub fn len(&self) -> usize {
        self.buffer.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the body's length to `len`, zero-filling what it adds.
    pub fn resize(&mut self, len: usize) {
        self.buffer.resize(self.start + len, 0);
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}

// SAFETY: every method forwards to the buffer's own `BufMut` (a `Vec<u8>`'s), which keeps the
// trait's contract; the body is the buffer's bytes after `start`, and grows as the buffer does.
// A receiver that limits itself to the room the body was taken with never makes the buffer
// reallocate (which would keep the bytes, not the alignment).
unsafe impl BufMut for Body {
    fn remaining_mut(&self) -> usize {
        self.buffer.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        // SAFETY: the caller promises the `count` bytes after the end are initialized, which is
        // the buffer's contract as it is the body's.
        unsafe { self.buffer.advance_mut(count) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.buffer.chunk_mut()
    }
}

struct Pooled {
    body: Body,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.body.bytes()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.body.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_goes() {
        let pool = BufferPool::default();
        let mut buffer = pool.take(3 * CLASS - 5);
        assert_eq!(buffer.buffer.capacity(), 3 * CLASS + BODY_ALIGN);
        let address = buffer.buffer.as_ptr();
        buffer.extend_from_slice(b"hello");
        let bytes = pool.freeze(buffer);
        assert_eq!(
            bytes.as_ptr().align_offset(BODY_ALIGN),
            0,
            "the body starts aligned"
        );
        let slice = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds it");
        assert_eq!(&slice[..], b"el");
        drop(slice);
        assert_eq!(pool.idle_bytes(), 3 * CLASS + BODY_ALIGN);
        let again = pool.take(3 * CLASS);
        assert_eq!(again.buffer.as_ptr(), address, "the same memory is reused");
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn a_body_to_overwrite_has_its_length_at_once_and_a_reused_one_is_not_zeroed_first() {
        let pool = BufferPool::default();
        let fresh = pool.take_to_overwrite(5000);
        assert_eq!(fresh.len(), 5000);
        assert!(fresh.bytes().iter().all(|&b| b == 0), "never held: zeros");
        let address = fresh.buffer.as_ptr();
        let mut filled = fresh;
        filled.as_mut_slice().fill(7);
        drop(pool.freeze(filled));
        let again = pool.take_to_overwrite(4000);
        assert_eq!(again.buffer.as_ptr(), address, "the same memory is reused");
        assert_eq!(again.len(), 4000);
        assert!(again.bytes().iter().all(|&b| b == 7), "not zeroed again");
        drop(pool.freeze(again));
        // Longer than it held: the new bytes are zeros.
        let longer = pool.take_to_overwrite(6000);
        assert_eq!(longer.len(), 6000);
        assert!(longer.bytes()[4000..].iter().all(|&b| b == 0));
        drop(pool.freeze(longer));
        // An appender still starts from an empty body.
        assert!(pool.take(6000).is_empty());
    }

    #[test]
    fn absurd_sizes_do_not_overflow_or_reserve_memory() {
        let pool = BufferPool::default();
        assert_eq!(
            pool.take(usize::MAX).buffer.capacity(),
            LARGEST_CLASS + BODY_ALIGN
        );
        assert_eq!(pool.take(0).buffer.capacity(), CLASS + BODY_ALIGN);
    }

    /// The `VmFlags` of the mapping holding `address`, from /proc/self/smaps.
    fn vm_flags_at(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|first| first.split_once('-'));
            if let Some((start, end)) = range
                && let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            {
                inside = (start..end).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_owned();
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    #[test]
    fn a_new_buffer_asks_for_huge_pages_where_it_spans_them() {
        let pool = BufferPool::default();
        let body = pool.take(8 * CLASS);
        let start = body.buffer.as_ptr() as usize;
        let huge = start.next_multiple_of(HUGE_PAGE);
        let flags = vm_flags_at(huge);
        assert!(
            flags.split_whitespace().any(|flag| flag == "hg"),
            "MADV_HUGEPAGE on the buffer's whole 2 MiB pages: {flags}"
        );
    }

    #[test]
    fn idle_memory_is_bounded() {
        let pool = BufferPool::default();
        let buffers: Vec<_> = (0..20).map(|_| pool.freeze(pool.take(8 * CLASS))).collect();
        drop(buffers);
        let one = 8 * CLASS + BODY_ALIGN;
        assert_eq!(pool.idle_bytes(), IDLE_BYTES / one * one, "as many as fit");
    }
}
