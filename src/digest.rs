//! Digests, digest functions, and ByteStream resource names: parsed and
//! validated once, at the edge. Everything inward works on these types, so a
//! malformed hash or a path-traversing instance name never reaches the store.

use std::fmt;

use crate::error::{Error, Result};
use crate::proto::reapi;

/// The hash functions cairn stores blobs under. Both produce 32 bytes, so a
/// digest's hash is always `[u8; 32]` and its hex form 64 characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Blake3,
}

impl DigestFunction {
    /// Every supported function, in the order Capabilities advertises them.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// Resolves a request's `digest_function` field. REAPI says UNKNOWN (0)
    /// means "infer from the hash length"; 64 hex digits is SHA-256 there.
    pub fn from_proto(value: i32) -> Result<DigestFunction> {
        match reapi::digest_function::Value::try_from(value) {
            Ok(reapi::digest_function::Value::Unknown) | Ok(reapi::digest_function::Value::Sha256) => {
                Ok(DigestFunction::Sha256)
            }
            Ok(reapi::digest_function::Value::Blake3) => Ok(DigestFunction::Blake3),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "digest function {} is not supported; use SHA256 or BLAKE3",
                other.as_str_name()
            ))),
            Err(_) => Err(Error::InvalidArgument(format!("unknown digest function value {value}"))),
        }
    }

    /// The REAPI enum value.
    pub fn to_proto(self) -> reapi::digest_function::Value {
        match self {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256,
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3,
        }
    }

    /// Lower-case name, as used in resource names and on disk.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// One byte identifying the function in storage keys.
    pub fn tag(self) -> u8 {
        match self {
            DigestFunction::Sha256 => 1,
            DigestFunction::Blake3 => 9,
        }
    }

    /// Inverse of [`DigestFunction::tag`].
    pub fn from_tag(tag: u8) -> Option<DigestFunction> {
        match tag {
            1 => Some(DigestFunction::Sha256),
            9 => Some(DigestFunction::Blake3),
            _ => None,
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The digest of `data` under this function.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        Digest { function: self, hash: h.finalize(), size: data.len() as u64 }
    }

    /// The digest of the empty blob, which every CAS holds implicitly.
    pub fn empty(self) -> Digest {
        self.digest_of(&[])
    }
}

/// An incremental hasher for either function; cloneable so a paused upload
/// can keep its hashing state.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finalize(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => sha2::Digest::finalize(h).into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// A validated content digest: function, 32-byte hash and size.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    pub function: DigestFunction,
    pub hash: [u8; 32],
    pub size: u64,
}

/// The 32 bytes spelled by exactly 64 lower-case hex digits; None otherwise.
fn decode_lower_hex(hash: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let digits: &[u8; 64] = hash.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 32];
    for (b, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *b = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(bytes)
}

impl Digest {
    /// Parses a hash string and size: exactly 64 lower-case hex digits and a
    /// non-negative size.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Digest> {
        // One pass over the digits on the common path (a FindMissingBlobs of
        // 10,000 digests parses them all); the checks below only explain a failure.
        if let (Some(bytes), true) = (decode_lower_hex(hash), size >= 0) {
            return Ok(Digest { function, hash: bytes, size: size as u64 });
        }
        if hash.len() != 64 {
            return Err(Error::InvalidArgument(format!(
                "digest hash {hash:?} has {} characters; a {} hash is 64 lower-case hex digits",
                hash.len(),
                function.name()
            )));
        }
        if !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::InvalidArgument(format!(
                "digest hash {hash:?} is not lower-case hex (only 0-9 and a-f are allowed)"
            )));
        }
        Err(Error::InvalidArgument(format!("digest {hash} has negative size {size}")))
    }

    /// Parses a REAPI `Digest` message; a missing message is an error naming `what`.
    pub fn from_proto(function: DigestFunction, d: Option<&reapi::Digest>, what: &str) -> Result<Digest> {
        let d = d.ok_or_else(|| Error::InvalidArgument(format!("{what} is missing")))?;
        Digest::parse(function, &d.hash, d.size_bytes).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{what}: {m}")),
            other => other,
        })
    }

    /// The REAPI message for this digest.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest { hash: self.hex(), size_bytes: self.size as i64 }
    }

    /// Lower-case hex of the hash.
    pub fn hex(&self) -> String {
        let mut out = [0u8; 64];
        hex::encode_to_slice(self.hash, &mut out).expect("64 digits for 32 bytes");
        // Straight into a string: hex::encode builds one char by char, which
        // showed in the profile of FindMissingBlobs answers.
        std::str::from_utf8(&out).expect("hex digits are ASCII").to_string()
    }

    /// True for the empty blob, which is always present.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == self.function.empty()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.function.name(), self.hex(), self.size)
    }
}

/// How a ByteStream resource's bytes are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    Identity,
    Zstd,
}

