//! The network bandwidth cap: a schedule of limits by local time, and the token bucket that
//! enforces the limit in force.
//!
//! The schedule is a pure function of (weekday, minute of the day) — [`Schedule::rate_at`] —
//! so it is tested without clocks; [`Schedule::rate_now`] only feeds it the local time. The
//! bucket reuses the tracker's exact integer [`ReadThrottle`] arithmetic and sleeps on the
//! tokio timer, so a sender waiting for credit never blocks a thread. When the schedule
//! changes the limit, the bucket changes rate and keeps the credit it has earned; a window
//! with 0 Mbit/s pauses sending until it ends.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use crate::tracker::ReadThrottle;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// Parses `mon` … `sun` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|d| d.eq_ignore_ascii_case(s))?;
        Some(Self::ALL[i])
    }

    /// The day before.
    pub fn prev(self) -> Self {
        let i = Self::ALL.iter().position(|d| *d == self).unwrap_or(0);
        Self::ALL[(i + 6) % 7]
    }

    fn from_chrono(d: chrono::Weekday) -> Self {
        Self::ALL[d.num_days_from_monday() as usize]
    }
}

/// One window of the schedule, checked and in the units the code uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days the window starts on.
    pub days: Vec<Weekday>,
    /// Start, minutes after local midnight, inclusive.
    pub from: u16,
    /// End, minutes after local midnight, exclusive. `to < from` runs past midnight into the
    /// next day; `to == from` is the whole day.
    pub to: u16,
    /// The limit during the window in bytes per second; 0 pauses sending.
    pub bytes_per_sec: u64,
}

impl Window {
    /// Whether the window covers `minute` of `day`.
    pub fn covers(&self, day: Weekday, minute: u16) -> bool {
        let on = |d: Weekday| self.days.contains(&d);
        if self.from == self.to {
            on(day)
        } else if self.from < self.to {
            on(day) && (self.from..self.to).contains(&minute)
        } else {
            // Past midnight: the evening part belongs to the start day, the morning part to
            // the day after it.
            (on(day) && minute >= self.from) || (on(day.prev()) && minute < self.to)
        }
    }
}

/// The bandwidth limit over the week.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    /// Bytes per second outside every window; `None` is unlimited.
    pub default: Option<u64>,
    /// Windows in configuration order; the first that covers the time wins.
    pub windows: Vec<Window>,
}

impl Schedule {
    /// No limit, ever.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The limit in bytes per second at `minute` (0..1440) of `day`: `None` is unlimited,
    /// `Some(0)` paused.
    pub fn rate_at(&self, day: Weekday, minute: u16) -> Option<u64> {
        match self.windows.iter().find(|w| w.covers(day, minute)) {
            Some(w) => Some(w.bytes_per_sec),
            None => self.default,
        }
    }

    /// The limit now, in local time.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "chrono's hour() is below 24 and minute() below 60: the minute of the day is below 1440"
    )]
    pub fn rate_now(&self) -> Option<u64> {
        if self.windows.is_empty() {
            return self.default;
        }
        use chrono::{Datelike as _, Timelike as _};
        let now = chrono::Local::now();
        let minute = (now.hour() * 60 + now.minute()) as u16;
        self.rate_at(Weekday::from_chrono(now.weekday()), minute)
    }
}

/// How often the limit in force is looked up again.
const RECHECK: Duration = Duration::from_secs(10);
/// How long a paused sender sleeps before looking at the schedule again.
const PAUSED_SLEEP: Duration = Duration::from_secs(15);

/// An async token bucket whose rate follows a [`Schedule`].
#[derive(Debug)]
pub struct Limiter {
    schedule: Schedule,
    bucket: Option<ReadThrottle>,
    /// The limit last looked up, and when.
    current: Option<u64>,
    checked: Option<Instant>,
}

