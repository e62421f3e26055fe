//! The PostgreSQL LISTEN/NOTIFY invalidation bus for near caches.

use std::time::Duration;

use larder_core::{async_trait, Error, Result};

/// An [`InvalidationBus`](larder_core::InvalidationBus) on PostgreSQL `LISTEN`/`NOTIFY`, for
/// [`NearBackend`](larder_core::NearBackend)s in several processes.
///
/// Notifications are not queued for a listener that is disconnected, so
/// after every (re)connection the subscriber reports a resubscription and
/// the near cache clears its L1. Publishing is `SELECT pg_notify(…)` on a
/// small lazily connected pool.
///
/// ```no_run
/// # fn run() -> larder_core::Result<()> {
/// let bus = larder_sql::PgBus::new("postgres://postgres@127.0.0.1/test", "larder_near")?;
/// # let _ = bus; Ok(()) }
/// ```
pub struct PgBus {
    url: String,
    channel: String,
    pool: sqlx::PgPool,
    deadline: Duration,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus")
            .field("channel", &self.channel)
            .finish()
    }
}

impl PgBus {
    /// A bus on `channel` of the PostgreSQL database at `url`. Connects on
    /// first use. Must be called inside a tokio runtime.
    pub fn new(url: &str, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        if channel.is_empty() || channel.len() > 63 {
            return Err(Error::config(
                "a PostgreSQL channel name has 1 to 63 characters",
            ));
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(url)
            .map_err(|e| Error::config(format!("invalid PostgreSQL bus URL: {e}")))?;
        Ok(PgBus {
            url: url.to_owned(),
            channel,
            pool,
            deadline: Duration::from_millis(250),
        })
    }
}

#[async_trait]
impl larder_core::InvalidationBus for PgBus {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn publish(&self, message: &larder_core::BusMessage) -> Result<()> {
        let work = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(message.encode())
            .execute(&self.pool);
        match tokio::time::timeout(self.deadline, work).await {
            Ok(r) => r.map(|_| ()).map_err(|e| Error::backend("postgres bus", e)),
            Err(_) => Err(Error::Timeout {
                backend: "postgres bus",
                after: self.deadline,
            }),
        }
    }

    async fn subscribe(
        &self,
        events: tokio::sync::mpsc::UnboundedSender<larder_core::BusEvent>,
    ) -> Result<()> {
        use larder_core::{BusEvent, BusMessage};
        let url = self.url.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            larder_changes::listen_postgres(&url, &channel, "postgres bus", |event| {
                let sent = match event {
                    larder_changes::ListenEvent::Connected => {
                        events.send(BusEvent::Resubscribed).is_ok()
                    }
                    larder_changes::ListenEvent::Notification(payload) => {
                        match BusMessage::decode(&payload) {
                            Some(m) => events.send(BusEvent::Message(m)).is_ok(),
                            None => {
                                tracing::warn!(payload, "postgres bus: unknown message ignored");
                                true
                            }
                        }
                    }
                    _ => true,
                };
                // Nobody listens to the events any more: stop.
                std::future::ready(if sent {
                    std::ops::ControlFlow::Continue(())
                } else {
                    std::ops::ControlFlow::Break(())
                })
            })
            .await;
        });
        Ok(())
    }
}
