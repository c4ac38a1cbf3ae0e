//! Who may read and write which instance: the tokens file, its lookup, and
//! the one decision every front end (gRPC, HTTP) asks. No transport here:
//! callers pass what the request carried (a bearer token, a verified client
//! certificate's subject CN) and map the [`Denied`] answer to their status.
//!
//! # The tokens file (`--tokens FILE`)
//! One identity per line, `#` starts a comment:
//!
//! ```text
//! NAME ro|rw SHA256-HEX-OF-THE-TOKEN [INSTANCE-PREFIX...]
//! NAME ro|rw cert:COMMON-NAME        [INSTANCE-PREFIX...]
//! ```
//!
//! The first kind matches `authorization: Bearer TOKEN`; only the token's
//! SHA-256 is stored, so the file is not a secret. The second matches a
//! client certificate (verified against `--tls-client-ca`) whose subject CN
//! is exactly COMMON-NAME. No prefixes: every instance. A prefix matches the
//! instance name itself and everything below it (`team-a` covers `team-a` and
//! `team-a/linux`, not `team-ab`); `""` stands for the default (empty) name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// What a call does to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Lookups and downloads (GetActionResult, FindMissingBlobs, reads).
    Read,
    /// Anything that stores (UpdateActionResult, BatchUpdateBlobs, ByteStream Write).
    Write,
}

/// What clients without credentials may do (`--anonymous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Anonymous {
    /// Every call needs a token or a known certificate.
    #[default]
    None,
    /// Reads of every instance are open; writes need an `rw` identity.
    Ro,
}

impl std::str::FromStr for Anonymous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Anonymous::None),
            "ro" => Ok(Anonymous::Ro),
            _ => Err(format!("--anonymous {s:?}: use none or ro")),
        }
    }
}

/// What a request carried that may identify its caller.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The token of an `authorization: Bearer TOKEN` header.
    pub bearer: Option<String>,
    /// Subject CN of a client certificate the TLS layer verified.
    pub client_cn: Option<String>,
}

/// Why a call is refused; front ends map it to their status
/// (UNAUTHENTICATED / 401, PERMISSION_DENIED / 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credentials where they are needed, or ones nobody issued.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asking for more than it was granted.
    #[error("{0}")]
    PermissionDenied(String),
}

/// One line of the tokens file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    write: bool,
    key: Key,
    /// Empty: every instance.
    prefixes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    TokenSha256([u8; 32]),
    CertCn(String),
}

/// A parsed tokens file plus the anonymous rule.
#[derive(Clone, Debug)]
pub struct Policy {
    entries: Vec<Entry>,
    anonymous: Anonymous,
}

impl Policy {
    /// Parses the tokens file's text; errors name the line.
    pub fn parse(text: &str, anonymous: Anonymous) -> Result<Policy, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, mode, key, prefixes @ ..] = fields.as_slice() else {
                return Err(at("expected NAME ro|rw SHA256-HEX|cert:CN [INSTANCE-PREFIX...]".into()));
            };
            let write = match *mode {
                "rw" => true,
                "ro" => false,
                other => return Err(at(format!("mode {other:?} must be ro or rw"))),
            };
            let key = parse_key(key).map_err(at)?;
            if entries.iter().any(|e| e.key == key) {
                return Err(at(format!("{name}: the same token or certificate is listed twice")));
            }
            let prefixes = prefixes.iter().map(|p| if *p == "\"\"" { String::new() } else { p.to_string() }).collect();
            entries.push(Entry { name: name.to_string(), write, key, prefixes });
        }
        Ok(Policy { entries, anonymous })
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path, anonymous: Anonymous) -> Result<Policy, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Policy::parse(&text, anonymous).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// Token and certificate identities in the file.
    pub fn counts(&self) -> (usize, usize) {
        let certs = self.entries.iter().filter(|e| matches!(e.key, Key::CertCn(_))).count();
        (self.entries.len() - certs, certs)
    }

    /// May the caller with `creds` do `access` on `instance`? Returns the
    /// identity's name (`anonymous` for an anonymous read). A bearer token
    /// wins over a certificate; an unknown token is refused even where
    /// anonymous reads are allowed, so a mistyped secret is noticed at once.
    pub fn check(&self, creds: &Credentials, instance: &str, access: Access) -> Result<&str, Denied> {
        let entry = match (&creds.bearer, &creds.client_cn) {
            (Some(token), _) => Some(self.by_token(token).ok_or_else(|| {
                Denied::Unauthenticated("the bearer token is not in the server's tokens file".into())
            })?),
            (None, Some(cn)) => self.by_cn(cn),
            (None, None) => None,
        };
        let Some(entry) = entry else {
            if self.anonymous == Anonymous::Ro && access == Access::Read {
                return Ok("anonymous");
            }
            let who = match &creds.client_cn {
                Some(cn) => format!("client certificate CN={cn:?} has no entry in the tokens file"),
                None => "no credentials".to_string(),
            };
            let need = if access == Access::Write { "writes need an rw token" } else { "this server needs a token" };
            return Err(Denied::Unauthenticated(format!(
                "{who}; {need} (send `authorization: Bearer TOKEN`, e.g. Bazel's \
                 --remote_header=Authorization=Bearer TOKEN)"
            )));
        };
        if !entry.covers(instance) {
            return Err(Denied::PermissionDenied(format!(
                "{} may only use instance names under {:?}, not {instance:?}",
                entry.name, entry.prefixes
            )));
        }
        if access == Access::Write && !entry.write {
            return Err(Denied::PermissionDenied(format!("{} is read-only (ro) and may not write", entry.name)));
        }
        Ok(&entry.name)
    }

    /// Compares the token's hash against every entry without stopping early,
    /// in constant time per entry, so timing reveals nothing of the hashes.
    fn by_token(&self, token: &str) -> Option<&Entry> {
        let hash = token_sha256(token);
        let mut found = None;
        for e in &self.entries {
            if let Key::TokenSha256(h) = &e.key {
                if bool::from(h.ct_eq(&hash)) {
                    found = Some(e);
                }
            }
        }
        found
    }

    fn by_cn(&self, cn: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| matches!(&e.key, Key::CertCn(c) if c == cn))
    }
}

