//! The server side of a bench run: a `cairn serve` child on a temp dir
//! (`--start-cairn`, and the start-up workload), and reading a server
//! process's memory from `/proc/<pid>/status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `cairn serve` child listening on an ephemeral loopback port (started by
/// [`crate::launch`], as the tests start theirs).
pub struct CairnChild {
    child: Child,
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
    /// When the process was spawned.
    pub spawned: Instant,
    /// From spawn to the "listening on" log line.
    pub startup: Duration,
    /// The admin port, once logged.
    admin: Arc<Mutex<Option<SocketAddr>>>,
    /// Holds the temp data dir when the bench made one.
    _dir: Option<ScratchDir>,
}

impl CairnChild {
    /// Starts `bin serve` over `data_dir` (a fresh temp dir when `None`) with
    /// `extra` flags, and waits up to a minute for it to listen.
    pub fn start(bin: &Path, data_dir: Option<&Path>, extra: &[String]) -> anyhow::Result<CairnChild> {
        CairnChild::start_env(bin, data_dir, extra, &[])
    }

    /// [`CairnChild::start`] with extra environment variables (the `AWS_*`
    /// of an object store).
    pub fn start_env(
        bin: &Path,
        data_dir: Option<&Path>,
        extra: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<CairnChild> {
        let temp = match data_dir {
            Some(_) => None,
            None => Some(ScratchDir::new("serve")?),
        };
        let dir = data_dir.map_or_else(|| temp.as_ref().expect("temp").path().to_path_buf(), Path::to_path_buf);
        let mut flags = vec!["--log-level".to_string(), "warn,cairn::server=info".to_string()];
        flags.extend_from_slice(extra);
        let mut command = crate::launch::serve_command(bin, &dir, &flags);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let started = Instant::now();
        let admin = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&admin);
        let launched = crate::launch::launch(command, Duration::from_secs(60), move |line| {
            if let Some(addr) = crate::launch::addr_after(line, crate::launch::ADMIN_LISTENING) {
                *seen.lock().expect("admin address") = Some(addr);
            } else if crate::launch::grpc_addr(line).is_none() {
                // The server's warnings and errors stay visible.
                eprintln!("[cairn serve] {line}");
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot run {} serve: {e}", bin.display()))?;
        Ok(CairnChild {
            child: launched.child,
            url: format!("grpc://{}", launched.addr),
            spawned: started,
            startup: launched.startup,
            admin,
            _dir: temp,
        })
    }

    /// The admin port's address, once the server has logged it (up to 10 s).
    pub fn admin(&self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = *self.admin.lock().expect("admin address") {
                return Ok(addr);
            }
            anyhow::ensure!(Instant::now() < deadline, "cairn serve did not log its admin address");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 30 s); returns how long the exit took.
    pub fn stop(mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        t.elapsed()
    }
}

impl Drop for CairnChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under [`bench_tmp`] removed (with its contents) on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(what: &str) -> std::io::Result<ScratchDir> {
        let path = bench_tmp().join(format!("cairn-bench-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where the bench puts its scratch data: `$CAIRN_BENCH_TMP`, else
/// `/var/tmp` (on disk, unlike a tmpfs `/tmp`, so blob writes are real).
pub fn bench_tmp() -> PathBuf {
    std::env::var_os("CAIRN_BENCH_TMP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Resident and peak resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

/// Reads VmRSS and VmHWM of `pid`; `None` when the process is gone or not Linux.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory { rss: field("VmRSS:")?, hwm: field("VmHWM:")? })
}

/// Resets a process's VmHWM to its current RSS (Linux `clear_refs` 5), so
/// the next reading is the peak of what follows. False when not allowed.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Formats bytes as MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}
