//! Shared pieces of meshca's benchmark harnesses: timing commands and summarising samples.
//! Harnesses are binaries under `src/bin/`; they print Markdown tables for `docs/BENCHMARKS.md`.
//! The CA load generators (`ca-load`, `istiod-load`) share [`load`], [`server`] and [`pki`];
//! the long runs against `meshca serve` (`soak`, `fleet`) also [`serve`]. The `crash` drill and
//! the crash-safety and Kubernetes-fault tests share [`crash`].

#![forbid(unsafe_code)]

pub mod crash;
pub mod load;
pub mod pki;
pub mod serve;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

/// The median of samples (the mean of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// Minimum and maximum of samples.
pub fn range(samples: &[Duration]) -> (Duration, Duration) {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    (min, max)
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The `meshca` binary built beside this harness (same target folder and profile).
pub fn meshca_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|p| p.join("meshca"))
        .unwrap_or_else(|| PathBuf::from("meshca"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&x| Duration::from_millis(x))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(&ms(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(median(&ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
