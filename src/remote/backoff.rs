//! The one retry pause policy: start short, double, stop at a cap. Each user states its
//! own first pause and cap (a lost request, an offline reconnect, a failing upload), so
//! the numbers sit beside the reason for them.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The pause to take now; the following one doubles, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// True before the first pause since the start or the last reset (to log once).
    pub fn is_first(&self) -> bool {
        self.next == self.first
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleep for the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        assert!(b.is_first());
        let got: Vec<_> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(got, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        assert!(!b.is_first());
        b.reset();
        assert_eq!(b.next_pause(), ms(50));
    }
}
