//! Helpers for the TLS and token tests: certificates made fresh for each
//! test with rcgen (nothing committed), a tokens file, and a tonic channel
//! that carries a token.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A CA and its files in a temp dir.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the CA certificate.
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate and key signed by a [`Ca`], as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca { issuer, cert, dir: dir.to_path_buf() }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, file: &str) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "cairn test server");
        self.issue(params, file)
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn client(&self, cn: &str, file: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.issue(params, file)
    }

    fn issue(&self, params: CertificateParams, file: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Issued { cert: c, key: k }
    }
}

/// A config over `dir/data` serving TLS with a server certificate from `ca`
/// (mTLS when `client_ca` names the CA client certificates must chain to).
pub fn tls_config(dir: &Path, ca: &Ca, client_ca: Option<&Path>) -> cairn::config::Config {
    let server = ca.server("server");
    let mut config = cairn::config::Config::for_data_dir(dir.join("data"));
    config.security.tls =
        Some(cairn::tls::TlsFiles { cert: server.cert, key: server.key, client_ca: client_ca.map(Path::to_path_buf) });
    config
}

/// The three TLS files of a server at fixed paths under a dir, whose
/// contents a test swaps (then sends SIGHUP) to test reloads.
pub struct TlsFilesOnDisk {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsFilesOnDisk {
    pub fn new(dir: &Path) -> TlsFilesOnDisk {
        TlsFilesOnDisk { cert: dir.join("cert.pem"), key: dir.join("key.pem"), client_ca: dir.join("ca.pem") }
    }

    /// A server certificate from `ca`, and `ca` as the client CA.
    pub fn install(&self, ca: &Ca) {
        let s = ca.server("server");
        std::fs::copy(&s.cert, &self.cert).unwrap();
        std::fs::copy(&s.key, &self.key).unwrap();
        std::fs::copy(&ca.cert, &self.client_ca).unwrap();
    }

    /// `--tls-cert … --tls-key … --tls-client-ca …`
    pub fn flags(&self) -> Vec<&str> {
        let [cert, key, ca] = [&self.cert, &self.key, &self.client_ca].map(|p| p.to_str().expect("UTF-8 temp path"));
        vec!["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca]
    }
}

/// Runs `cairn token new NAME MODE PREFIX...` (the real binary) and returns
/// the token and the tokens-file line it printed.
pub fn token_new(name: &str, mode: &str, prefixes: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["token", "new", name, mode])
        .args(prefixes)
        .output()
        .expect("run cairn token new");
    assert!(out.status.success(), "cairn token new: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (token, line) = (lines.next().unwrap().to_string(), lines.next().unwrap().to_string());
    (token, line)
}

/// The real binary with its log lines readable by the test.
pub struct Logged {
    pub child: Child,
    pub addr: String,
    /// The "listening on" line.
    pub startup: String,
    lines: Receiver<String>,
}

impl Logged {
    /// Starts `cairn serve`; `Err` with its output if it exits before listening.
    pub fn start(data: &Path, extra: &[&str]) -> Result<Logged, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[cairn] {line}");
                let _ = tx.send(line);
            }
        });
        let mut logged = Logged { child, addr: String::new(), startup: String::new(), lines };
        let line = logged.wait_for(cairn::launch::GRPC_LISTENING)?;
        logged.addr = cairn::launch::grpc_addr(&line).expect("the listening line has an address").to_string();
        logged.startup = line;
        Ok(logged)
    }

    /// The next log line containing `what`; `Err` with what came instead
    /// when the process ends or 30 s pass.
    pub fn wait_for(&self, what: &str) -> Result<String, String> {
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(what) {
                return Ok(line);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        Err(seen)
    }

    pub fn hup(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
