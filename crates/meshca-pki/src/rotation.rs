//! Rotation arithmetic: when a certificate is due for renewal, as pure functions of `now`.

use time::{Duration, OffsetDateTime};

/// The moment a certificate valid from `not_before` to `not_after` should be renewed: when only
/// `ratio` of its lifetime is left (istio-agent renews workloads at 0.5; istiod rotates its
/// self-signed root at 0.2). `ratio` is clamped to [0, 1].
pub fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ratio: f64,
) -> OffsetDateTime {
    let ratio = ratio.clamp(0.0, 1.0);
    let life = (not_after - not_before).max(Duration::ZERO);
    let left = Duration::seconds_f64(life.as_seconds_f64() * ratio);
    not_after - left
}

/// Whether a certificate is due for renewal at `now` (see [`renew_at`]).
pub fn is_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ratio: f64,
    now: OffsetDateTime,
) -> bool {
    now >= renew_at(not_before, not_after, ratio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renews_when_the_ratio_of_life_is_left() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + Duration::days(10);
        assert_eq!(renew_at(nb, na, 0.2), nb + Duration::days(8));
        assert_eq!(renew_at(nb, na, 0.5), nb + Duration::days(5));
        assert!(!is_due(
            nb,
            na,
            0.2,
            nb + Duration::days(8) - Duration::seconds(1)
        ));
        assert!(is_due(nb, na, 0.2, nb + Duration::days(8)));
    }

    #[test]
    fn renewal_always_falls_inside_the_window() {
        // A small exhaustive sweep in place of a property test: every ratio and lifetime gives a
        // renewal moment between not_before and not_after, later for smaller ratios.
        let nb = datetime!(2026-01-01 0:00 UTC);
        for hours in [1i64, 7, 24, 24 * 365, 24 * 3650] {
            let na = nb + Duration::hours(hours);
            let mut last = nb;
            for step in (0..=20).rev() {
                let r = f64::from(step) / 20.0;
                let at = renew_at(nb, na, r);
                assert!(at >= nb && at <= na, "{hours}h ratio {r}");
                assert!(at >= last, "monotonic in ratio");
                last = at;
            }
        }
        assert_eq!(
            renew_at(nb, nb - Duration::hours(1), 0.5),
            nb - Duration::hours(1)
        );
        assert_eq!(renew_at(nb, nb + Duration::hours(1), 7.0), nb);
    }
}
