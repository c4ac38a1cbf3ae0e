//! Tests of digest and resource-name parsing (`digest.rs`).

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
    for ok in ["u", "2f1c9b1e-4d6a-4c1b-9f7e-0a1b2c3d4e5f", "ULID01H8X_v2.3", "a~b+c=", &"u".repeat(MAX_UPLOAD_ID)] {
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
