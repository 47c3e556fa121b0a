//! Time as an input: the server and the agent ask a [`Clock`] for `now` and wait on it; tests
//! give them one they move by hand.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use time::OffsetDateTime;
use tokio::sync::Notify;

/// A wait on a [`Clock`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the server and the agent get `now` from, and how they wait for a moment.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// Resolves once `now()` has reached `at` (at once if it has).
    fn sleep_until(&self, at: OffsetDateTime) -> Sleep<'_>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep_until(&self, at: OffsetDateTime) -> Sleep<'_> {
        Box::pin(async move {
            // In steps of at most a minute, so that a wall clock that jumps (a suspended
            // machine, a corrected clock) is caught up with soon.
            loop {
                let left = at - self.now();
                if left <= time::Duration::ZERO {
                    return;
                }
                let step = left.min(time::Duration::minutes(1));
                let ms = u64::try_from(step.whole_milliseconds()).unwrap_or(0).max(1);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        })
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct FakeClock {
    now: Mutex<OffsetDateTime>,
    moved: Notify,
}

impl FakeClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        FakeClock {
            now: Mutex::new(start),
            moved: Notify::new(),
        }
    }

    /// Moves the clock forward, waking whoever waits on it.
    pub fn advance(&self, by: time::Duration) {
        {
            let mut t = self.now.lock().unwrap_or_else(|p| p.into_inner());
            *t += by;
        }
        self.moved.notify_waiters();
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep_until(&self, at: OffsetDateTime) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                // Registered before the check, so that an advance in between is not missed.
                let moved = self.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.now() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fake_clock_wakes_its_sleepers_when_moved_past_their_moment() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let clock = std::sync::Arc::new(FakeClock::new(start));
        let c = std::sync::Arc::clone(&clock);
        let sleeper =
            tokio::spawn(async move { c.sleep_until(start + time::Duration::hours(12)).await });
        tokio::task::yield_now().await;
        clock.advance(time::Duration::hours(6));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "6 h of 12: still asleep");
        clock.advance(time::Duration::hours(6));
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .expect("woken at 12 h")
            .expect("no panic");
        // A moment already past does not wait.
        clock.sleep_until(start).await;
    }
}
