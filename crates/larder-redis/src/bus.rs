//! The Redis pub/sub invalidation bus for near caches: classic pub/sub on
//! one server, sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`, Redis 7) on a
//! Redis Cluster.

use std::time::Duration;

use larder_core::{async_trait, BusEvent, BusMessage, Error, InvalidationBus, Result};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
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
/// On a Redis Cluster (`redis+cluster://h1:p1,h2:p2`) the bus uses sharded
/// pub/sub over [`CLUSTER_CHANNELS`] channels `<channel>:<n>`: a key's
/// invalidation goes out on the channel its hash picks, so the deliveries
/// (one per subscribed process) spread over the masters instead of every
/// node handling every message, as classic `PUBLISH` does on a cluster.
/// Every process subscribes to all of them, so any one reaches everyone.
///
/// ```no_run
/// # async fn run() -> larder_core::Result<()> {
/// use std::sync::Arc;
/// use larder_redis::RedisBus;
/// let bus = RedisBus::new("redis://127.0.0.1:6379", "larder:near")?;
/// let on_a_cluster = RedisBus::new("redis+cluster://10.0.0.1:6379,10.0.0.2:6379", "larder:near")?;
/// # let _ = (bus, on_a_cluster); Ok(()) }
/// ```
pub struct RedisBus {
    target: Target,
    channel: String,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
    deadline: Duration,
}

/// Sharded channels of a bus on a Redis Cluster.
pub const CLUSTER_CHANNELS: u32 = 32;

enum Target {
    Single(Box<redis::Client>),
    /// The nodes, as `redis://host:port` URLs.
    Cluster(Vec<String>),
}

enum Publisher {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The sharded channel a message goes out on: by the key's hash, channel
/// 0 for prefixes and clears.
fn shard_of(message: &BusMessage) -> u32 {
    match &message.invalidation {
        larder_core::Invalidation::Key(k) => {
            larder_core::stable_hash32(k.as_bytes()) % CLUSTER_CHANNELS
        }
        _ => 0,
    }
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
    /// `rediss://`), or of the Redis Cluster at
    /// `redis+cluster://h1:p1,h2:p2` (sharded pub/sub). Connects on first
    /// use.
    pub fn new(url: &str, channel: impl Into<String>) -> Result<Self> {
        let target = if let Some(hosts) = url.strip_prefix("redis+cluster://") {
            let hosts = hosts.trim_end_matches('/');
            if hosts.is_empty() || hosts.contains(['/', '?']) {
                return Err(Error::config(format!(
                    "invalid Redis Cluster bus URL {url:?}: write redis+cluster://h1:p1,h2:p2"
                )));
            }
            Target::Cluster(
                hosts
                    .split(',')
                    .map(|h| format!("redis://{}", h.trim()))
                    .collect(),
            )
        } else {
            Target::Single(Box::new(
                tls_support::client(url, None)
                    .map_err(|e| Error::config(format!("invalid Redis bus URL: {e}")))?,
            ))
        };
        Ok(RedisBus {
            target,
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
                *slot = Some(match &self.target {
                    Target::Single(client) => {
                        Publisher::Single(client.get_connection_manager().await?)
                    }
                    Target::Cluster(nodes) => Publisher::Cluster(
                        redis::cluster::ClusterClient::new(nodes.clone())?
                            .get_async_connection()
                            .await?,
                    ),
                });
            }
            let r = match slot.as_mut() {
                Some(Publisher::Single(conn)) => {
                    redis::cmd("PUBLISH")
                        .arg(&self.channel)
                        .arg(&payload)
                        .query_async::<i64>(conn)
                        .await
                }
                Some(Publisher::Cluster(conn)) => {
                    redis::cmd("SPUBLISH")
                        .arg(format!("{}:{}", self.channel, shard_of(message)))
                        .arg(&payload)
                        .query_async::<i64>(conn)
                        .await
                }
                None => unreachable!("set just above"),
            };
            if r.is_err() {
                // Start over with a fresh connection next time.
                *slot = None;
            }
            r.map(|_| ())
        };
        with_deadline(self.deadline, work).await
    }

    async fn subscribe(&self, events: tokio::sync::mpsc::UnboundedSender<BusEvent>) -> Result<()> {
        let client = match &self.target {
            Target::Single(client) => (**client).clone(),
            Target::Cluster(nodes) => {
                tokio::spawn(subscribe_cluster(
                    nodes.clone(),
                    self.channel.clone(),
                    events,
                ));
                return Ok(());
            }
        };
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

/// Deliveries from a message payload, to the near cache.
fn deliver(events: &tokio::sync::mpsc::UnboundedSender<BusEvent>, payload: &str) -> bool {
    match BusMessage::decode(payload) {
        Some(m) => events.send(BusEvent::Message(m)).is_ok(),
        None => {
            tracing::warn!(payload, "redis bus: unknown message ignored");
            true
        }
    }
}

/// The subscriber of a bus on a Redis Cluster: `SSUBSCRIBE` to every
/// sharded channel over RESP3. When a node's connection drops, it starts
/// over with a new client (which reads the topology as it is now) and
/// reports [`BusEvent::Resubscribed`] once every channel is subscribed
/// again (messages sent meanwhile are lost; the near cache clears its L1).
/// A subscription redis-rs itself confirms again later (a slot moved) is
/// reported the same way.
async fn subscribe_cluster(
    nodes: Vec<String>,
    channel: String,
    events: tokio::sync::mpsc::UnboundedSender<BusEvent>,
) {
    let channels: Vec<String> = (0..CLUSTER_CHANNELS)
        .map(|n| format!("{channel}:{n}"))
        .collect();
    let mut backoff = Duration::from_millis(50);
    while !events.is_closed() {
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            // One channel per command: each lives in its own slot.
            for c in &channels {
                conn.ssubscribe(c).await?;
            }
            Ok::<_, RedisError>(conn)
        })
        .await;
        let _conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis cluster bus: cannot subscribe yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tracing::debug!("redis cluster bus: subscribing timed out");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if events.send(BusEvent::Resubscribed).is_err() {
            return;
        }
        // The first round's confirmations, then any later one (redis-rs
        // resubscribing after a slot moved).
        let mut confirmations = 0u32;
        while let Some(push) = pushes.recv().await {
            match push.kind {
                redis::PushKind::SMessage => {
                    let payload = push.data.get(1).and_then(|v| {
                        <String as redis::FromRedisValue>::from_redis_value_ref(v).ok()
                    });
                    if let Some(payload) = payload {
                        if !deliver(&events, &payload) {
                            return;
                        }
                    }
                }
                redis::PushKind::SSubscribe => {
                    confirmations += 1;
                    if confirmations > CLUSTER_CHANNELS
                        && events.send(BusEvent::Resubscribed).is_err()
                    {
                        return;
                    }
                }
                redis::PushKind::Disconnection => {
                    // Start over rather than trust redis-rs to move the
                    // subscriptions: after a master fails over, the channels
                    // it carried never delivered again (tested). A new
                    // client reads the new topology and subscribes every
                    // channel where it lives now.
                    tracing::warn!(
                        channel,
                        "redis cluster bus: a node connection dropped; subscribing again"
                    );
                    break;
                }
                _ => {}
            }
        }
        tracing::warn!(
            channel,
            "redis cluster bus: subscription lost; reconnecting"
        );
    }
}
