//! The near cache across two real processes: this test process (A) and a
//! child (B, this same test binary running the ignored `near_node` test),
//! sharing Redis as L2, with the invalidation bus on Redis pub/sub or on
//! PostgreSQL LISTEN/NOTIFY.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::mem::MemBackend;
use larder::prelude::*;
use larder::redis::RedisBus;
use larder::sql::PgBus;
use larder::{InvalidationBus, NearBackend};

const L2: &str = "redis://127.0.0.1:6379/0";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const L1_TTL: Duration = Duration::from_millis(1500);
const NODE_ENV: &str = "LARDER_NEAR_NODE";

/// `bus_kind bus_url channel prefix`, as passed to the child.
#[derive(Clone)]
struct Setup {
    bus_kind: &'static str,
    bus_url: String,
    channel: String,
    prefix: String,
}

impl Setup {
    fn new(bus_kind: &'static str, bus_url: &str) -> Setup {
        let tag = format!("{}_{}", std::process::id(), fastrand_tag());
        Setup {
            bus_kind,
            bus_url: bus_url.to_owned(),
            channel: format!("larder_near_{tag}"),
            prefix: format!("near{tag}"),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.bus_kind, self.bus_url, self.channel, self.prefix
        )
    }

    fn decode(s: &str) -> Setup {
        let mut p = s.split(' ');
        let mut next = || p.next().expect("four fields").to_owned();
        let kind = next();
        Setup {
            bus_kind: if kind == "redis" { "redis" } else { "postgres" },
            bus_url: next(),
            channel: next(),
            prefix: next(),
        }
    }

