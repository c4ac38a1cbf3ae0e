//! curl, the plain HTTP client that drives the HTTP cache port in tests
//! (README's curl examples come from these tests).

use std::path::Path;
use std::process::Command;

use cairn::digest::{Digest, DigestFunction};

/// What curl got: the status code, the body, and the response headers.
pub struct Reply {
    pub code: u16,
    pub body: Vec<u8>,
    /// Lower-cased, as curl's `-D` wrote them.
    pub headers: String,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs `curl -sS <args>` on a blocking thread (the server may run in this
/// process); panics if curl got no HTTP answer at all.
pub async fn curl(args: &[&str]) -> Reply {
    let shown: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    try_curl(args).await.unwrap_or_else(|e| panic!("curl {shown:?}: {e}"))
}

/// Like [`curl`], but a connection that fails before any HTTP answer (a
/// refused TLS handshake, plain text to a TLS port) is `Err(curl's stderr)`.
pub async fn try_curl(args: &[&str]) -> Result<Reply, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
        let out = Command::new("curl")
            .arg("-sS")
            .arg("-o")
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}"])
            .args(&args)
            .output()
            .expect("run curl (apt-get install curl)");
        if !out.status.success() {
            return Err(format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status));
        }
        Ok(Reply {
            code: String::from_utf8_lossy(&out.stdout).trim().parse().expect("status code"),
            body: std::fs::read(&body).unwrap_or_default(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default().to_ascii_lowercase(),
        })
    })
    .await
    .unwrap()
}

/// SHA-256 digest of `data`, the only function of the HTTP protocol.
pub fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// Writes `data` to `dir/name` and returns the path, for `curl -T`.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}
