//! When to renew and when to retry, as pure functions of `now`: renewal at the grace ratio with
//! jitter so that a fleet does not renew in step, and capped exponential backoff while the CA is
//! unreachable. A still-valid certificate is never thrown away while retrying.

use time::{Duration, OffsetDateTime};

/// istio-agent's SECRET_GRACE_PERIOD_RATIO default.
pub const DEFAULT_GRACE_RATIO: f64 = 0.5;
/// Renewal happens up to this share of the lifetime earlier than the grace ratio says.
pub const JITTER_SHARE: f64 = 0.1;

/// When to renew a certificate valid from `not_before` to `not_after`: when `ratio` of its life
/// is left, moved earlier by `jitter` (0..1) × 10% of the lifetime.
pub fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ratio: f64,
    jitter: f64,
) -> OffsetDateTime {
    let base = meshca_pki::rotation::renew_at(not_before, not_after, ratio);
    let life = (not_after - not_before).max(Duration::ZERO);
    let early =
        Duration::seconds_f64(life.as_seconds_f64() * JITTER_SHARE * jitter.clamp(0.0, 1.0));
    (base - early).max(not_before)
}

/// When to renew a certificate valid until `not_after` that arrived at `received`: [`renew_at`]
/// over its life from the later of `received` and `not_before`, as istio-agent counts it from
/// the moment it got the certificate. CAs backdate `notBefore` (meshca and istiod by two
/// minutes) against clock skew; counted from there, a lifetime of a few minutes or less would
/// put the renewal moment in the past at once, and the agent would renew without pause.
pub fn renew_at_received(
    received: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ratio: f64,
    jitter: f64,
) -> OffsetDateTime {
    renew_at(not_before.max(received), not_after, ratio, jitter)
}

/// Capped exponential backoff: 1 s, 2 s, 4 s, ... up to 60 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// No failures yet.
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    /// Records a failure and returns how long to wait before the next attempt, never past
    /// `valid_until` minus a second when a still-valid certificate is in use (so the last tries
    /// come before it expires).
    pub fn failed(&mut self, now: OffsetDateTime, valid_until: Option<OffsetDateTime>) -> Duration {
        let step = Duration::seconds(1i64 << self.failures.min(6)).min(Duration::seconds(60));
        self.failures = self.failures.saturating_add(1);
        match valid_until {
            Some(end) if end > now => {
                step.min((end - now - Duration::seconds(1)).max(Duration::milliseconds(100)))
            }
            _ => step,
        }
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renewal_comes_at_the_grace_ratio_moved_earlier_by_jitter() {
        let nb = datetime!(2026-11-23 0:00 UTC);
        let na = nb + Duration::hours(24);
        assert_eq!(renew_at(nb, na, 0.5, 0.0), nb + Duration::hours(12));
        assert_eq!(
            renew_at(nb, na, 0.5, 1.0),
            nb + Duration::hours(12) - Duration::minutes(144)
        );
        // Over a day of simulated time, a fake clock stepping a minute at a time reaches the
        // renewal moment once, inside the window.
        let at = renew_at(nb, na, 0.5, 0.37);
        let mut now = nb;
        let mut renewed = 0;
        while now < na {
            if now >= at && renewed == 0 {
                renewed += 1;
                assert!(now < nb + Duration::hours(12) + Duration::minutes(1));
            }
            now += Duration::minutes(1);
        }
        assert_eq!(renewed, 1);
    }

    #[test]
    fn a_backdated_short_certificate_is_renewed_at_half_the_life_left_when_it_came() {
        let received = datetime!(2026-11-23 12:00 UTC);
        // 90 s asked for, notBefore backdated by two minutes.
        let nb = received - Duration::minutes(2);
        let na = received + Duration::seconds(90);
        assert!(
            renew_at(nb, na, 0.5, 0.0) < received,
            "from notBefore: already due"
        );
        assert_eq!(
            renew_at_received(received, nb, na, 0.5, 0.0),
            received + Duration::seconds(45)
        );
        assert_eq!(
            renew_at_received(received, nb, na, 0.5, 1.0),
            received + Duration::seconds(36)
        );
        // A certificate that is not backdated is renewed as before.
        let later = received + Duration::hours(1);
        assert_eq!(
            renew_at_received(received, later, later + Duration::hours(24), 0.5, 0.0),
            later + Duration::hours(12)
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_stops_short_of_expiry() {
        let now = datetime!(2026-11-23 0:00 UTC);
        let mut b = Backoff::new();
        let waits: Vec<i64> = (0..9)
            .map(|_| b.failed(now, None).whole_seconds())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeeded();
        assert_eq!(b.failed(now, None), Duration::seconds(1));
        let mut b = Backoff::new();
        for _ in 0..6 {
            b.failed(now, None);
        }
        // A certificate valid for 10 more seconds: retry within 9 s, not 60.
        assert_eq!(
            b.failed(now, Some(now + Duration::seconds(10))),
            Duration::seconds(9)
        );
    }
}