    async fn open(&self) -> (Cache, Arc<NearBackend>) {
        let l2 = Cache::from_url(L2)
            .await
            .expect("Redis on 6379 (see scripts/services)");
        let bus: Arc<dyn InvalidationBus> = match self.bus_kind {
            "redis" => Arc::new(RedisBus::new(&self.bus_url, &self.channel).unwrap()),
            _ => Arc::new(PgBus::new(&self.bus_url, &self.channel).unwrap()),
        };
        let near = NearBackend::builder(
            Arc::new(MemBackend::with_max_entries(1000)),
            l2.backend().clone(),
        )
        .l1_ttl(L1_TTL)
        .bus(bus)
        .build()
        .await
        .unwrap();
        let near = Arc::new(near);
        // These tests are about invalidations reaching the other process;
        // a prefix clear publishes through PostgreSQL, which beside the
        // rest of the suite on two cores can take longer than the 100 ms
        // default deadline.
        let cache = Cache::builder_arc(near.clone())
            .key_prefix(self.prefix.clone())
            .deadline(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        (cache, near)
    }
}

fn fastrand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Process B: answers `get KEY`, `applied`, `quit` on stdin, one line each.
#[test]
#[ignore = "the child process of the near cache tests; they run it"]
fn near_node() {
    let setup = Setup::decode(&std::env::var(NODE_ENV).expect("run by the near cache tests"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cache, near) = rt.block_on(setup.open());
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let answer = match line.split_once(' ') {
            Some(("get", key)) => match rt.block_on(cache.get::<String>(key)).unwrap() {
                Some(v) => format!("value {v}"),
                None => "none".to_owned(),
            },
            _ if line == "applied" => near.bus_events_applied().to_string(),
            _ if line == "quit" => break,
            _ => format!("error unknown command {line:?}"),
        };
        writeln!(out, "@@ {answer}").unwrap();
        out.flush().unwrap();
    }
}

struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Node {
    fn spawn(setup: &Setup) -> Node {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "near_node",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(NODE_ENV, setup.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Node {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "process B exited"
            );
            // libtest prints its own text around ours, even on our line.
            if let Some((_, answer)) = line.trim_end().split_once("@@ ") {
                return answer.to_owned();
            }
        }
    }

    fn applied(&mut self) -> u64 {
        self.ask("applied").parse().unwrap()
    }

    /// Waits until B has applied more than `n` bus events.
    fn wait_applied_over(&mut self, n: u64) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.applied() <= n {
            assert!(
                Instant::now() < until,
                "the bus never delivered to process B"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes in A reach B's reads once the message is delivered.
async fn writes_reach_the_other_process(setup: &Setup) -> (Cache, Node) {
    let (a, _near_a) = setup.open().await;
    let mut b = Node::spawn(setup);
    // B counts its first subscription as an event: it is listening.
    b.wait_applied_over(0);

    a.set("k", "v1", Ttl::secs(60)).await.unwrap();
    assert_eq!(b.ask("get k"), "value v1");
    // Now in B's L1. A write in A must reach it.
    let seen = b.applied();
    a.set("k", "v2", Ttl::secs(60)).await.unwrap();
    b.wait_applied_over(seen);
    assert_eq!(
        b.ask("get k"),
        "value v2",
        "B read the old value after the invalidation"
    );

    let seen = b.applied();
    a.delete("k").await.unwrap();
    b.wait_applied_over(seen);
    assert_eq!(b.ask("get k"), "none", "B read a deleted value");

    // A prefix clear too.
    a.set("k", "v3", Ttl::secs(60)).await.unwrap();
    assert_eq!(b.ask("get k"), "value v3");
    let seen = b.applied();
    a.clear().await.unwrap();
    b.wait_applied_over(seen);
    assert_eq!(b.ask("get k"), "none", "B read a cleared value");
    (a, b)
}

/// On the Redis Cluster of scripts/services the bus uses sharded pub/sub:
/// the same invalidations reach the other process, and the bus's channels
/// live on every master (deliveries spread over the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_bus_invalidates_the_other_process_from_every_master() {
    let setup = Setup::new(
        "redis",
        "redis+cluster://127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003",
    );
    let (a, mut b) = writes_reach_the_other_process(&setup).await;
    // Keys hash to different channels: each write reaches B whichever
    // master carries its channel.
    for i in 0..20 {
        let key = format!("spread{i}");
        a.set(&key, "old", Ttl::secs(60)).await.unwrap();
        assert_eq!(b.ask(&format!("get {key}")), "value old");
        let seen = b.applied();
        a.set(&key, "new", Ttl::secs(60)).await.unwrap();
        b.wait_applied_over(seen);
        assert_eq!(b.ask(&format!("get {key}")), "value new", "{key}");
    }
    let mut masters = 0;
    for port in 27001..=27006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
        if !matches!(&role[0], redis::Value::BulkString(r) if r == b"master") {
            continue;
        }
        masters += 1;
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg(format!("{}:*", setup.channel))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            !channels.is_empty(),
            "no channel of the bus on the master at {port}"
        );
    }
    assert_eq!(masters, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_invalidates_the_other_process_and_ttl_bounds_a_dead_bus() {
    let mut bus = Server::redis(27302);
    let setup = Setup::new("redis", "redis://127.0.0.1:27302");
    let (a, mut b) = writes_reach_the_other_process(&setup).await;

    // The bus dies: writes still succeed, and B serves the old value for
    // at most its L1 TTL.
    let seen = b.applied();
    a.set("k", "before", Ttl::secs(60)).await.unwrap();
    // Let that write's own message land first, or it could drop B's L1
    // entry after the bus died and hide what this checks.
    b.wait_applied_over(seen);
    assert_eq!(b.ask("get k"), "value before");
    bus.kill();
    let written = Instant::now();
    a.set("k", "after", Ttl::secs(60)).await.unwrap();
    assert_eq!(
        b.ask("get k"),
        "value before",
        "B's L1 holds the old value (no bus)"
    );
    loop {
        let v = b.ask("get k");
        if v == "value after" {
            break;
        }
        assert!(
            written.elapsed() < L1_TTL + Duration::from_millis(1500),
            "B still read {v:?} {:?} after the write (L1 TTL {L1_TTL:?})",
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The bus comes back: B resubscribes and invalidations flow again.
    let seen = b.applied();
    bus.restart();
    b.wait_applied_over(seen);
    let seen = b.applied();
    a.set("k", "again", Ttl::secs(60)).await.unwrap();
    b.wait_applied_over(seen);
    assert_eq!(b.ask("get k"), "value again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bus_invalidates_the_other_process() {
    let setup = Setup::new("postgres", POSTGRES);
    writes_reach_the_other_process(&setup).await;
}

/// A redis-server of our own, to kill.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn redis(port: u16) -> Server {
        let mut s = Server { port, child: None };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
