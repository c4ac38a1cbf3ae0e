//! Entry points shared by the fuzz targets (`fuzz/fuzz_targets/`) and the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI replays every saved
//! input through exactly the code the fuzzer ran. Each takes arbitrary bytes,
//! drives one parser of untrusted input, and panics only when that parser
//! breaks one of its promises (a panic inside it is a finding too).

use crate::digest::{validate_instance, validate_upload_id, Digest, DigestFunction, ResourceName, MAX_INSTANCE_NAME};
use crate::proto::reapi;
use crate::wire::refs::{self, ResultRefs};
use crate::wire::zstd::{decode_all, BoundedZstd};

/// One fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: `fuzz/fuzz_targets/{name}.rs` and `fuzz/corpus/{name}/`.
pub const TARGETS: [(&str, Target); 4] = [
    ("resource_name", resource_name),
    ("zstd_decode", zstd_decode),
    ("action_result_refs", action_result_refs),
    ("gocache_request", gocache_request),
];

/// ByteStream resource names, instance names, upload ids and digests.
pub fn resource_name(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    for parsed in [ResourceName::parse_read(&name), ResourceName::parse_write(&name)] {
        let Ok(r) = parsed else { continue };
        // What parsed is what validation accepts, and the digest round-trips.
        assert!(r.instance.len() <= MAX_INSTANCE_NAME);
        validate_instance(&r.instance).expect("a parsed instance name validates");
        if let Some(id) = &r.upload_id {
            validate_upload_id(id).expect("a parsed upload id validates");
        }
        let again = Digest::parse(r.digest.function, &r.digest.hex(), r.digest.size as i64).expect("re-parse");
        assert_eq!(again, r.digest);
    }
    let _ = validate_instance(&name);
    let _ = validate_upload_id(&name);
    if let Some((hash, size)) = name.split_once('/') {
        if let Ok(size) = size.parse::<i64>() {
            if let Ok(d) = Digest::parse(DigestFunction::Blake3, hash, size) {
                assert_eq!(d.hex(), hash);
            }
        }
    }
}

/// Largest declared size the zstd target tries: bigger only costs time.
const FUZZ_MAX_DECLARED: u64 = 1 << 20;

/// zstd uploads: 3 bytes of declared size (little-endian), 1 byte of feed
/// chunk size, then the compressed data.
pub fn zstd_decode(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let declared = u64::from(u32::from_le_bytes([data[0], data[1], data[2], 0])).min(FUZZ_MAX_DECLARED);
    let chunk = usize::from(data[3]).max(1);
    let input = &data[4..];
    let whole = decode_all(input, declared);
    // Fed in pieces, the decoder reaches the same verdict and bytes.
    let mut dec = BoundedZstd::new(declared).expect("decoder");
    let mut out = Vec::new();
    let mut streamed = Ok(());
    for piece in input.chunks(chunk) {
        streamed = dec.feed(piece, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        });
        assert!(out.len() as u64 <= declared, "output past the declared size reached the sink");
        if streamed.is_err() {
            break;
        }
    }
    let streamed = streamed.and_then(|_| dec.finish()).map(|_| out);
    match (&whole, &streamed) {
        (Ok(w), Ok(s)) => {
            assert_eq!(w.len() as u64, declared);
            assert_eq!(w, s);
        }
        (Ok(_), Err(e)) => panic!("whole decode succeeded, streamed failed: {e}"),
        (Err(_), _) => {}
    }
    // The reference decoder (its output bounded the same way) agrees: what
    // we accept it decodes identically, and what it decodes to exactly the
    // declared size we refuse only for the window limit.
    let mut reference = Vec::new();
    let decoded = zstd::stream::read::Decoder::new(input)
        .and_then(|d| std::io::Read::read_to_end(&mut std::io::Read::take(d, declared + 1), &mut reference));
    match &whole {
        // By design an empty stream is the empty blob (which every CAS holds
        // anyway); libzstd's streaming reader calls it an incomplete frame.
        Ok(w) if input.is_empty() => assert!(w.is_empty()),
        Ok(w) => assert_eq!(decoded.ok().map(|_| &reference), Some(w), "the reference decoder disagrees"),
        Err(e) if decoded.is_ok() && reference.len() as u64 == declared => {
            assert!(e.to_string().contains("window"), "refused what the reference decodes: {e}");
        }
        Err(_) => {}
    }
}

/// Completeness decoding: the bytes as an ActionResult, a Tree and a Directory.
pub fn action_result_refs(data: &[u8]) {
    use prost::Message;
    for function in DigestFunction::ALL {
        if let Ok(r) = reapi::ActionResult::decode(data) {
            let lenient = ResultRefs::lenient(function, &r);
            if let Ok(strict) = ResultRefs::parse(function, &r) {
                assert_eq!(strict, lenient, "a valid result reads the same leniently");
            }
        }
        let _ = refs::tree_files(function, data);
        let _ = refs::directory_refs(function, data);
    }
}

/// The GOCACHEPROG request reader: 1 byte of read-buffer size, then what go
/// would write to stdin (requests and put bodies).
pub fn gocache_request(data: &[u8]) {
    use crate::gocache::protocol::{Command, RequestReader};
    let Some((&cap, input)) = data.split_first() else { return };
    let buffered = tokio::io::BufReader::with_capacity(usize::from(cap).max(1), input);
    let mut reader = RequestReader::new(buffered);
    // Reading a slice never waits, so a trivial executor drives it.
    futures::executor::block_on(async {
        for _ in 0..64 {
            let Ok(Some(req)) = reader.next_request().await else { return };
            if let Command::Put { size, .. } = req.command {
                if size > 0 && reader.read_body(None).await.is_err() {
                    return;
                }
            }
        }
    });
}
