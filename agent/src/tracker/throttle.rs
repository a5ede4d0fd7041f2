//! A token bucket that caps how fast a tracker reads the disk, so the agent's share of the
//! disk's bandwidth stays bounded on a busy server.
//!
//! The bucket holds up to `burst` bytes of credit and refills at `rate` bytes per second.
//! A read of `n` bytes takes `n` bytes of credit; when that drives the credit negative the
//! caller sleeps until it is back to zero. A read larger than the burst is therefore allowed,
//! at the cost of a proportionally longer wait, and the long-run rate never exceeds `rate`.
//!
//! Arithmetic is exact integer math in byte-nanoseconds (bytes × 10⁹), and time comes from a
//! [`Clock`], so tests drive it with a fake clock instead of timing.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Where a [`ReadThrottle`] gets the time and how it waits.
pub trait Clock: Send {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Waits for `d`.
    fn sleep(&self, d: Duration);
}

/// The real clock: [`Instant::now`] and [`std::thread::sleep`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A token bucket limiting read throughput to `rate` bytes per second.
#[derive(Debug)]
pub struct ReadThrottle<C: Clock = MonotonicClock> {
    /// Refill rate, bytes per second.
    rate: u64,
    /// Bucket capacity in byte-nanoseconds.
    capacity: i128,
    /// Current credit in byte-nanoseconds; negative while a caller is (or should be) waiting.
    credit: i128,
    /// When `credit` was last brought up to date.
    last: Instant,
    clock: C,
}

impl ReadThrottle<MonotonicClock> {
    /// A throttle at `bytes_per_sec`, with a burst of a tenth of a second's worth of bytes
    /// (at least 4 MiB, one tracker read chunk).
    pub fn new(bytes_per_sec: NonZeroU64) -> Self {
        let burst = (bytes_per_sec.get() / 10).max(4 << 20);
        Self::with_clock(bytes_per_sec, burst, MonotonicClock)
    }
}

