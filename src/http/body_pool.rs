//! A response buffer kept between requests for a few seconds: the `GET /api/nodes` body of
//! a fleet is 4–5 MiB, and the daemon's allocator gives freed pages back to the system at
//! once (`main.rs`, issue 13), so a fresh buffer per request was faulted in page by page
//! every time (p50 10 → 20 ms at 5,000 nodes). A client polling keeps the buffer warm;
//! once nobody has asked for [`KEEP`], it is freed and the memory goes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// How long an unused buffer is kept.
pub const KEEP: Duration = Duration::from_secs(5);

/// One reusable buffer. Cheap to clone.
#[derive(Clone, Default)]
pub struct BodyPool {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    spare: Mutex<Spare>,
    /// A sweeper task is waiting to free the buffer (cleared under the `spare` lock).
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Spare {
    /// The idle buffer (empty, with its capacity), if any.
    buf: Option<Vec<u8>>,
    /// When a buffer was last handed back.
    last_used: Option<Instant>,
}

impl BodyPool {
    fn spare(&self) -> MutexGuard<'_, Spare> {
        self.inner.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept buffer (empty, with room for at least `hint` bytes), or a new one.
    pub fn take(&self, hint: usize) -> Vec<u8> {
        let mut buf = self.spare().buf.take().unwrap_or_default();
        buf.reserve(hint);
        buf
    }

    /// The finished body: it goes back to the pool when the response has been sent.
    pub fn body(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Whether a buffer is kept now.
    #[cfg(test)]
    pub fn holds(&self) -> bool {
        self.spare().buf.is_some()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        {
            let mut spare = self.spare();
            if spare
                .buf
                .as_ref()
                .is_none_or(|s| s.capacity() < buf.capacity())
            {
                spare.buf = Some(buf);
            }
            spare.last_used = Some(Instant::now());
        }
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.clone().sweep());
            }
            // No runtime (a body dropped outside one): nothing could free it later, so
            // keep nothing.
            Err(_) => {
                let mut spare = self.spare();
                spare.buf = None;
                self.inner.sweeping.store(false, Ordering::Release);
            }
        }
    }

    /// Frees the buffer once it has not been used for [`KEEP`].
    async fn sweep(self) {
        loop {
            let wait = {
                let mut spare = self.spare();
                let idle = spare.last_used.map_or(KEEP, |t| t.elapsed());
                if idle >= KEEP {
                    spare.buf = None;
                    // Under the lock: a buffer handed back after this starts a new sweeper.
                    self.inner.sweeping.store(false, Ordering::Release);
                    return;
                }
                KEEP - idle
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A body's bytes; dropping it (after the response is written) returns the buffer.
struct Pooled {
    buf: Vec<u8>,
    pool: BodyPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_buffer_is_reused_while_asked_for_and_freed_after_keep() {
        let pool = BodyPool::default();
        let mut buf = pool.take(1 << 20);
        buf.extend_from_slice(b"{\"nodes\":[]}");
        let first = buf.as_ptr();
        let body = pool.body(buf);
        assert_eq!(&body[..], b"{\"nodes\":[]}");
        assert!(!pool.holds(), "in use while the response is sent");
        drop(body);
        assert!(pool.holds(), "kept once sent");

        // A request 3 s later gets the same memory, empty.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let buf = pool.take(1 << 20);
        assert_eq!(buf.as_ptr(), first);
        assert!(buf.is_empty() && buf.capacity() >= 1 << 20);
        drop(pool.body(buf));

        // Still kept 4 s later (3 + 4 > KEEP, but it was used 4 s ago) …
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(pool.holds());
        // … and freed once nobody asked for KEEP.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!pool.holds());

        // The next request starts afresh, and is kept again.
        drop(pool.body(pool.take(16)));
        assert!(pool.holds());
        tokio::time::sleep(KEEP + Duration::from_secs(1)).await;
        assert!(!pool.holds());
    }
}
