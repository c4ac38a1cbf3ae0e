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

impl Digest {
    /// Parses a hash string and size: exactly 64 lower-case hex digits and a
    /// non-negative size.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Digest> {
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
        if size < 0 {
            return Err(Error::InvalidArgument(format!("digest {hash} has negative size {size}")));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes)
            .map_err(|e| Error::InvalidArgument(format!("digest hash {hash:?}: {e}")))?;
        Ok(Digest { function, hash: bytes, size: size as u64 })
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
        hex::encode(self.hash)
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
mod tests {
    use super::*;

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const H: &str = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3";

    #[test]
    fn parses_good_digest() {
        let d = Digest::parse(DigestFunction::Sha256, H, 3).unwrap();
        assert_eq!(d.hex(), H);
        assert_eq!(d.size, 3);
        assert_eq!(d, DigestFunction::Sha256.digest_of(b"123"));
    }

    #[test]
    fn empty_blob_is_known() {
        assert_eq!(DigestFunction::Sha256.empty().hex(), EMPTY_SHA);
        assert!(Digest::parse(DigestFunction::Sha256, EMPTY_SHA, 0).unwrap().is_empty_blob());
        assert!(!Digest::parse(DigestFunction::Sha256, H, 0).unwrap().is_empty_blob());
        assert_eq!(
            DigestFunction::Blake3.empty().hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn rejects_bad_digests() {
        let upper = H.to_uppercase();
        let long = format!("{H}0");
        let nonhex = format!("{}g", &H[..63]);
        let cases: [(&str, i64, &str); 6] = [
            (&H[..63], 3, "63 characters"),
            (&long, 3, "65 characters"),
            (&upper, 3, "lower-case hex"),
            (&nonhex, 3, "lower-case hex"),
            ("", 3, "0 characters"),
            (H, -1, "negative size"),
        ];
        for (hash, size, want) in cases {
            let err = Digest::parse(DigestFunction::Sha256, hash, size).unwrap_err().to_string();
            assert!(err.contains(want), "{hash:?}/{size}: {err}");
        }
    }

    #[test]
    fn digest_functions_from_proto() {
        assert_eq!(DigestFunction::from_proto(0).unwrap(), DigestFunction::Sha256);
        assert_eq!(DigestFunction::from_proto(1).unwrap(), DigestFunction::Sha256);
        assert_eq!(DigestFunction::from_proto(9).unwrap(), DigestFunction::Blake3);
        assert!(DigestFunction::from_proto(2).unwrap_err().to_string().contains("SHA1"));
        assert!(DigestFunction::from_proto(99).unwrap_err().to_string().contains("99"));
    }

    #[test]
    fn parses_read_names() {
        let r = ResourceName::parse_read(&format!("blobs/{H}/3")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.digest.size, 3);
        assert_eq!(r.compressor, Compressor::Identity);
        let r = ResourceName::parse_read(&format!("my/inst/blobs/{H}/3")).unwrap();
        assert_eq!(r.instance, "my/inst");
        let r = ResourceName::parse_read(&format!("x/compressed-blobs/zstd/{H}/3")).unwrap();
        assert_eq!(r.compressor, Compressor::Zstd);
        let r = ResourceName::parse_read(&format!("blobs/blake3/{H}/3")).unwrap();
        assert_eq!(r.digest.function, DigestFunction::Blake3);
    }

    #[test]
    fn parses_write_names() {
        let w = ResourceName::parse_write(&format!("i/uploads/u-1/blobs/{H}/3")).unwrap();
        assert_eq!(w.instance, "i");
        assert_eq!(w.upload_id.as_deref(), Some("u-1"));
        let w = ResourceName::parse_write(&format!("uploads/u/blobs/{H}/3/some/metadata")).unwrap();
        assert_eq!(w.instance, "");
        let w = ResourceName::parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{H}/3")).unwrap();
        assert_eq!(w.compressor, Compressor::Zstd);
        assert_eq!(w.digest.function, DigestFunction::Blake3);
    }

    #[test]
    fn rejects_bad_names() {
        let cases = [
            (format!("blobs/{H}"), "missing size"),
            (format!("blobs/{H}/abc"), "not a decimal"),
            (format!("blobs/{H}/-5"), "negative size"),
            (format!("blobs/{}/3", &H[..10]), "10 characters"),
            (format!("blobs/{H}/3/extra"), "unexpected segments"),
            (format!("../etc/blobs/{H}/3"), "'.' or '..'"),
            (format!("a//b/blobs/{H}/3"), "empty path segment"),
            (format!("/blobs/{H}/3"), "empty path segment"),
            (format!("compressed-blobs/brotli/{H}/3"), "brotli"),
            (format!("blobs/md5/{H}/3"), "md5"),
            ("nothing/here".to_string(), "expected"),
            (String::new(), "expected"),
        ];
        for (name, want) in cases {
            let err = ResourceName::parse_read(&name).unwrap_err().to_string();
            assert!(err.contains(want), "{name:?}: {err}");
        }
        let wcases = [
            (format!("uploads/blobs/{H}/3"), "missing upload id"),
            (format!("blobs/{H}/3"), "expected"),
            (format!("../uploads/u/blobs/{H}/3"), "'.' or '..'"),
            (format!("uploads/u/blobs/{H}"), "missing size"),
        ];
        for (name, want) in wcases {
            let err = ResourceName::parse_write(&name).unwrap_err().to_string();
            assert!(err.contains(want), "{name:?}: {err}");
        }
    }

    #[test]
    fn validates_instance_names() {
        let longest = "i".repeat(MAX_INSTANCE_NAME);
        let segmented = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        for ok in ["", "main", "a/b/c", "ci-2024_x.y", "capability", "my-capabilities", &longest, &segmented] {
            validate_instance(ok).unwrap();
        }
        let too_long = "i".repeat(MAX_INSTANCE_NAME + 1);
        let huge = "x/".repeat(1 << 20);
        let cases = [
            ("..", "'.' or '..'"),
            ("a/../b", "'.' or '..'"),
            ("a/", "empty path segment"),
            ("/a", "empty path segment"),
            ("a/blobs", "reserves"),
            ("uploads", "reserves"),
            ("capabilities", "reserves"),
            ("x/capabilities/y", "reserves"),
            ("a\nb", "control character"),
            (&too_long, "256 bytes, longer than the 255"),
            (&huge, "longer than the 255"),
        ];
        for (bad, want) in cases {
            let err = validate_instance(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{want}: {msg}");
            assert!(msg.len() < 400, "the message quotes only the start of a long name: {} bytes", msg.len());
        }
    }

    #[test]
    fn instance_name_limits_apply_to_resource_names() {
        let longest = "i".repeat(MAX_INSTANCE_NAME);
        let too_long = "i".repeat(MAX_INSTANCE_NAME + 1);
        assert_eq!(ResourceName::parse_read(&format!("{longest}/blobs/{H}/3")).unwrap().instance, longest);
        assert_eq!(ResourceName::parse_write(&format!("{longest}/uploads/u/blobs/{H}/3")).unwrap().instance, longest);
        // (instance prefix, blob part, expected error)
        let many = "a/".repeat(2000);
        let cases = [
            (format!("{too_long}/"), "blobs", "longer than the 255"),
            ("capabilities/".to_string(), "blobs", "reserves"),
            ("a/capabilities/".to_string(), "compressed-blobs/zstd", "reserves"),
            (many, "blobs", "longer than the 2048"),
        ];
        for (prefix, part, want) in cases {
            let err = ResourceName::parse_read(&format!("{prefix}{part}/{H}/3")).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            let err = ResourceName::parse_write(&format!("{prefix}uploads/u/{part}/{H}/3")).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let meta = "m".repeat(MAX_RESOURCE_NAME);
        let err = ResourceName::parse_write(&format!("uploads/u/blobs/{H}/3/{meta}")).unwrap_err().to_string();
        assert!(err.contains("longer than the 2048"), "{err}");
    }

    #[test]
    fn upload_ids_are_identifiers() {
        for ok in ["u", "2f1c9b1e-4d6a-4c1b-9f7e-0a1b2c3d4e5f", "ULID01H8X_v2.3", "a~b+c=", &"u".repeat(MAX_UPLOAD_ID)]
        {
            let w = ResourceName::parse_write(&format!("inst/uploads/{ok}/blobs/{H}/3")).unwrap();
            assert_eq!(w.upload_id.as_deref(), Some(ok));
        }
        let long = "u".repeat(MAX_UPLOAD_ID + 1);
        let cases = [
            ("..", "'.' or '..'"),
            (".", "'.' or '..'"),
            ("...", "'.' or '..'"),
            ("", "is empty"),
            ("a\\b", "contains '\\\\'"),
            ("%2e%2e", "contains '%'"),
            ("a b", "contains ' '"),
            ("a\u{0}b", "contains"),
            ("uuid\u{e9}", "contains"),
            ("capabilities", "reserved"),
            ("actions", "reserved"),
            (&long, "longer than 128"),
        ];
        for (id, want) in cases {
            let name = format!("uploads/{id}/blobs/{H}/3");
            let err = ResourceName::parse_write(&name).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("upload id") && msg.contains(want), "{id:?} ({want}): {msg}");
        }
    }
}