impl<C: Clock> ReadThrottle<C> {
    /// A throttle at `bytes_per_sec` that lets up to `burst` bytes through without waiting
    /// after an idle period, reading time from `clock`. The bucket starts full.
    pub fn with_clock(bytes_per_sec: NonZeroU64, burst: u64, clock: C) -> Self {
        let capacity = i128::from(burst) * NANOS_PER_SEC;
        let last = clock.now();
        Self { rate: bytes_per_sec.get(), capacity, credit: capacity, last, clock }
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The burst in bytes.
    pub fn burst(&self) -> u64 {
        u64::try_from(self.capacity / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// Changes the rate from now on; credit earned so far is kept.
    pub fn set_rate(&mut self, bytes_per_sec: NonZeroU64) {
        self.refill();
        self.rate = bytes_per_sec.get();
    }

    /// Brings the credit up to date with the clock.
    fn refill(&mut self) {
        let now = self.clock.now();
        let elapsed = now.saturating_duration_since(self.last).as_nanos() as i128;
        self.last = now;
        self.credit = (self.credit + elapsed * i128::from(self.rate)).min(self.capacity);
    }

    /// Takes `bytes` of credit and returns how long the caller must wait before reading them
    /// (zero when the credit covered it). Does not sleep; see [`ReadThrottle::acquire`].
    pub fn reserve(&mut self, bytes: u64) -> Duration {
        self.refill();
        self.credit -= i128::from(bytes) * NANOS_PER_SEC;
        if self.credit >= 0 {
            return Duration::ZERO;
        }
        let rate = i128::from(self.rate);
        // Ceiling division: waiting this long brings the credit back to at least zero.
        let wait_ns = (-self.credit + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }

    /// Takes `bytes` of credit, sleeping on the clock as long as needed. Returns the time
    /// slept.
    pub fn acquire(&mut self, bytes: u64) -> Duration {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A clock that only moves when slept on or advanced by the test.
    #[derive(Clone)]
    struct FakeClock {
        base: Instant,
        offset: Arc<Mutex<Duration>>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self { base: Instant::now(), offset: Arc::new(Mutex::new(Duration::ZERO)) }
        }
        fn advance(&self, d: Duration) {
            *self.offset.lock().unwrap() += d;
        }
        fn elapsed(&self) -> Duration {
            *self.offset.lock().unwrap()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + self.elapsed()
        }
        fn sleep(&self, d: Duration) {
            self.advance(d);
        }
    }

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    const MB: u64 = 1_000_000;

    #[test]
    fn burst_then_rate() {
        let clock = FakeClock::new();
        let mut t = ReadThrottle::with_clock(nz(MB), MB, clock.clone());
        // A full bucket lets one burst through at once.
        assert_eq!(t.acquire(MB), Duration::ZERO);
        // The next megabyte costs exactly one second.
        assert_eq!(t.acquire(MB), Duration::from_secs(1));
        assert_eq!(clock.elapsed(), Duration::from_secs(1));
        // Half a megabyte, half a second.
        assert_eq!(t.acquire(MB / 2), Duration::from_millis(500));
        // One byte at 1 MB/s is one microsecond.
        assert_eq!(t.acquire(1), Duration::from_micros(1));
        assert_eq!(clock.elapsed(), Duration::from_nanos(1_500_001_000));
    }

    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let clock = FakeClock::new();
        let mut t = ReadThrottle::with_clock(nz(MB), 2 * MB, clock.clone());
        assert_eq!(t.acquire(2 * MB), Duration::ZERO);
        // An hour idle earns no more than the burst.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(t.acquire(2 * MB), Duration::ZERO);
        assert_eq!(t.acquire(MB), Duration::from_secs(1));
        // Partial refill: 250 ms earns 250 kB.
        clock.advance(Duration::from_millis(250));
        assert_eq!(t.reserve(250_000), Duration::ZERO);
        assert_eq!(t.reserve(250_000), Duration::from_millis(250));
    }

    #[test]
    fn reads_larger_than_the_burst_wait_proportionally() {
        let clock = FakeClock::new();
        let mut t = ReadThrottle::with_clock(nz(4 * MB), MB, clock.clone());
        // 1 MB of credit, 9 MB asked: 8 MB of debt at 4 MB/s.
        assert_eq!(t.acquire(9 * MB), Duration::from_secs(2));
        // Over a long run the average rate is the configured one.
        for _ in 0..100 {
            t.acquire(4 * MB);
        }
        assert_eq!(clock.elapsed(), Duration::from_secs(102));
    }

    #[test]
    fn ceiling_rounding_never_undershoots() {
        let clock = FakeClock::new();
        // 3 bytes/s: one byte costs 333_333_333.33 ns; waits round up and the remainder is
        // credited to the next read, so three bytes take exactly one second.
        let mut t = ReadThrottle::with_clock(nz(3), 1, clock.clone());
        assert_eq!(t.acquire(1), Duration::ZERO);
        assert_eq!(t.acquire(1), Duration::from_nanos(333_333_334));
        assert_eq!(t.acquire(1), Duration::from_nanos(333_333_333));
        assert_eq!(t.acquire(1), Duration::from_nanos(333_333_333));
        assert_eq!(clock.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn rate_change_keeps_earned_credit() {
        let clock = FakeClock::new();
        let mut t = ReadThrottle::with_clock(nz(MB), MB, clock.clone());
        assert_eq!(t.acquire(MB), Duration::ZERO);
        clock.advance(Duration::from_millis(500)); // earns 0.5 MB at the old rate
        t.set_rate(nz(10 * MB));
        assert_eq!(t.rate(), 10 * MB);
        assert_eq!(t.burst(), MB);
        // 0.5 MB credit, 1.5 MB asked: 1 MB of debt at 10 MB/s.
        assert_eq!(t.acquire(3 * MB / 2), Duration::from_millis(100));
    }

    #[test]
    fn default_burst_is_at_least_one_chunk() {
        assert_eq!(ReadThrottle::new(nz(MB)).burst(), 4 << 20);
        assert_eq!(ReadThrottle::new(nz(1000 * MB)).burst(), 100 * MB);
    }
}
