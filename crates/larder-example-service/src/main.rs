//! `cargo run -p larder-example-service` (PostgreSQL and Redis from
//! `DATABASE_URL`, `REDIS_URL`; the dashboard token from `ADMIN_TOKEN`).

use larder_example_service::{build, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt::init();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let service = build(Settings {
        database_url: env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
        redis_url: env("REDIS_URL", "redis://127.0.0.1:6379/0"),
        admin_token: env("ADMIN_TOKEN", "change-me"),
    })
    .await?;
    let addr = env("LISTEN", "127.0.0.1:8080");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("http://{addr}/posts/1  (dashboard http://{addr}/_larder#token=…)");
    axum::serve(listener, service.router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let _ = service.stop_worker.send(true);
    Ok(())
}