impl Entry {
    fn covers(&self, instance: &str) -> bool {
        self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| {
                instance == p
                    || (!p.is_empty() && instance.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('/')))
            })
    }
}

fn parse_key(key: &str) -> Result<Key, String> {
    if let Some(cn) = key.strip_prefix("cert:") {
        if cn.is_empty() {
            return Err("cert: needs the certificate's subject CN, e.g. cert:ci-main".into());
        }
        return Ok(Key::CertCn(cn.to_string()));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(key.to_ascii_lowercase(), &mut hash).map_err(|_| {
        "the third field must be the token's SHA-256 as 64 hex digits (from `cairn token new`) or cert:CN".to_string()
    })?;
    Ok(Key::TokenSha256(hash))
}

/// SHA-256 of a token, as the tokens file stores it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token (`cairn_` and 43 characters of base64url: 256 bits)
/// and the tokens-file line that grants it `mode` on `prefixes`.
pub fn new_token(name: &str, write: bool, prefixes: &[String]) -> (String, String) {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("cairn_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    let mut line = format!("{name} {} {}", if write { "rw" } else { "ro" }, hex::encode(token_sha256(&token)));
    for p in prefixes {
        line.push(' ');
        line.push_str(if p.is_empty() { "\"\"" } else { p });
    }
    (token, line)
}

/// The policy in force, swapped whole on reload: requests in flight finish
/// under the policy they started with.
pub struct Auth {
    /// None: no `--tokens`, the server is open.
    source: Option<PathBuf>,
    anonymous: Anonymous,
    current: RwLock<Option<Arc<Policy>>>,
}

impl Auth {
    /// An open server: every call allowed.
    pub fn open() -> Auth {
        Auth { source: None, anonymous: Anonymous::None, current: RwLock::new(None) }
    }

    /// Loads `--tokens` (a bad file is an error at start-up).
    pub fn from_file(path: &Path, anonymous: Anonymous) -> Result<Auth, String> {
        let policy = Policy::load(path, anonymous)?;
        Ok(Auth { source: Some(path.to_path_buf()), anonymous, current: RwLock::new(Some(Arc::new(policy))) })
    }

    /// Re-reads the tokens file; on error the old policy stays and the error
    /// is returned for the log. Nothing to do for an open server.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.source else { return Ok(()) };
        let policy = Policy::load(path, self.anonymous)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(policy));
        Ok(())
    }

    /// The policy in force; None when the server is open.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The decision for one call; an open server allows everything.
    pub fn check(&self, creds: &Credentials, instance: &str, access: Access) -> Result<(), Denied> {
        match self.policy() {
            None => Ok(()),
            Some(p) => p.check(creds, instance, access).map(|_| ()),
        }
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        match (self.policy(), &self.source) {
            (Some(p), Some(path)) => {
                let (tokens, certs) = p.counts();
                format!(
                    "auth: {tokens} tokens and {certs} certificate identities from {}, anonymous {}",
                    path.display(),
                    if self.anonymous == Anonymous::Ro { "read-only" } else { "refused" }
                )
            }
            _ => "auth: OPEN (no --tokens): anyone who can reach the port can read and write".into(),
        }
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
