//! Noticing that a polled source changed, for every source the server reloads (the `cacerts`
//! folder, the JWKS files): its content is compared by fingerprint with the content in use, a
//! change is taken only once the source has held still for a debounce (writers that update
//! files one by one settle first), and content that was refused is not offered again until it
//! changes, so a broken source is refused, logged and counted once, not on every look.

use std::time::Duration;

/// What one watched source remembers between looks.
#[derive(Debug, Default)]
pub(crate) struct ChangeWatch {
    refused: Option<Vec<u8>>,
}

impl ChangeWatch {
    /// Reads the source with `read` (on a blocking thread), which answers the content and its
    /// fingerprint, or `None` when there is nothing to look at right now. When the fingerprint
    /// is neither `in_use` nor that of the content last refused, waits `debounce` and reads
    /// again; the second reading is returned only if the source held still in between.
    pub(crate) async fn settled_change<T, F>(
        &mut self,
        in_use: &[u8],
        debounce: Duration,
        read: F,
    ) -> Option<(T, Vec<u8>)>
    where
        T: Send + 'static,
        F: Fn() -> Option<(T, Vec<u8>)> + Clone + Send + 'static,
    {
        let (_, first) = read_blocking(read.clone()).await?;
        if first == in_use {
            // Back to what is in use: a later return of the refused content is news again.
            self.refused = None;
            return None;
        }
        if self.refused.as_deref() == Some(first.as_slice()) {
            return None;
        }
        tokio::time::sleep(debounce).await;
        let (content, second) = read_blocking(read).await?;
        (second == first).then_some((content, second))
    }

    /// Remembers that the content with this fingerprint was refused.
    pub(crate) fn refused(&mut self, fingerprint: Vec<u8>) {
        self.refused = Some(fingerprint);
    }

    /// Forgets the refused content: new content was taken into use.
    pub(crate) fn accepted(&mut self) {
        self.refused = None;
    }
}

async fn read_blocking<T, F>(read: F) -> Option<(T, Vec<u8>)>
where
    T: Send + 'static,
    F: FnOnce() -> Option<(T, Vec<u8>)> + Send + 'static,
{
    tokio::task::spawn_blocking(read).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Reading = Option<(String, Vec<u8>)>;

    /// A source that answers `readings` in turn (the last one forever; "" is nothing to read),
    /// counting the reads.
    fn source(
        readings: &'static [&'static str],
    ) -> (
        Arc<AtomicUsize>,
        impl Fn() -> Reading + Clone + Send + 'static,
    ) {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let read = move || {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            let text = readings[i.min(readings.len() - 1)];
            (!text.is_empty()).then(|| (text.to_owned(), text.as_bytes().to_vec()))
        };
        (reads, read)
    }

    #[tokio::test]
    async fn a_change_is_taken_once_it_holds_still() {
        let mut w = ChangeWatch::default();
        let (reads, read) = source(&["new", "new"]);
        let got = w.settled_change(b"old", Duration::ZERO, read).await;
        assert_eq!(got, Some(("new".to_owned(), b"new".to_vec())));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "read again after the debounce"
        );
    }

    #[tokio::test]
    async fn content_in_use_is_not_a_change() {
        let mut w = ChangeWatch::default();
        let (reads, read) = source(&["old"]);
        assert_eq!(w.settled_change(b"old", Duration::ZERO, read).await, None);
        assert_eq!(reads.load(Ordering::SeqCst), 1, "no debounce for nothing");
    }

    #[tokio::test]
    async fn a_source_still_being_written_is_left_for_the_next_look() {
        let mut w = ChangeWatch::default();
        let (_, read) = source(&["half", "whole"]);
        assert_eq!(w.settled_change(b"old", Duration::ZERO, read).await, None);
        let (_, gone) = source(&["new", ""]);
        assert_eq!(w.settled_change(b"old", Duration::ZERO, gone).await, None);
    }

    #[tokio::test]
    async fn refused_content_is_offered_again_only_after_the_source_moves() {
        let mut w = ChangeWatch::default();
        let (_, read) = source(&["bad"]);
        let (_, fp) = w
            .settled_change(b"old", Duration::ZERO, read.clone())
            .await
            .unwrap();
        w.refused(fp);
        assert_eq!(
            w.settled_change(b"old", Duration::ZERO, read.clone()).await,
            None
        );
        // The source goes back to the content in use, then breaks the same way again.
        let (_, back) = source(&["old"]);
        assert_eq!(w.settled_change(b"old", Duration::ZERO, back).await, None);
        assert!(
            w.settled_change(b"old", Duration::ZERO, read)
                .await
                .is_some()
        );
        w.accepted();
        assert_eq!(w.refused, None);
    }
}
