//! A real Garage cluster on loopback: three `garage server` processes in a
//! scratch dir, replication factor 3, one zone per node, a key and a bucket.
//! Nodes can be killed one by one; everything is killed and removed on drop.
//! Starts in about a second. The object-store tests and `cairn bench
//! --cold-tier` share it, so both measure against the same kind of store.
//!
//! Needs the Garage binary: `scripts/setup.sh` installs Garage 2.5.0 (once,
//! outside the clone) and prints `CAIRN_GARAGE=<path>`; set `CAIRN_GARAGE` to
//! use another one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::server::ScratchDir;

/// Where `scripts/setup.sh` installs Garage unless told otherwise.
const DEFAULT_GARAGE: &str = "/var/tmp/garage-install/bin/garage";

/// The bucket every cluster gets.
pub const BUCKET: &str = "cairn";

/// The Garage binary: `$CAIRN_GARAGE`, else where `scripts/setup.sh` puts it.
pub fn garage_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CAIRN_GARAGE")
        .filter(|g| !g.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_GARAGE), PathBuf::from);
    if !path.is_file() {
        bail!(
            "no Garage binary at {} (CAIRN_GARAGE or the default). Run scripts/setup.sh, which installs \
             Garage 2.5.0 once (cargo install, 7-18 minutes on 2 cores) and prints CAIRN_GARAGE=<path>.",
            path.display()
        );
    }
    Ok(path)
}

struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

/// A running three-node cluster.
pub struct Garage {
    binary: PathBuf,
    dir: ScratchDir,
    nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

impl Garage {
    /// Starts the cluster and creates the key and the bucket. A cluster that
    /// does not form (a port picked free was taken before its node bound it,
    /// by a concurrent process) is torn down and started again on fresh ports.
    pub fn start() -> anyhow::Result<Garage> {
        let mut attempt = 1;
        loop {
            let mut garage = Garage::launch()?;
            match garage.form_cluster() {
                Ok(()) => return Ok(garage),
                Err(e) if attempt < 3 => eprintln!("garage cluster did not form (attempt {attempt}), retrying: {e}"),
                Err(e) => return Err(e.context(format!("garage cluster did not form after {attempt} attempts"))),
            }
            attempt += 1;
        }
    }

    /// Spawns the three nodes on fresh ports.
    fn launch() -> anyhow::Result<Garage> {
        let binary = garage_binary()?;
        let dir = ScratchDir::new("garage")?;
        let secret = random_hex(32);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let root = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&root)?;
            let (rpc, s3) = (free_port()?, free_port()?);
            let config = root.join("garage.toml");
            let text = format!(
                "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                root = root.display()
            );
            std::fs::write(&config, text)?;
            // Garage refuses a config holding the RPC secret that others can read.
            std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let log = std::fs::File::create(root.join("log"))?;
            let child = Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {} server", binary.display()))?;
            nodes.push(Node { config, s3_port: s3, child: Some(child) });
        }
        Ok(Garage { binary, dir, nodes, key_id: format!("GK{}", random_hex(12)), secret: random_hex(32) })
    }

    /// Runs `garage -c <node i's config> args...`, retrying while the nodes
    /// come up (bounded), and returns its stdout.
    fn cli(&self, node: usize, args: &[&str]) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.binary)
                .arg("-c")
                .arg(&self.nodes[node].config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .context("run garage")?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "garage {args:?} failed: {}\n{}\nnode log:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{i}/log"))).unwrap_or_default()
    }

    fn form_cluster(&mut self) -> anyhow::Result<()> {
        let ids = (0..3)
            .map(|i| Ok(self.cli(i, &["node", "id", "-q"])?.trim().to_string()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for id in &ids[1..] {
            self.cli(0, &["node", "connect", id])?;
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.get(..16).with_context(|| format!("garage node id {id:?}"))?;
            self.cli(0, &["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", short])?;
        }
        self.cli(0, &["layout", "apply", "--version", "1"])?;
        let (key, secret) = (self.key_id.clone(), self.secret.clone());
        self.cli(0, &["key", "import", "-n", "cairn", "--yes", &key, &secret])?;
        self.cli(0, &["bucket", "create", BUCKET])?;
        self.cli(0, &["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key])?;
        Ok(())
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// `s3://cairn/{prefix}`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The object_store settings that reach node `i` (what the `AWS_*`
    /// environment variables of a `cairn serve` would say).
    pub fn settings(&self, i: usize) -> Vec<(String, String)> {
        self.env(i).into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
    }

    /// The `AWS_*` environment of a process that talks to node `i`.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint(i)),
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// Kills node `i` (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
