//! Who waits for which Durable Stream to move: long polls and SSE readers
//! wait on a stream's [`Notify`], which one task per node wakes for each
//! committed change the store announces (`StreamStore::stream_ticks`, on
//! every node of a cluster). A wake-up, not the truth: a woken reader
//! reads the store again, and a lagging tick stream wakes everyone.
//!
//! The one exception: a tick of an append made on this node carries its
//! bytes ([`Fresh`]), kept with the stream's place until the next tick, so
//! that a reader at the offset where they start takes them without a read
//! (positions never change, so they are the stream's bytes there), and a
//! reader at their end knows it is up to date. Any other tick (another
//! node's append, a delete, everyone woken at once) clears them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use replyd_core::stream::{Fresh, StreamTick};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Tails {
    waiting: Mutex<HashMap<u64, Arc<Place>>>,
}

/// One stream's readers: their wake-up, and its last append on this node.
#[derive(Debug, Default)]
struct Place {
    notify: Notify,
    fresh: Mutex<Option<Arc<Fresh>>>,
}

impl Place {
    fn set(&self, fresh: Option<Arc<Fresh>>) {
        *self.fresh.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

/// A reader's place on one stream; given back on drop.
#[derive(Debug)]
pub struct Watch {
    tails: Arc<Tails>,
    key: u64,
    place: Arc<Place>,
}

impl Watch {
    pub fn notify(&self) -> &Notify {
        &self.place.notify
    }

    /// The stream's last append on this node, if no other change came
    /// since (the caller checks that it is its stream's: keys may collide).
    pub fn fresh(&self) -> Option<Arc<Fresh>> {
        self.place
            .fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.tails.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: no one else waits on this stream.
        if Arc::strong_count(&self.place) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl Tails {
    /// A place on the stream whose [`replyd_core::stream::StreamKey::tick`]
    /// is `key`.
    pub fn watch(self: &Arc<Self>, key: u64) -> Watch {
        let place = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Watch {
            tails: self.clone(),
            key,
            place,
        }
    }

    fn wake(&self, tick: StreamTick) {
        let place = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tick.key)
            .cloned();
        if let Some(p) = place {
            // The bytes first: a reader that sees the wake-up finds them.
            p.set(tick.fresh);
            p.notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<_> = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for p in all {
            p.set(None);
            p.notify.notify_waiters();
        }
    }

    /// Wakes the readers of each stream the store says changed, until
    /// shutdown (which wakes everyone, so that they answer and go).
    pub async fn run(
        self: Arc<Self>,
        mut ticks: broadcast::Receiver<StreamTick>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.wake_all();
                    return;
                }
                tick = ticks.recv() => match tick {
                    Ok(t) if t == StreamTick::ALL => self.wake_all(),
                    Ok(t) => self.wake(t),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tick_wakes_the_streams_readers_only() {
        let tails = Arc::new(Tails::default());
        let (tx, rx) = broadcast::channel(8);
        let stop = CancellationToken::new();
        tokio::spawn(tails.clone().run(rx, stop.clone()));
        let a = tails.watch(1);
        let b = tails.watch(2);
        {
            let wa = a.notify().notified();
            let wb = b.notify().notified();
            tokio::pin!(wa, wb);
            wa.as_mut().enable();
            wb.as_mut().enable();
            tx.send(StreamTick {
                key: 1,
                fresh: None,
            })
            .unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), wa)
                .await
                .expect("stream 1's reader is woken");
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(100), wb)
                    .await
                    .is_err(),
                "stream 2's reader sleeps on"
            );
        }
        drop(a);
        drop(b);
        assert!(
            tails.waiting.lock().unwrap().is_empty(),
            "places are given back"
        );
        stop.cancel();
    }
}
