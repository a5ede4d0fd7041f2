//! In-memory hand-off of shipped batches from the process server to a master target in
//! the same process.
//!
//! When one appliance runs both roles on the same target (the default, and every
//! on-premises-to-on-premises setup), the master target would read back each log object
//! the process server has just written, decrypt it and decompress it, only to get the
//! very batch the process server already held in memory. Instead, right after `put-log`
//! returned (the log is durable at the target, exactly as without the hand-off), the
//! process server offers the batch's clear bytes under the log's name; the master target
//! takes them when it applies that log, and reads the log from the target only when no
//! offer is there (a restart, another process, or the budget was exceeded).
//!
//! Nothing depends on an offer being taken: the log object is the record, the hand-off
//! only saves work. Offers are bounded in bytes; the oldest are dropped first.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Default bound of the bytes held by a [`Handoff`].
pub const DEFAULT_BUDGET: usize = 256 << 20;

/// Batches offered by the process server, by log name; see the module documentation.
#[derive(Debug)]
pub struct Handoff {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Handoff {
    /// A hand-off that holds at most `budget` bytes.
    pub fn new(budget: usize) -> Handoff {
        Handoff { budget, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `batch` (an encoded batch, clear) for the log `name`. Older offers are dropped
    /// to stay within the budget; a batch larger than the budget is not kept.
    pub fn offer(&self, name: String, batch: Bytes) {
        if batch.len() > self.budget {
            return;
        }
        let mut g = self.lock();
        if let Some(old) = g.map.remove(&name) {
            g.bytes -= old.len();
            g.order.retain(|n| n != &name);
        }
        while g.bytes + batch.len() > self.budget {
            let Some(oldest) = g.order.pop_front() else { break };
            if let Some(b) = g.map.remove(&oldest) {
                g.bytes -= b.len();
            }
        }
        g.bytes += batch.len();
        g.order.push_back(name.clone());
        g.map.insert(name, batch);
    }

    /// Takes the batch offered for `name`, if it is still there.
    pub fn take(&self, name: &str) -> Option<Bytes> {
        let mut g = self.lock();
        let b = g.map.remove(name)?;
        g.bytes -= b.len();
        if let Some(i) = g.order.iter().position(|n| n == name) {
            g.order.remove(i);
        }
        Some(b)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_taken_once_and_bounded_oldest_first() {
        let h = Handoff::new(10);
        h.offer("a".into(), Bytes::from_static(b"1234"));
        h.offer("b".into(), Bytes::from_static(b"5678"));
        assert_eq!(h.bytes(), 8);
        // Over the budget: "a" goes.
        h.offer("c".into(), Bytes::from_static(b"9abc"));
        assert_eq!(h.take("a"), None);
        assert_eq!(h.take("b").as_deref(), Some(&b"5678"[..]));
        assert_eq!(h.take("b"), None);
        assert_eq!(h.bytes(), 4);
        // Too large for the budget: never kept.
        h.offer("d".into(), Bytes::from(vec![0; 11]));
        assert_eq!(h.take("d"), None);
        // Offered again under the same name: the newer bytes win, counted once.
        h.offer("c".into(), Bytes::from_static(b"xy"));
        assert_eq!(h.bytes(), 2);
        assert_eq!(h.take("c").as_deref(), Some(&b"xy"[..]));
        assert_eq!(h.bytes(), 0);
    }
}
