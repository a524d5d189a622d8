//! Token buckets as GCRA, the algorithm `governor` uses, each kept as one `u64`: the time at
//! which the bucket is full again (every unit taken pushes it one unit's time further). Used for each socket's read rate (two per socket, see
//! `connection::ReadRate`) and for how often a client may join (see `clients`).
//!
//! Written here rather than with `governor`: its limiter is 40 bytes and a socket needs two,
//! which with the code awaiting them made every idle socket half a kilobyte bigger (6.55 →
//! 7.06 KiB measured); a client's join rate lives in the same table entry as its connection
//! count, so one lock covers both.

use std::time::Instant;

/// Seconds of a rate a bucket holds: what may be used at once after a quiet spell.
pub(crate) const BURST_SECONDS: u64 = 10;

/// Nanoseconds since the first call: the clock buckets are kept in. The system's monotonic
/// clock, not tokio's: a test that paused tokio's time would find buckets never refilling
/// (and `connection`'s wait for its read rate looping).
pub(crate) fn now() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One GCRA step: takes `cost` units at `per_second` (holding [`BURST_SECONDS`] of it, and at
/// least `least_burst` units) out of the bucket whose time is `at` (see the module), at `now` (both in
/// nanoseconds). `Err(wait)` if there is not room yet, and nothing is taken.
pub(crate) fn take(
    at: &mut u64,
    now: u64,
    cost: u64,
    per_second: u64,
    least_burst: u64,
) -> Result<(), u64> {
    let per_second = per_second.max(1);
    let burst = per_second.saturating_mul(BURST_SECONDS).max(least_burst);
    // Nanoseconds of the bucket one unit is worth, and the whole bucket's.
    let unit = 1_000_000_000 / per_second;
    let unit = unit.max(1);
    let depth = burst.saturating_mul(unit);
    let after = (*at).max(now).saturating_add(cost.min(burst).saturating_mul(unit));
    match after.saturating_sub(now) {
        ahead if ahead <= depth => {
            *at = after;
            Ok(())
        }
        ahead => Err(ahead - depth),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_gives_its_burst_at_once_then_its_rate() {
        // 10 a second: 100 (ten seconds' worth) at once, then one every tenth of a second.
        let mut at = 0;
        for i in 0..100 {
            assert_eq!(take(&mut at, 0, 1, 10, 1), Ok(()), "message {i} of the burst");
        }
        assert_eq!(take(&mut at, 0, 1, 10, 1), Err(SECOND / 10), "the next in a tenth");
        assert_eq!(take(&mut at, SECOND / 10, 1, 10, 1), Ok(()));
        assert!(take(&mut at, SECOND / 10, 1, 10, 1).is_err(), "and not two");
        // A bucket left alone fills up again, and no further: a burst again, no more.
        let later = 1_000 * SECOND;
        for i in 0..100 {
            assert_eq!(take(&mut at, later, 1, 10, 1), Ok(()), "message {i} of the second burst");
        }
        assert!(take(&mut at, later, 1, 10, 1).is_err());
    }

    #[test]
    fn a_bytes_bucket_holds_at_least_two_of_the_largest_messages() {
        // 100 bytes a second would hold 1,000; it holds 5,000 so a 5,000-byte message passes.
        let mut at = 0;
        assert_eq!(take(&mut at, 0, 5_000, 100, 5_000), Ok(()));
        assert_eq!(take(&mut at, 0, 1, 100, 5_000), Err(SECOND / 100));
    }
}
