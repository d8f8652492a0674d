//! Hybrid logical clocks for commit timestamps.
//!
//! A commit's [`Timestamp`] must be later than each of its parents' — whatever the author's
//! wall clock says — so that timestamps respect causality, and close to real time, so that
//! they still mean something to people. A hybrid logical clock gives both. This one is the
//! packed form: the timestamp is a single count of microseconds, and the logical counter of a
//! classic HLC lives in its low digits. A new commit is stamped
//!
//! ```text
//! max(wall clock, last stamp issued + 1 µs, latest parent + 1 µs)
//! ```
//!
//! so it is never behind the wall clock, never repeats, and is always after its parents. A
//! clock that runs behind borrows time from the commits it has seen; a burst of k commits
//! within one microsecond runs at most k µs ahead of the wall.
//!
//! A received commit is checked against the same rule ([`HybridClock::check`]): after every
//! parent, and not further ahead of the receiver's wall clock than a stated tolerance
//! ([`HybridClock::max_ahead`]) — a node whose clock runs far ahead (or lies) cannot drag the
//! federation's timestamps into the future. Such a commit is refused, not stored, and can be
//! offered again once the receiver's clock has caught up.
//!
//! ```
//! use llmkg_federation_core::Timestamp;
//! use llmkg_sync::hlc::HybridClock;
//! use std::time::Duration;
//!
//! let mut clock = HybridClock::new(Duration::from_secs(1));
//! let wall = Timestamp::from_micros(1_000);
//! // A parent stamped ahead of our wall clock: the new stamp follows it.
//! let parent = Timestamp::from_micros(5_000);
//! let t = clock.stamp(wall, [parent]);
//! assert_eq!(t, Timestamp::from_micros(5_001));
//! // The next stamp is later again, even with the wall clock standing still.
//! assert!(clock.stamp(wall, []) > t);
//! ```

use std::time::Duration;

use llmkg_federation_core::Timestamp;

/// Why a received timestamp breaks the clock rules. Checking changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The commit is not later than one of its parents.
    #[error("timestamp {timestamp} is not after its parent's {parent}")]
    NotAfterParent {
        /// The commit's timestamp.
        timestamp: Timestamp,
        /// The parent's.
        parent: Timestamp,
    },
    /// The commit is further ahead of the receiver's wall clock than the tolerance.
    #[error("timestamp {timestamp} is more than {tolerance:?} ahead of the local clock {wall}")]
    TooFarAhead {
        /// The commit's timestamp.
        timestamp: Timestamp,
        /// The receiver's wall clock.
        wall: Timestamp,
        /// The tolerance.
        tolerance: Duration,
    },
}

/// A hybrid logical clock (see the [module documentation](self)). Sans-io: the wall clock is
/// passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HybridClock {
    last: Timestamp,
    max_ahead: Duration,
}

impl HybridClock {
    /// A clock that has issued nothing and tolerates received stamps up to `max_ahead` ahead
    /// of the wall clock.
    pub fn new(max_ahead: Duration) -> Self {
        Self { last: Timestamp::from_micros(i64::MIN), max_ahead }
    }

    /// The tolerance for received stamps ahead of the wall clock.
    pub fn max_ahead(&self) -> Duration {
        self.max_ahead
    }

    /// The latest stamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A stamp for a new commit with these parents' timestamps, at wall-clock time `wall`.
    pub fn stamp(
        &mut self,
        wall: Timestamp,
        parents: impl IntoIterator<Item = Timestamp>,
    ) -> Timestamp {
        let after = |t: Timestamp| Timestamp::from_micros(t.as_micros().saturating_add(1));
        let mut t = wall.max(after(self.last));
        for p in parents {
            t = t.max(after(p));
        }
        self.last = t;
        t
    }

    /// Checks a received commit's `timestamp` against its parents' and the wall clock.
    pub fn check(
        &self,
        wall: Timestamp,
        timestamp: Timestamp,
        parents: impl IntoIterator<Item = Timestamp>,
    ) -> Result<(), ClockError> {
        for parent in parents {
            if timestamp <= parent {
                return Err(ClockError::NotAfterParent { timestamp, parent });
            }
        }
        let ahead = i64::try_from(self.max_ahead.as_micros()).unwrap_or(i64::MAX);
        if timestamp.as_micros() > wall.as_micros().saturating_add(ahead) {
            return Err(ClockError::TooFarAhead { timestamp, wall, tolerance: self.max_ahead });
        }
        Ok(())
    }

    /// Records a stamp seen on a commit held (received, or read back after a restart), so
    /// later stamps follow it.
    pub fn observe(&mut self, timestamp: Timestamp) {
        self.last = self.last.max(timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(us: i64) -> Timestamp {
        Timestamp::from_micros(us)
    }

    #[test]
    fn stamps_follow_wall_parents_and_themselves() {
        let mut c = HybridClock::new(Duration::from_millis(1));
        assert_eq!(c.stamp(ts(100), []), ts(100));
        assert_eq!(c.stamp(ts(100), []), ts(101));
        assert_eq!(c.stamp(ts(50), [ts(90)]), ts(102));
        assert_eq!(c.stamp(ts(50), [ts(500)]), ts(501));
        assert_eq!(c.stamp(ts(10_000), [ts(500)]), ts(10_000));
    }

    #[test]
    fn check_refuses_stamps_behind_parents_or_far_ahead() {
        let c = HybridClock::new(Duration::from_millis(1));
        assert_eq!(c.check(ts(0), ts(10), [ts(9)]), Ok(()));
        assert!(matches!(c.check(ts(0), ts(10), [ts(10)]), Err(ClockError::NotAfterParent { .. })));
        assert_eq!(c.check(ts(0), ts(1_000), []), Ok(()));
        assert!(matches!(c.check(ts(0), ts(1_001), []), Err(ClockError::TooFarAhead { .. })));
        // No overflow at the ends of the range.
        assert!(c.check(ts(i64::MAX), ts(i64::MAX), [ts(i64::MIN)]).is_ok());
    }
}