impl Compressor {
    /// Parses the compressor segment of a `compressed-blobs/{compressor}/...` name.
    fn parse_segment(s: &str) -> Result<Compressor> {
        match s {
            "zstd" => Ok(Compressor::Zstd),
            "identity" => Ok(Compressor::Identity),
            other => Err(Error::InvalidArgument(format!("compressor {other:?} is not supported; cairn accepts zstd"))),
        }
    }

    /// Resolves a REAPI `Compressor.Value`.
    pub fn from_proto(value: i32) -> Result<Compressor> {
        match reapi::compressor::Value::try_from(value) {
            Ok(reapi::compressor::Value::Identity) => Ok(Compressor::Identity),
            Ok(reapi::compressor::Value::Zstd) => Ok(Compressor::Zstd),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "compressor {} is not supported; cairn accepts IDENTITY and ZSTD",
                other.as_str_name()
            ))),
            Err(_) => Err(Error::InvalidArgument(format!("unknown compressor value {value}"))),
        }
    }
}

/// Path segments REAPI reserves; an instance name may not contain them, which
/// is what makes resource names parse unambiguously. `capabilities` is
/// reserved by REAPI too (remote_execution.proto, resource name rules).
const RESERVED_SEGMENTS: [&str; 7] =
    ["blobs", "uploads", "compressed-blobs", "actions", "actionResults", "operations", "capabilities"];

/// Longest instance name accepted, in bytes. Instance names key ActionCache
/// entries and are stored with each one; real ones are a few words
/// ("main", "ci/linux-x86"), and REAPI leaves the syntax to the server.
pub const MAX_INSTANCE_NAME: usize = 255;

/// Longest upload id (the `{uuid}` of an upload name) accepted, in bytes. A
/// UUID is 36; the slack admits other identifiers some clients use.
pub const MAX_UPLOAD_ID: usize = 128;

/// Longest ByteStream resource name accepted, in bytes: a 255-byte instance,
/// an upload id and the longest blob part (about 140 bytes) leave ~1.4 KiB
/// for the optional trailing metadata of upload names, which cairn ignores
/// but keeps as the key of a resumable upload.
pub const MAX_RESOURCE_NAME: usize = 2048;

/// Shows the start of a client-supplied string in an error message; a
/// 4 MiB name must not become a 4 MiB log line.
fn shown(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// Validates an instance name: at most [`MAX_INSTANCE_NAME`] bytes of
/// `/`-separated segments, none empty, `.` or `..`, none reserved. The empty
/// name is the default instance.
pub fn validate_instance(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > MAX_INSTANCE_NAME {
        return Err(Error::InvalidArgument(format!(
            "instance name {} is {} bytes, longer than the {MAX_INSTANCE_NAME} bytes cairn accepts",
            shown(name),
            name.len()
        )));
    }
    for seg in name.split('/') {
        let problem = if seg.is_empty() {
            Some("an empty path segment")
        } else if seg == "." || seg == ".." {
            Some("a '.' or '..' segment")
        } else if RESERVED_SEGMENTS.contains(&seg) {
            Some("a segment REAPI reserves (blobs, uploads, compressed-blobs, capabilities, ...)")
        } else if seg.bytes().any(|b| b.is_ascii_control()) {
            Some("a control character")
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Error::InvalidArgument(format!("instance name {name:?} contains {p}")));
        }
    }
    Ok(())
}

/// Validates the `{uuid}` segment of an upload name: an identifier of 1 to
/// [`MAX_UPLOAD_ID`] ASCII letters, digits and `-_.~+=`, not made of dots
/// only and not a reserved segment. It names an upload, never a path.
pub fn validate_upload_id(id: &str) -> Result<()> {
    let odd = |c: &char| !(c.is_ascii_alphanumeric() || "-_.~+=".contains(*c));
    let problem = if id.is_empty() {
        Some("is empty".to_string())
    } else if id.len() > MAX_UPLOAD_ID {
        Some(format!("is {} bytes, longer than {MAX_UPLOAD_ID}", id.len()))
    } else if id.bytes().all(|b| b == b'.') {
        Some("is a '.' or '..' path segment".to_string())
    } else if RESERVED_SEGMENTS.contains(&id) {
        Some("is a reserved segment, not an identifier".to_string())
    } else {
        id.chars().find(odd).map(|c| format!("contains {c:?}; use letters, digits and -_.~+= (a UUID)"))
    };
    match problem {
        Some(p) => Err(Error::InvalidArgument(format!("upload id {} {p}", shown(id)))),
        None => Ok(()),
    }
}

/// Refuses resource names over [`MAX_RESOURCE_NAME`] before splitting them.
fn check_name_length(name: &str) -> Result<()> {
    if name.len() > MAX_RESOURCE_NAME {
        return Err(Error::InvalidArgument(format!(
            "resource name {} is {} bytes, longer than the {MAX_RESOURCE_NAME} bytes cairn accepts",
            shown(name),
            name.len()
        )));
    }
    Ok(())
}

