//! A pool of body buffers for ranged GETs, so a sequential reader reuses memory that is already
//! mapped instead of asking the kernel for fresh, zeroed pages for every part (page faults and
//! page clearing were a tenth of the daemon's CPU on a cold read).
//!
//! Buffers come back to the pool when the last `Bytes` slice of them is dropped. The pool keeps
//! at most `IDLE_BYTES` of idle buffers, by size class (whole MiB), and frees the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Idle buffers kept for reuse at most: eight 8 MiB parts.
const IDLE_BYTES: usize = 64 << 20;
/// Buffers are sized in whole MiB so parts of one size share a class.
const CLASS: usize = 1 << 20;
/// The largest buffer made up front: the largest --part-size. A body announced as larger (or of
/// unknown length) grows past it instead of reserving memory it may never fill.
const LARGEST_CLASS: usize = 1 << 30;

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
    /// An empty buffer with room for `len` bytes (up to `LARGEST_CLASS`; a larger body grows it).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let class = len.min(LARGEST_CLASS).div_ceil(CLASS).max(1) * CLASS;
        let reused = {
            let mut idle = self.lock();
            let buffer = idle.by_class.get_mut(&class).and_then(Vec::pop);
            if let Some(buffer) = &buffer {
                idle.bytes -= buffer.capacity();
            }
            buffer
        };
        reused.unwrap_or_else(|| Vec::with_capacity(class))
    }

    /// Freezes a filled buffer; its memory returns to the pool when the last slice goes.
    pub fn freeze(&self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buffer,
            pool: self.clone(),
        })
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        let class = buffer.capacity();
        if class == 0 || !class.is_multiple_of(CLASS) {
            return;
        }
        let mut idle = self.lock();
        if idle.bytes + class <= IDLE_BYTES {
            buffer.clear();
            idle.bytes += class;
            idle.by_class.entry(class).or_default().push(buffer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }
}

struct Pooled {
    buffer: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_goes() {
        let pool = BufferPool::default();
        let mut buffer = pool.take(3 * CLASS - 5);
        assert_eq!(buffer.capacity(), 3 * CLASS);
        let address = buffer.as_ptr();
        buffer.extend_from_slice(b"hello");
        let bytes = pool.freeze(buffer);
        let slice = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds it");
        assert_eq!(&slice[..], b"el");
        drop(slice);
        assert_eq!(pool.idle_bytes(), 3 * CLASS);
        let again = pool.take(3 * CLASS);
        assert_eq!(again.as_ptr(), address, "the same memory is reused");
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn absurd_sizes_do_not_overflow_or_reserve_memory() {
        let pool = BufferPool::default();
        assert_eq!(pool.take(usize::MAX).capacity(), LARGEST_CLASS);
        assert_eq!(pool.take(0).capacity(), CLASS);
    }

    #[test]
    fn idle_memory_is_bounded() {
        let pool = BufferPool::default();
        let buffers: Vec<_> = (0..20).map(|_| pool.freeze(pool.take(8 * CLASS))).collect();
        drop(buffers);
        assert_eq!(pool.idle_bytes(), IDLE_BYTES);
    }
}
