//! The Redis pub/sub invalidation bus for near caches.

use std::time::Duration;

use larder_core::{async_trait, BusEvent, BusMessage, Error, InvalidationBus, Result};
use redis::aio::ConnectionManager;
use redis::RedisError;

use crate::{tls_support, with_deadline};

/// An [`InvalidationBus`] on Redis pub/sub, for [`NearBackend`](larder_core::NearBackend)s
/// in several processes.
///
/// Publishing connects lazily and reconnects, so a near cache starts and
/// keeps working while this Redis is down (its L1 TTL then bounds
/// staleness). The subscriber reconnects with backoff and reports every
/// (re)subscription, after which the near cache clears its L1.
///
/// ```no_run
/// # async fn run() -> larder_core::Result<()> {
/// use std::sync::Arc;
/// use larder_redis::RedisBus;
/// let bus = RedisBus::new("redis://127.0.0.1:6379", "larder:near")?;
/// # let _ = bus; Ok(()) }
/// ```
pub struct RedisBus {
    client: redis::Client,
    channel: String,
    publisher: tokio::sync::Mutex<Option<ConnectionManager>>,
    deadline: Duration,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .finish()
    }
}

impl RedisBus {
    /// A bus on `channel` of the Redis server at `url` (`redis://` or
    /// `rediss://`). Connects on first use.
    pub fn new(url: &str, channel: impl Into<String>) -> Result<Self> {
        let client = tls_support::client(url, None)
            .map_err(|e| Error::config(format!("invalid Redis bus URL: {e}")))?;
        Ok(RedisBus {
            client,
            channel: channel.into(),
            publisher: tokio::sync::Mutex::new(None),
            deadline: Duration::from_millis(250),
        })
    }

    /// Deadline of one publish (default 250 ms).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, message: &BusMessage) -> Result<()> {
        let payload = message.encode();
        let work = async {
            let mut slot = self.publisher.lock().await;
            if slot.is_none() {
                *slot = Some(self.client.get_connection_manager().await?);
            }
            let Some(conn) = slot.as_mut() else {
                unreachable!("set just above")
            };
            let r = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(&payload)
                .query_async::<i64>(conn)
                .await;
            if r.is_err() {
                // Start over with a fresh connection next time.
                *slot = None;
            }
            r.map(|_| ())
        };
        with_deadline(self.deadline, work).await
    }

    async fn subscribe(&self, events: tokio::sync::mpsc::UnboundedSender<BusEvent>) -> Result<()> {
        let client = self.client.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut backoff = Duration::from_millis(50);
            while !events.is_closed() {
                let connected = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, RedisError>(ps)
                })
                .await;
                match connected {
                    Ok(Ok(mut ps)) => {
                        backoff = Duration::from_millis(50);
                        if events.send(BusEvent::Resubscribed).is_err() {
                            return;
                        }
                        let mut stream = ps.on_message();
                        while let Some(msg) = stream.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match BusMessage::decode(&payload) {
                                Some(m) => {
                                    if events.send(BusEvent::Message(m)).is_err() {
                                        return;
                                    }
                                }
                                None => {
                                    tracing::warn!(payload, "redis bus: unknown message ignored")
                                }
                            }
                        }
                        tracing::warn!(channel, "redis bus: subscription lost; reconnecting");
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis bus: cannot subscribe yet"),
                    Err(_) => tracing::debug!("redis bus: subscribing timed out"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Ok(())
    }
}
