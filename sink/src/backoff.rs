//! Exponential backoff with jitter.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `attempt` (1 = first retry): `base * 2^(attempt-1)` capped at `cap`, then
/// "equal jitter": a uniform pick in `[d/2, d]`, so retries of many rows spread out but never collapse to 0.
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let half = raw / 2;
    let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// A plain doubling delay (no jitter) for internal retry loops: 100 ms, 200 ms, ... capped at `cap`.
pub fn simple(attempt: u32, cap: Duration) -> Duration {
    let exp = attempt.min(16);
    Duration::from_millis(100u64 << exp).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(30);
        for _ in 0..100 {
            let d1 = delay(1, base, cap);
            assert!(d1 >= Duration::from_millis(100) && d1 <= base, "{d1:?}");
            let d3 = delay(3, base, cap);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d20 = delay(20, base, cap);
            assert!(d20 >= cap / 2 && d20 <= cap);
        }
        assert_eq!(
            simple(0, Duration::from_secs(5)),
            Duration::from_millis(100)
        );
        assert_eq!(simple(10, Duration::from_secs(5)), Duration::from_secs(5));
    }
}
