//! The one retry policy of every durable retry (sends to Twilio, deliveries to agents, Monitor
//! lookups and language notifications): exponential from `base`, capped at `cap`, with jitter over
//! the upper half of each step so retries of many messages spread out; a `Retry-After` the other
//! side sent wins when it is longer.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub const fn new(base: Duration, cap: Duration, max_attempts: u32) -> Self {
        Self {
            base,
            cap,
            max_attempts,
        }
    }

    /// Whether another attempt may follow `attempts_made` attempts.
    pub fn allows_another(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The step before the next attempt after `failed` failures (1-based): base x 2^(failed-1),
    /// capped; the delay is drawn from its upper half.
    pub fn step(&self, failed: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << failed.saturating_sub(1).min(16))
            .min(self.cap)
    }

    /// The shortest delay [`delay`](Self::delay) can give after `failed` failures.
    pub fn shortest(&self, failed: u32) -> Duration {
        self.step(failed) / 2
    }

    /// The delay before the next attempt after `failed` failures; `retry_after` (the other
    /// side's own word) wins when longer.
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        let step = self.step(failed);
        let jittered = step / 2 + step.mul_f64(rand::rng().random_range(0.0..0.5));
        retry_after.map_or(jittered, |ra| ra.max(jittered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(10), 5);

    #[test]
    fn steps_double_up_to_the_cap() {
        let steps: Vec<u64> = (1..=6).map(|n| P.step(n).as_secs()).collect();
        assert_eq!(steps, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(P.step(0), Duration::from_secs(1));
        assert_eq!(P.step(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn delay_is_in_the_upper_half_and_retry_after_wins_when_longer() {
        for failed in 1..8 {
            for _ in 0..50 {
                let d = P.delay(failed, None);
                assert!(d >= P.shortest(failed) && d <= P.step(failed), "{d:?}");
            }
        }
        assert_eq!(
            P.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert!(P.delay(5, Some(Duration::from_millis(1))) >= Duration::from_secs(5));
    }

    #[test]
    fn attempts_are_bounded() {
        let table = [(0, true), (1, true), (4, true), (5, false), (9, false)];
        for (made, allowed) in table {
            assert_eq!(P.allows_another(made), allowed, "{made}");
        }
    }
}
