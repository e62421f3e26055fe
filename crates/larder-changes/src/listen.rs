//! The one reconnecting PostgreSQL `LISTEN` loop (feature `postgres`).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

/// What [`listen_postgres`] hands its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenEvent {
    /// The listener (re)connected and listens now. Notifications sent
    /// while it was away are lost: resync from the source of truth.
    Connected,
    /// A notification's payload.
    Notification(String),
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first and the longest wait between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// LISTENs on `channel` of the PostgreSQL database at `url` until
/// `on_event` returns [`ControlFlow::Break`], reconnecting with backoff
/// (50 ms doubling to 2 s; each attempt bounded to 2 s) whenever the
/// connection is lost or cannot be made. `what` names the consumer in
/// logs.
///
/// Run it in a task of its own; it returns only when the consumer says
/// stop (or never, if it does not).
pub async fn listen_postgres<F, Fut>(url: &str, channel: &str, what: &str, mut on_event: F)
where
    F: FnMut(ListenEvent) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut backoff = BACKOFF.0;
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut l = sqlx::postgres::PgListener::connect(url).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        })
        .await;
        match connected {
            Ok(Ok(mut listener)) => {
                backoff = BACKOFF.0;
                if on_event(ListenEvent::Connected).await.is_break() {
                    return;
                }
                // try_recv reports a lost connection as Ok(None) (and
                // reconnects itself on the next call): start over instead,
                // so the consumer hears about the reconnection.
                while let Ok(Some(n)) = listener.try_recv().await {
                    let event = ListenEvent::Notification(n.payload().to_owned());
                    if on_event(event).await.is_break() {
                        return;
                    }
                }
                tracing::warn!(channel, "{what}: LISTEN connection lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, channel, "{what}: cannot LISTEN yet"),
            Err(_) => tracing::debug!(channel, "{what}: LISTEN connection attempt timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}
