//! Remembered TokenReviews, so that a burst of pods (or one pod retrying) does not flood its API
//! server: each cluster's reviewer has one cache.
//!
//! - Keyed by the token's SHA-256: the cache never holds a token.
//! - An accepted token is remembered for the TTL (10 s by default), and never past the token's
//!   own `exp`. The `exp` is read from the JWT payload without checking the signature: the API
//!   server has just vouched for the token, and the value only ever shortens the stay. A token
//!   whose `exp` cannot be read (not a JWT) is not remembered: every request is reviewed.
//! - A refusal is not remembered: the next request with that token is reviewed again, so that a
//!   token refused while its API server was down works as soon as the server is back.
//! - Requests with the same token that arrive while its review is in flight wait for that one
//!   review and share its answer, refusals included; no second review is sent.
//! - At most [`MAX_ENTRIES`] tokens: past that, expired entries are dropped, and when none has
//!   expired the new token is reviewed without being remembered.
//!
//! Time is the caller's `now` (the server's clock), so tests move it by hand.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};
use tokio::sync::OnceCell;

use crate::tokenreview::{ReviewedIdentity, TokenReviewError};

/// The TTL unless told otherwise.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Most tokens one cache remembers (each entry is well under 200 bytes).
pub const MAX_ENTRIES: usize = 16_384;

type Outcome = Result<ReviewedIdentity, TokenReviewError>;

/// The reviews of one cluster's tokens, remembered briefly.
#[derive(Debug)]
pub struct ReviewCache {
    ttl: Duration,
    capacity: usize,
    slots: Mutex<HashMap<[u8; 32], Slot>>,
}

#[derive(Debug)]
enum Slot {
    /// Accepted, remembered until `until`.
    Known {
        who: ReviewedIdentity,
        until: OffsetDateTime,
    },
    /// Being reviewed; everyone asking meanwhile waits for this one answer.
    InFlight(Arc<OnceCell<Outcome>>),
}

impl ReviewCache {
    /// A cache remembering accepted tokens for `ttl` (zero: not at all; reviews in flight are
    /// still shared).
    pub fn new(ttl: std::time::Duration) -> Self {
        Self::with_capacity(ttl, MAX_ENTRIES)
    }

    fn with_capacity(ttl: std::time::Duration, capacity: usize) -> Self {
        ReviewCache {
            ttl: Duration::try_from(ttl).unwrap_or(Duration::MAX),
            capacity,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The remembered answer for `token` at `now`, or else the answer of `review`, run once for
    /// all the requests with this token that arrive while it runs.
    pub async fn get_or_review<F, Fut>(
        &self,
        token: &str,
        now: OffsetDateTime,
        review: F,
    ) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let key = digest(token);
        let Some(cell) = self.slot_for(key, now) else {
            return match self.known(key, now) {
                Some(who) => Ok(who),
                None => review().await,
            };
        };
        // The first caller's review runs; should that caller go away mid-review, the next one
        // waiting runs its own.
        let outcome = cell.get_or_init(review).await.clone();
        if let Ok(mut slots) = self.slots.lock()
            && let Some(Slot::InFlight(c)) = slots.get(&key)
            && Arc::ptr_eq(c, &cell)
        {
            match (&outcome, self.remember_until(token, now)) {
                (Ok(who), Some(until)) => {
                    slots.insert(
                        key,
                        Slot::Known {
                            who: who.clone(),
                            until,
                        },
                    );
                }
                _ => {
                    slots.remove(&key);
                }
            }
        }
        outcome
    }

    /// The review in flight for `key`, joined or started; `None` when the answer is remembered
    /// or the cache cannot take the token (full, or poisoned).
    fn slot_for(&self, key: [u8; 32], now: OffsetDateTime) -> Option<Arc<OnceCell<Outcome>>> {
        let mut slots = self.slots.lock().ok()?;
        match slots.get(&key) {
            Some(Slot::Known { until, .. }) if now < *until => None,
            Some(Slot::InFlight(cell)) => Some(cell.clone()),
            _ => {
                if slots.len() >= self.capacity {
                    slots.retain(|_, s| match s {
                        Slot::Known { until, .. } => now < *until,
                        Slot::InFlight(_) => true,
                    });
                }
                if slots.len() >= self.capacity && !slots.contains_key(&key) {
                    return None;
                }
                let cell = Arc::new(OnceCell::new());
                slots.insert(key, Slot::InFlight(cell.clone()));
                Some(cell)
            }
        }
    }

    /// The remembered answer for `key`, if still good at `now`.
    fn known(&self, key: [u8; 32], now: OffsetDateTime) -> Option<ReviewedIdentity> {
        match self.slots.lock().ok()?.get(&key)? {
            Slot::Known { who, until } if now < *until => Some(who.clone()),
            _ => None,
        }
    }

    /// How long an accepted `token` may be remembered from `now`: the TTL, cut at its `exp`.
    fn remember_until(&self, token: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let until = now.checked_add(self.ttl)?.min(unverified_expiry(token)?);
        (until > now).then_some(until)
    }

    /// How many tokens are remembered or in review.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no token is remembered or in review.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
    );
    out
}

