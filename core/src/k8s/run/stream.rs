//! A followed run's events, handed out in batches.
//!
//! Each batch costs the consumer a wake-up (in the worker: an asyncio task switch and a trip
//! across the Python boundary), and one watch event often makes several run events a moment
//! apart (a phase change and a message). So a batch waits a little for more after its first
//! event; a message shown a few milliseconds later costs nobody anything, and the run's end
//! is never held back.

use super::RunEvent;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events per batch at most.
pub const EVENTS_PER_BATCH: usize = 64;
/// How long a batch waits for more events after its first.
pub const EVENT_GATHER_WINDOW: Duration = Duration::from_millis(50);
/// Events the follower may run ahead of the consumer.
const EVENT_QUEUE: usize = 256;

/// The events of one followed run. Dropping it stops following (the Job is left alone).
pub struct RunEventStream {
    receiver: tokio::sync::Mutex<mpsc::Receiver<RunEvent>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunEventStream {
    /// Spawns `follow(sender)` on the current runtime and streams what it sends.
    pub fn spawn<F, Fut>(follow: F) -> Self
    where
        F: FnOnce(mpsc::Sender<RunEvent>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(EVENT_QUEUE);
        RunEventStream {
            receiver: tokio::sync::Mutex::new(receiver),
            task: tokio::spawn(follow(sender)),
        }
    }

    /// The next batch, None once the run's last event was handed out (or following stopped).
    pub async fn next_batch(&self) -> Option<Vec<RunEvent>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = vec![first];
        let gather_until = tokio::time::Instant::now() + EVENT_GATHER_WINDOW;
        while batch.len() < EVENTS_PER_BATCH && !matches!(batch.last(), Some(RunEvent::Finished(_)))
        {
            match tokio::time::timeout_at(gather_until, receiver.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Stops following; the Job is left as it is.
    pub fn close(&self) {
        self.task.abort();
    }
}

impl Drop for RunEventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Level, RunOutcome};
    use super::*;

    fn message(n: usize) -> RunEvent {
        RunEvent::Message(Level::Info, format!("m{n}"))
    }

    #[tokio::test(start_paused = true)]
    async fn events_close_together_come_in_one_batch_and_the_end_is_never_held() {
        let stream = RunEventStream::spawn(|sender| async move {
            for n in 0..3 {
                sender.send(message(n)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            sender.send(message(3)).await.unwrap();
            sender
                .send(RunEvent::Finished(RunOutcome {
                    exit_code: 0,
                    message: None,
                    evicted: false,
                }))
                .await
                .unwrap();
            sender.send(message(4)).await.unwrap();
        });
        assert_eq!(stream.next_batch().await.unwrap().len(), 3);
        let last = stream.next_batch().await.unwrap();
        assert_eq!(last.len(), 2, "the batch ends with the run's end");
        assert!(matches!(last[1], RunEvent::Finished(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_holds_at_most_its_size_and_the_stream_ends() {
        let stream = RunEventStream::spawn(|sender| async move {
            for n in 0..(EVENTS_PER_BATCH + 1) {
                sender.send(message(n)).await.unwrap();
            }
        });
        assert_eq!(stream.next_batch().await.unwrap().len(), EVENTS_PER_BATCH);
        assert_eq!(stream.next_batch().await.unwrap().len(), 1);
        assert!(stream.next_batch().await.is_none());
    }
}