/// A parsed ByteStream resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub instance: String,
    /// Set for uploads: the client's upload id (`uploads/{uuid}/...`).
    pub upload_id: Option<String>,
    pub compressor: Compressor,
    pub digest: Digest,
}

impl ResourceName {
    /// Parses a read name: `{instance}/blobs/{function/}{hash}/{size}` or
    /// `{instance}/compressed-blobs/{compressor}/{function/}{hash}/{size}`.
    pub fn parse_read(name: &str) -> Result<ResourceName> {
        check_name_length(name)?;
        let segs: Vec<&str> = name.split('/').collect();
        let at = segs
            .iter()
            .position(|s| *s == "blobs" || *s == "compressed-blobs")
            .ok_or_else(|| bad_name(name, "expected {instance}/blobs/{hash}/{size}"))?;
        let instance = instance_from(&segs[..at])?;
        let (compressor, digest, rest) = parse_blob_part(name, &segs[at..])?;
        if !rest.is_empty() {
            return Err(bad_name(name, "unexpected segments after {size}"));
        }
        Ok(ResourceName { instance, upload_id: None, compressor, digest })
    }

    /// Parses a write name: `{instance}/uploads/{uuid}/blobs/{function/}{hash}/{size}{/metadata}`
    /// or the `compressed-blobs/{compressor}/...` form. Trailing metadata is allowed and ignored.
    pub fn parse_write(name: &str) -> Result<ResourceName> {
        check_name_length(name)?;
        let segs: Vec<&str> = name.split('/').collect();
        let at = segs
            .iter()
            .position(|s| *s == "uploads")
            .ok_or_else(|| bad_name(name, "expected {instance}/uploads/{uuid}/blobs/{hash}/{size}"))?;
        let instance = instance_from(&segs[..at])?;
        let upload_id = match segs.get(at + 1) {
            Some(id) if *id != "blobs" && *id != "compressed-blobs" => {
                validate_upload_id(id)
                    .map_err(|e| Error::InvalidArgument(format!("resource name {}: {e}", shown(name))))?;
                id.to_string()
            }
            _ => return Err(bad_name(name, "missing upload id after 'uploads/'")),
        };
        let (compressor, digest, _metadata) = parse_blob_part(name, &segs[at + 2..])?;
        Ok(ResourceName { instance, upload_id: Some(upload_id), compressor, digest })
    }
}

/// Joins and validates the segments before `blobs`/`uploads`. A leading `/`
/// (one empty segment) is an empty segment too, not the default instance.
fn instance_from(segs: &[&str]) -> Result<String> {
    let instance = segs.join("/");
    if segs.len() == 1 && segs[0].is_empty() {
        return Err(Error::InvalidArgument("instance name \"\" contains an empty path segment (a leading '/')".into()));
    }
    validate_instance(&instance)?;
    Ok(instance)
}

/// Parses `blobs/{function/}{hash}/{size}...` or `compressed-blobs/{c}/{function/}{hash}/{size}...`,
/// returning the segments left over.
fn parse_blob_part<'a>(name: &str, segs: &'a [&'a str]) -> Result<(Compressor, Digest, &'a [&'a str])> {
    let mut i = 0;
    let compressor = match segs.first() {
        Some(&"blobs") => {
            i += 1;
            Compressor::Identity
        }
        Some(&"compressed-blobs") => {
            let c = segs.get(1).ok_or_else(|| bad_name(name, "missing compressor"))?;
            i += 2;
            Compressor::parse_segment(c)?
        }
        _ => return Err(bad_name(name, "expected 'blobs' or 'compressed-blobs'")),
    };
    // An optional digest function name precedes the hash (REAPI 2.3+): a
    // segment that is not 64 characters long, followed by a hash and a size.
    let mut function = DigestFunction::Sha256;
    if segs.len() >= i + 3 && segs[i].len() != 64 {
        function = match segs[i] {
            "sha256" => DigestFunction::Sha256,
            "blake3" => DigestFunction::Blake3,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "resource name {name:?}: digest function {other:?} is not supported; use sha256 or blake3"
                )))
            }
        };
        i += 1;
    }
    let hash = segs.get(i).ok_or_else(|| bad_name(name, "missing hash"))?;
    let size_str = segs.get(i + 1).ok_or_else(|| bad_name(name, "missing size after the hash"))?;
    let size: i64 =
        size_str.parse().map_err(|_| bad_name(name, &format!("size {size_str:?} is not a decimal integer")))?;
    let digest = Digest::parse(function, hash, size)
        .map_err(|e| Error::InvalidArgument(format!("resource name {name:?}: {e}")))?;
    Ok((compressor, digest, &segs[i + 2..]))
}

fn bad_name(name: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("malformed resource name {name:?}: {why}"))
}

#[cfg(test)]
#[path = "digest_tests.rs"]
mod tests;
