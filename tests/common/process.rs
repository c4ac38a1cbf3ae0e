//! Runs the real `cairn serve` binary as a child process, for tests that
//! need to kill it (kill -9) or watch its start-up.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `cairn serve` child process listening on an ephemeral loopback port.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin port, unless the test passed `--admin-listen off`.
    pub admin: Option<SocketAddr>,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `cairn serve` on 127.0.0.1:0 over `data_dir` with extra flags
    /// (the admin port on 127.0.0.1:0 too, unless `extra` names one; the
    /// gRPC port too, unless `extra` names one with `--listen`, as a test
    /// restarting a server on its old port does), and waits for its
    /// "listening on" lines to learn the ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_env(data_dir, extra, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables (e.g. the
    /// `AWS_*` of an object store).
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(String, String)]) -> ServerProcess {
        let mut command = cairn::launch::serve_command(Path::new(env!("CARGO_BIN_EXE_cairn")), data_dir, extra);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let off = extra.windows(2).any(|w| w[0] == "--admin-listen" && w[1] == "off");
        ServerProcess::spawn(command, !off)
    }

    /// Runs `command` (a `cairn serve` whose flags the caller chose, e.g.
    /// from a config file) and waits for its gRPC "listening on" line, and
    /// for the admin port's when `admin` (it must then listen on one).
    pub fn spawn(mut command: Command, admin: bool) -> ServerProcess {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        // The gRPC "listening on" line is found by cairn::launch, as the bench finds it.
        let launched = cairn::launch::launch(command, Duration::from_secs(60), move |line| {
            if line.contains(cairn::launch::ADMIN_LISTENING) {
                let _ = admin_tx.send(cairn::launch::addr_after(line, cairn::launch::ADMIN_LISTENING));
            }
            eprintln!("[cairn] {line}");
            lines.lock().unwrap().push(line.to_string());
        })
        .expect("cairn serve did not report its listen address");
        let (child, addr) = (launched.child, launched.addr);
        let admin = admin.then(|| {
            admin_rx
                .recv_timeout(Duration::from_secs(60))
                .ok()
                .flatten()
                .expect("cairn serve did not report its admin address")
        });
        ServerProcess { child, addr, admin, log }
    }

    /// The HTTP cache port (`--http-listen`), from its "http listening on"
    /// line; waits up to 60 s for it.
    pub fn http_addr(&self) -> SocketAddr {
        const MARKER: &str = "http listening on ";
        self.wait_for_log(MARKER);
        let line = self.log_lines(MARKER).remove(0);
        cairn::launch::addr_after(&line, MARKER).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The lines logged so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Waits (up to 60 s) until the server logs a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "cairn serve never logged {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits (up to `limit`) for the server to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "cairn serve did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.http_url()).unwrap().connect().await.expect("connect")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("cairn serve did not exit within 30 s of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
