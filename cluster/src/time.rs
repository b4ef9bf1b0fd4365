//! Time as the state machine sees it: milliseconds on a monotonic clock owned by the driver.
//!
//! The machine never reads a clock; the driver passes `now` with every event. A `Time` is an
//! instant, durations are plain `u64` with `_ms` in their name.

/// An instant, in milliseconds since an arbitrary per-node origin (the driver's monotonic clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_ms(ms: u64) -> Time {
        Time(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// The instant `duration_ms` after `self` (saturating: time never wraps).
    pub const fn plus_ms(self, duration_ms: u64) -> Time {
        Time(self.0.saturating_add(duration_ms))
    }

    /// Milliseconds from `earlier` to `self`; zero if `earlier` is later (clock went back).
    pub const fn since_ms(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}
