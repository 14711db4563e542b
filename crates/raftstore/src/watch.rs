//! Wake-ups for readers of sequence logs: apply tells the watchers of each
//! log it appended to, once the append is in the engine, so a waiting
//! reader re-reads at once instead of polling.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The watchers of sequence logs, by log prefix.
#[derive(Debug, Default)]
pub struct LogWatchers {
    senders: Mutex<HashMap<Vec<u8>, watch::Sender<u64>>>,
}

impl LogWatchers {
    /// A receiver that changes after every apply that appended to `log`;
    /// its value is the log's next sequence number as of that apply.
    ///
    /// To wait without missing an append: mark the receiver seen
    /// (`borrow_and_update`), then read the log from a new snapshot, and
    /// only if nothing new is there wait for `changed`.
    pub fn watch(&self, log: &[u8]) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|_, sender| sender.receiver_count() > 0);
        senders
            .entry(log.to_vec())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Called by apply after the engine write that made the appends visible.
    pub(crate) fn notify(&self, appended: &[(Vec<u8>, u64)]) {
        if appended.is_empty() {
            return;
        }
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.is_empty() {
            return;
        }
        for (log, next) in appended {
            if let Some(sender) = senders.get(log) {
                sender.send_replace(*next);
            }
        }
    }

    /// Wakes every watcher: a snapshot install replaced the data under them.
    pub(crate) fn wake_all(&self) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for sender in senders.values() {
            sender.send_modify(|_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notifies_only_the_appended_log() {
        let watchers = LogWatchers::default();
        let mut a = watchers.watch(b"a");
        let mut b = watchers.watch(b"b");
        a.borrow_and_update();
        b.borrow_and_update();
        watchers.notify(&[(b"a".to_vec(), 7)]);
        assert!(a.has_changed().unwrap());
        assert_eq!(*a.borrow_and_update(), 7);
        assert!(!b.has_changed().unwrap());
        drop(b);
        // A log whose watchers are gone is forgotten at the next registration.
        let _c = watchers.watch(b"c");
        let mut logs: Vec<Vec<u8>> = watchers.senders.lock().unwrap().keys().cloned().collect();
        logs.sort();
        assert_eq!(logs, vec![b"a".to_vec(), b"c".to_vec()]);
    }
}