/// The `exp` of a compact JWT, read without checking anything else; `None` when there is no
/// readable one. Only ever used to shorten how long an accepted token is remembered.
fn unverified_expiry(token: &str) -> Option<OffsetDateTime> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<serde_json::Number>,
    }
    if token.len() > meshca_token::MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&meshca_token::base64url::decode(payload)?).ok()?;
    let exp = claims.exp?;
    // A fractional `exp` is allowed by RFC 7519; rounding down only shortens the stay.
    let secs = exp.as_i64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })?;
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::apiserver::{ApiServer, CallError};

    fn jwt(exp: Option<i64>) -> String {
        let payload = match exp {
            Some(e) => format!(r#"{{"iss":"x","exp":{e}}}"#),
            None => r#"{"iss":"x"}"#.to_owned(),
        };
        format!(
            "e30.{}.c2ln",
            meshca_token::base64url::encode(payload.as_bytes())
        )
    }

    fn who() -> ReviewedIdentity {
        ReviewedIdentity {
            namespace: "foo".into(),
            service_account: "bar".into(),
        }
    }

    fn down() -> TokenReviewError {
        TokenReviewError::Call {
            at: ApiServer {
                cluster: None,
                url: "https://x".into(),
            },
            error: CallError::Timeout {
                after: std::time::Duration::from_secs(1),
            },
        }
    }

    /// A review that counts its calls and answers `answer`.
    struct Api {
        calls: AtomicUsize,
    }

    impl Api {
        fn new() -> Self {
            Api {
                calls: AtomicUsize::new(0),
            }
        }
        async fn review(&self, answer: Outcome) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            answer
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[tokio::test]
    async fn an_accepted_token_is_remembered_for_the_ttl_and_never_past_its_exp() {
        let cache = ReviewCache::new(std::time::Duration::from_secs(10));
        let api = Api::new();
        let now = t0();
        let long = jwt(Some((now + Duration::hours(1)).unix_timestamp()));
        let short = jwt(Some((now + Duration::seconds(3)).unix_timestamp()));
        for token in [&long, &short] {
            cache
                .get_or_review(token, now, || api.review(Ok(who())))
                .await
                .unwrap();
        }
        assert_eq!(api.calls(), 2);
        // Both remembered within 3 s.
        for token in [&long, &short] {
            let at = now + Duration::seconds(2);
            cache
                .get_or_review(token, at, || api.review(Ok(who())))
                .await
                .unwrap();
        }
        assert_eq!(api.calls(), 2);
        // At its exp the short one is reviewed again; the long one lasts the TTL.
        let at = now + Duration::seconds(3);
        cache
            .get_or_review(&short, at, || api.review(Err(down())))
            .await
            .unwrap_err();
        assert_eq!(api.calls(), 3);
        cache
            .get_or_review(&long, at, || api.review(Ok(who())))
            .await
            .unwrap();
        assert_eq!(api.calls(), 3);
        let at = now + Duration::seconds(10);
        cache
            .get_or_review(&long, at, || api.review(Ok(who())))
            .await
            .unwrap();
        assert_eq!(api.calls(), 4);
    }

    #[tokio::test]
    async fn refusals_tokens_without_exp_and_a_zero_ttl_are_not_remembered() {
        let now = t0();
        let token = jwt(Some((now + Duration::hours(1)).unix_timestamp()));
        let cache = ReviewCache::new(DEFAULT_TTL);
        let api = Api::new();
        cache
            .get_or_review(&token, now, || api.review(Err(down())))
            .await
            .unwrap_err();
        cache
            .get_or_review(&token, now, || api.review(Ok(who())))
            .await
            .unwrap();
        assert_eq!(api.calls(), 2, "a refusal was remembered");

        for opaque in [jwt(None), "opaque-token".to_owned(), "a.%%%.c".to_owned()] {
            let api = Api::new();
            for _ in 0..2 {
                cache
                    .get_or_review(&opaque, now, || api.review(Ok(who())))
                    .await
                    .unwrap();
            }
            assert_eq!(api.calls(), 2, "{opaque}");
        }

        let off = ReviewCache::new(std::time::Duration::ZERO);
        let api = Api::new();
        for _ in 0..2 {
            off.get_or_review(&token, now, || api.review(Ok(who())))
                .await
                .unwrap();
        }
        assert_eq!(api.calls(), 2);
        assert!(off.is_empty());
    }

    #[tokio::test]
    async fn requests_arriving_during_a_review_share_it() {
        let cache = Arc::new(ReviewCache::new(DEFAULT_TTL));
        let now = t0();
        let token = jwt(Some((now + Duration::hours(1)).unix_timestamp()));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let (cache, token, calls, gate) =
                (cache.clone(), token.clone(), calls.clone(), gate.clone());
            waiting.push(tokio::spawn(async move {
                cache
                    .get_or_review(&token, now, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Err(down())
                    })
                    .await
            }));
        }
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for w in waiting {
            assert_eq!(w.await.unwrap(), Err(down()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The refusal is not kept once the review is over.
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_full_cache_drops_expired_entries_and_then_stops_remembering() {
        let cache = ReviewCache::with_capacity(DEFAULT_TTL, 2);
        let api = Api::new();
        let now = t0();
        let tokens: Vec<_> = (1..=4)
            .map(|i| jwt(Some((now + Duration::hours(i)).unix_timestamp())))
            .collect();
        for t in &tokens[..2] {
            cache
                .get_or_review(t, now, || api.review(Ok(who())))
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 2);
        // Full of live entries: the third is reviewed, not remembered.
        for _ in 0..2 {
            cache
                .get_or_review(&tokens[2], now, || api.review(Ok(who())))
                .await
                .unwrap();
        }
        assert_eq!((api.calls(), cache.len()), (4, 2));
        // Once the first two expired, they make room.
        let later = now + Duration::seconds(11);
        cache
            .get_or_review(&tokens[3], later, || api.review(Ok(who())))
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expiry_is_read_from_the_payload_only() {
        assert_eq!(
            unverified_expiry(&jwt(Some(1_800_000_000))),
            Some(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap())
        );
        let frac = format!(
            "e30.{}.c2ln",
            meshca_token::base64url::encode(br#"{"exp":1800000000.9}"#)
        );
        assert_eq!(
            unverified_expiry(&frac),
            Some(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap())
        );
        for bad in [
            jwt(None),
            "opaque".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!(
                "e30.{}.x",
                meshca_token::base64url::encode(br#"{"exp":"soon"}"#)
            ),
            format!(
                "e30.{}.x",
                meshca_token::base64url::encode(br#"{"exp":1e300}"#)
            ),
        ] {
            assert_eq!(unverified_expiry(&bad), None, "{bad}");
        }
    }
}
