//! The demo forum on embedded defaults (SQLite, the memory cache, redb
//! views in ./larder-demo), a small data set, served on 127.0.0.1:8000:
//!
//! ```sh
//! cargo run -p larder-demo --example forum
//! ```
//!
//! Then open http://127.0.0.1:8000/ and the dashboard at /_larder. The
//! same as `larder demo --posts 2000 --comments 20000`, as a program of
//! your own would call it.

use larder_demo::{Demo, DemoConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut config = DemoConfig::new("larder-demo");
    config.posts = 2_000;
    config.comments = 20_000;
    let demo = Demo::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    println!("http://{}/  ({})", listener.local_addr()?, demo.describe());
    demo.serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