impl Limiter {
    /// A limiter following `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self { schedule, bucket: None, current: None, checked: None }
    }

    /// The limit in force (bytes per second; `None` unlimited, `Some(0)` paused).
    pub fn current(&mut self) -> Option<u64> {
        if self.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
            self.checked = Some(Instant::now());
            let rate = self.schedule.rate_now();
            if rate != self.current {
                tracing::info!(
                    limit = %match rate {
                        None => "unlimited".to_string(),
                        Some(0) => "paused".to_string(),
                        Some(r) => format!("{:.3} Mbit/s", r as f64 / 125_000.0),
                    },
                    "bandwidth limit changed"
                );
            }
            self.current = rate;
        }
        self.current
    }

    /// Waits until `bytes` may be sent under the limit in force.
    pub async fn acquire(&mut self, bytes: u64) {
        loop {
            // No limit; a limit of 0 (paused); a rate.
            match self.current().map(NonZeroU64::new) {
                None => return,
                Some(None) => {
                    tokio::time::sleep(PAUSED_SLEEP).await;
                    self.checked = None;
                }
                Some(Some(rate)) => {
                    let bucket = match &mut self.bucket {
                        Some(b) => {
                            if b.rate() != rate.get() {
                                b.set_rate(rate);
                            }
                            b
                        }
                        None => self.bucket.insert(ReadThrottle::with_clock(
                            rate,
                            rate.get().max(64 * 1024),
                            crate::tracker::MonotonicClock,
                        )),
                    };
                    let wait = bucket.reserve(bytes);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Weekday::*;

    fn w(days: &[Weekday], from: u16, to: u16, rate: u64) -> Window {
        Window { days: days.to_vec(), from, to, bytes_per_sec: rate }
    }

    const H: u16 = 60;

    #[test]
    fn no_windows_is_the_default() {
        assert_eq!(Schedule::unlimited().rate_at(Mon, 0), None);
        let s = Schedule { default: Some(5), windows: vec![] };
        assert_eq!(s.rate_at(Sun, 1439), Some(5));
    }

    #[test]
    fn business_hours_on_weekdays() {
        let s = Schedule {
            default: Some(1000),
            windows: vec![w(&[Mon, Tue, Wed, Thu, Fri], 8 * H, 18 * H, 10)],
        };
        assert_eq!(s.rate_at(Mon, 8 * H), Some(10), "start is inclusive");
        assert_eq!(s.rate_at(Fri, 18 * H - 1), Some(10));
        assert_eq!(s.rate_at(Fri, 18 * H), Some(1000), "end is exclusive");
        assert_eq!(s.rate_at(Tue, 7 * H + 59), Some(1000));
        assert_eq!(s.rate_at(Sat, 12 * H), Some(1000), "not on weekends");
    }

    #[test]
    fn first_matching_window_wins() {
        let s = Schedule {
            default: None,
            windows: vec![w(&[Mon], 12 * H, 13 * H, 1), w(&Weekday::ALL, 8 * H, 18 * H, 2)],
        };
        assert_eq!(s.rate_at(Mon, 12 * H + 30), Some(1));
        assert_eq!(s.rate_at(Tue, 12 * H + 30), Some(2));
        assert_eq!(s.rate_at(Mon, 9 * H), Some(2));
        assert_eq!(s.rate_at(Mon, 19 * H), None);
    }

    #[test]
    fn windows_past_midnight_belong_to_their_start_day() {
        // Friday 22:00 to Saturday 06:00 only.
        let s = Schedule { default: Some(7), windows: vec![w(&[Fri], 22 * H, 6 * H, 0)] };
        assert_eq!(s.rate_at(Fri, 22 * H), Some(0));
        assert_eq!(s.rate_at(Fri, 23 * H + 59), Some(0));
        assert_eq!(s.rate_at(Sat, 0), Some(0));
        assert_eq!(s.rate_at(Sat, 6 * H - 1), Some(0));
        assert_eq!(s.rate_at(Sat, 6 * H), Some(7));
        assert_eq!(s.rate_at(Sat, 23 * H), Some(7), "Saturday evening is not in it");
        assert_eq!(s.rate_at(Fri, 3 * H), Some(7), "Friday morning belongs to Thursday");
        // Sunday night wraps into Monday.
        let s = Schedule { default: None, windows: vec![w(&[Sun], 23 * H, H, 3)] };
        assert_eq!(s.rate_at(Mon, 30), Some(3));
        assert_eq!(s.rate_at(Sun, 30), None);
    }

    #[test]
    fn equal_from_and_to_is_the_whole_day() {
        let s = Schedule { default: None, windows: vec![w(&[Sat, Sun], 0, 0, 9)] };
        assert_eq!(s.rate_at(Sat, 0), Some(9));
        assert_eq!(s.rate_at(Sun, 1439), Some(9));
        assert_eq!(s.rate_at(Mon, 0), None);
    }

    #[test]
    fn weekday_helpers() {
        assert_eq!(Weekday::parse("MON"), Some(Mon));
        assert_eq!(Weekday::parse("sun"), Some(Sun));
        assert_eq!(Weekday::parse("monday"), None);
        assert_eq!(Mon.prev(), Sun);
        assert_eq!(Sun.prev(), Sat);
        assert_eq!(Weekday::from_chrono(chrono::Weekday::Sun), Sun);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_waits_at_the_rate() {
        let mut l = Limiter::new(Schedule { default: Some(1_000_000), windows: vec![] });
        let t0 = tokio::time::Instant::now();
        l.acquire(1_000_000).await; // the burst
        assert!(t0.elapsed() < Duration::from_millis(10));
        l.acquire(2_000_000).await;
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(1900), "{e:?}");
        let mut open = Limiter::new(Schedule::unlimited());
        open.acquire(u64::MAX / 2).await;
    }
}
