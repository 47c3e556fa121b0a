//! Checks 6 and 7: every certificate is inside its validity window, and the signing certificate
//! and roots have more days left than the thresholds.

use meshca_pki::Certificate;
use meshca_pki::error::show_time;
use time::{Duration, OffsetDateTime};

use super::{CheckName, CheckOptions, Finding, Level, counted};

/// Check 6.
pub(super) fn validity(certs: &[Certificate], now: OffsetDateTime) -> Finding {
    let bad: Vec<String> = certs
        .iter()
        .filter(|c| !c.is_valid_at(now))
        .map(|c| {
            if now < c.not_before() {
                format!(
                    "{} (\"{}\") is not valid before {}",
                    c.origin(),
                    c.subject(),
                    show_time(c.not_before())
                )
            } else {
                format!(
                    "{} (\"{}\") expired at {}",
                    c.origin(),
                    c.subject(),
                    show_time(c.not_after())
                )
            }
        })
        .collect();
    if !bad.is_empty() {
        return Finding::fail(CheckName::Validity, bad.join("; "));
    }
    let first = certs.iter().min_by_key(|c| c.not_after());
    Finding::pass(
        CheckName::Validity,
        match first {
            Some(c) => format!(
                "{} valid at {}; the first to expire is {} at {}",
                counted(certs.len(), "certificate"),
                show_time(now),
                c.origin(),
                show_time(c.not_after())
            ),
            None => "no certificate".to_owned(),
        },
    )
}

/// Check 7, for the signing certificate or for the roots (the one that ends first decides).
pub(super) fn days_left(
    name: CheckName,
    certs: &[&Certificate],
    o: &CheckOptions,
    now: OffsetDateTime,
) -> Finding {
    let Some(c) = certs.iter().min_by_key(|c| c.not_after()) else {
        return Finding::fail(name, "no certificate");
    };
    let left = c.not_after() - now;
    let what = format!("{} (\"{}\")", c.origin(), c.subject());
    let until = show_time(c.not_after());
    if left < Duration::ZERO {
        return Finding::fail(name, format!("{what} expired at {until}"));
    }
    let days = left.whole_days();
    if left < Duration::days(i64::from(o.fail_days)) {
        Finding::fail(
            name,
            format!(
                "{what} has {days} days left (until {until}), fewer than the {} required",
                o.fail_days
            ),
        )
    } else if left < Duration::days(i64::from(o.warn_days)) {
        Finding::new(
            name,
            Level::Warn,
            format!(
                "{what} has {days} days left (until {until}), fewer than {}: rotate it soon",
                o.warn_days
            ),
        )
    } else {
        Finding::pass(name, format!("{what} has {days} days left (until {until})"))
    }
}
