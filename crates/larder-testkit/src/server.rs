//! Private server processes for tests that must stop, stall or overload a
//! server: a `redis-server` or `memcached` of the test's own, on a port of
//! its own, killed when the handle drops.
//!
//! ```no_run
//! let _redis = larder_testkit::server::Server::redis(26399);
//! let _memcached = larder_testkit::server::Server::memcached(21299, &["-t", "1"]);
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process; dropping it kills the process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// `redis-server` on 127.0.0.1:`port`, persisting nothing.
    pub fn redis(port: u16) -> Server {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        Server::start(cmd, port, "redis-server")
    }

    /// `memcached` on 127.0.0.1:`port` with 16 MB of memory, plus `extra`
    /// arguments.
    pub fn memcached(port: u16, extra: &[&str]) -> Server {
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
            .args(["-m", "16", "-u", "root"])
            .args(extra);
        Server::start(cmd, port, "memcached (scripts/services installs it)")
    }

    /// Starts `cmd` and waits (up to 5 s) until `port` accepts connections.
    /// Panics when the program is missing or never listens: a test that
    /// needs a server fails loudly without one.
    pub fn start(mut cmd: Command, port: u16, what: &str) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let server = Server { child, port };
        let until = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "{what} on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
