//! The near-cache bus on a Redis Cluster whose master dies: after the
//! replica takes over, the subscriber reports the loss (so near caches clear
//! their L1) and every sharded channel delivers again. A private 6-node
//! cluster (ports 27211-27216, bus ports 27221-27226), since the test kills
//! one of its masters.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use larder_core::{BusEvent, BusMessage, Invalidation, InvalidationBus};
use larder_redis::RedisBus;
use larder_testkit::server::Server;

const PORTS: [u16; 6] = [27211, 27212, 27213, 27214, 27215, 27216];

fn node(port: u16, dir: &std::path::Path) -> Server {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        // The bus port would default to port + 10000 (37211…), inside the
        // kernel's ephemeral range, where another test's outgoing
        // connection may hold it: give it a port below that range.
        .args(["--cluster-port", &(port + 10).to_string()])
        .arg("--cluster-config-file")
        .arg(dir.join(format!("nodes-{port}.conf")))
        .arg("--dir")
        .arg(dir);
    Server::start(cmd, port, "redis-server (cluster node)")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < until, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes a message for each of 512 keys (their hashes cover every
/// sharded channel) until each has come back, or `within` passes.
/// Returns the keys whose message never came back, and whether a
/// resubscription was reported meanwhile.
async fn undelivered_within(
    bus: &RedisBus,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<BusEvent>,
    within: Duration,
) -> (BTreeSet<String>, bool) {
    let keys: Vec<String> = (0..2000).map(|i| format!("fo{i}")).collect();
    let mut waiting: BTreeSet<String> = keys.iter().take(512).cloned().collect();
    let mut resubscribed = false;
    let until = Instant::now() + within;
    while !waiting.is_empty() && Instant::now() < until {
        for key in &waiting {
            let message = BusMessage {
                origin: 7,
                invalidation: Invalidation::Key(key.clone()),
            };
            // Publishing may fail while the cluster fails over: try again.
            let _ = bus.publish(&message).await;
        }
        let round = Instant::now() + Duration::from_millis(300);
        while let Ok(Some(event)) = tokio::time::timeout_at(round.into(), events.recv()).await {
            match event {
                BusEvent::Message(m) => {
                    if let Invalidation::Key(k) = m.invalidation {
                        waiting.remove(&k);
                    }
                }
                BusEvent::Resubscribed => resubscribed = true,
                _ => {}
            }
        }
    }
    (waiting, resubscribed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_bus_delivers_on_every_channel_after_a_master_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<Server>> = PORTS.iter().map(|&p| Some(node(p, dir.path()))).collect();
    let addrs: Vec<String> = PORTS.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // Every node answers before the cluster is made, and the create is
    // retried: on a loaded machine a node may not be ready at once.
    wait_for("every node to answer PING", Duration::from_secs(20), || {
        PORTS.iter().all(|&p| cli(p, &["ping"]).trim() == "PONG")
    });
    let mut attempts = 0;
    loop {
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        if created.status.success() {
            break;
        }
        attempts += 1;
        assert!(
            attempts < 5,
            "cluster create: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(
        "cluster_state:ok on every node",
        Duration::from_secs(20),
        || {
            PORTS
                .iter()
                .all(|&p| cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
        },
    );

    let url = format!("redis+cluster://{}", addrs.join(","));
    let publisher = RedisBus::new(&url, "failover").unwrap();
    let subscriber = RedisBus::new(&url, "failover").unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    subscriber.subscribe(tx).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(BusEvent::Resubscribed)) => {}
        other => panic!("no first subscription: {other:?}"),
    }
    let (silent, _) = undelivered_within(&publisher, &mut events, Duration::from_secs(10)).await;
    assert!(
        silent.is_empty(),
        "before the failover, undelivered: {silent:?}"
    );

    // Kill a master once its replica has synced (a replica that never did
    // refuses to take over): the replica takes over after the node timeout.
    let master = PORTS
        .iter()
        .position(|&p| cli(p, &["role"]).starts_with("master"))
        .expect("a master");
    let master_id = cli(PORTS[master], &["cluster", "myid"]).trim().to_owned();
    let replica = *PORTS
        .iter()
        .find(|&&p| {
            cli(p, &["cluster", "nodes"])
                .lines()
                .any(|l| l.contains("myself") && l.contains(&format!("slave {master_id}")))
        })
        .expect("the master's replica");
    wait_for("the replica to sync", Duration::from_secs(20), || {
        cli(replica, &["info", "replication"]).contains("master_link_status:up")
    });
    drop(nodes[master].take());
    wait_for("the replica to take over", Duration::from_secs(30), || {
        cli(replica, &["role"]).starts_with("master")
            && cli(replica, &["cluster", "info"]).contains("cluster_state:ok")
    });

    // The loss is reported (near caches clear their L1) and every channel
    // delivers again.
    let mut resubscribed = false;
    let started = Instant::now();
    let silent = loop {
        let (silent, again) =
            undelivered_within(&publisher, &mut events, Duration::from_secs(3)).await;
        resubscribed |= again;
        if silent.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break silent;
        }
    };
    assert!(
        silent.is_empty(),
        "after the failover, never delivered: {silent:?}"
    );
    assert!(
        resubscribed,
        "the subscriber did not report the lost subscription (near caches would keep stale entries)"
    );
    drop(nodes);
}
