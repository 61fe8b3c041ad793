//! Exponential backoff with a cap, for everything the daemon retries (fences, switchover steps,
//! DNS commits): a failing call is not repeated at a fixed fast pace forever.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// Pauses of `first`, `2 × first`, ... up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Self { first, max, next: first, failures: 0 }
    }

    /// Counts a failure; the pause to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures += 1;
        pause
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let pauses: Vec<Duration> = (0..5).map(|_| b.failed()).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!((b.failed(), b.failures()), (ms(100), 1));
        assert_eq!(Backoff::new(ms(900), ms(500)).failed(), ms(500), "first is capped too");
    }
}
