//! Table generations on a shared store (Redis): processes agree on them,
//! and a bump in one is seen by the others.

use larder_core::Cache;
use larder_query::Generations;

async fn redis_gens(prefix: &str) -> Generations {
    let mut url = larder_core::CacheUrl::parse("redis://127.0.0.1:6379/0").unwrap();
    let backend = larder_redis::RedisBackend::from_url(&mut url)
        .await
        .expect("Redis on 6379 (see scripts/services)");
    Generations::new(Cache::builder(backend).key_prefix(prefix).build().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_agree_on_generations_and_see_each_others_bumps() {
    let prefix = format!("qgentest{}", std::process::id());
    let (a, b) = (redis_gens(&prefix).await, redis_gens(&prefix).await);
    // Two "processes" racing to give a new table its first generation agree.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            g.current(&["post", "comment"]).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let before = seen[0].clone();
    a.bump(&["comment", "comment"]).await.unwrap();
    let after = b.current(&["post", "comment"]).await.unwrap();
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1], "B did not see A's bump");
    let cleanup = Cache::builder(
        larder_redis::RedisBackend::from_url(
            &mut larder_core::CacheUrl::parse("redis://127.0.0.1:6379/0").unwrap(),
        )
        .await
        .unwrap(),
    )
    .key_prefix(prefix)
    .build()
    .unwrap();
    cleanup.clear().await.unwrap();
}
