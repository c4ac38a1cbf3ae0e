//! The remote mapping, pinned: changing any of these breaks sharing with
//! every cache already populated, so a change needs a new version prefix.

use prost::Message;

use super::*;
use prost_types::Timestamp;

fn entry(n: u8) -> RemoteEntry {
    RemoteEntry {
        output: OutputId([n; 32]),
        size: 1000 + u64::from(n),
        time_nanos: 1_700_000_000_123_456_789 + i64::from(n),
    }
}

#[test]
fn action_key_is_the_digest_of_prefix_and_id() {
    let key = action_key(&ActionId([0; 32]));
    // python3: hashlib.sha256(b'cairn-gocache-v1\0' + bytes(32)).hexdigest()
    assert_eq!(key.hex(), "4d147bc50aba94b40481eb1bbc165d2bb0eb698ff92883c82218dca756386d57");
    assert_eq!(key.size, 49);
    assert_eq!(key.function, DigestFunction::Sha256);
    assert_ne!(action_key(&ActionId([1; 32])), key);
    // It is the real digest of its preimage.
    let mut preimage = ACTION_KEY_PREFIX.to_vec();
    preimage.extend_from_slice(&[0; 32]);
    assert_eq!(DigestFunction::Sha256.digest_of(&preimage), key);
}

#[test]
fn keys_cannot_be_serialized_actions() {
    // A serialized message starts with a field tag: (field << 3) | wire type.
    // Ours start with 'c' = 0x63: field 12, wire type 3 (a proto2 group),
    // which no proto3 message, Action included, ever writes.
    for prefix in [ACTION_KEY_PREFIX, PREFETCH_KEY_PREFIX] {
        assert_eq!(prefix[0], b'c');
        assert_eq!((prefix[0] >> 3, prefix[0] & 7), (12, 3));
    }
}

#[test]
fn prefetch_key_is_the_digest_of_prefix_and_description() {
    let key = prefetch_key("module=example.com/m");
    assert_eq!(key.hex(), "eeb3a9089761aae0b51ed51ea9a3172b63992f12c5ceb951eded5fef024e12cd");
    assert_eq!(key.size as usize, PREFETCH_KEY_PREFIX.len() + "module=example.com/m".len());
    assert_ne!(prefetch_key("module=example.com/n"), key);
}

#[test]
fn entry_round_trips_through_an_action_result() {
    let e = entry(3);
    let result = entry_result(&e);
    assert_eq!(result.output_files.len(), 1);
    let file = &result.output_files[0];
    assert_eq!(file.path, OUTPUT_PATH);
    let d = file.digest.as_ref().unwrap();
    assert_eq!(d.hash, e.output.to_hex(), "the output ID is the CAS digest");
    assert_eq!(d.size_bytes, 1003);
    let meta = result.execution_metadata.as_ref().unwrap();
    assert_eq!(meta.worker, WORKER);
    let t = meta.worker_completed_timestamp.as_ref().unwrap();
    assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_792));

    // Through the wire format and back.
    let decoded = reapi::ActionResult::decode(result.encode_to_vec().as_slice()).unwrap();
    assert_eq!(read_entry(&decoded, 0), Some(e));
}

#[test]
fn times_before_1970_and_missing_times() {
    let e = RemoteEntry { time_nanos: -1_500_000_000, ..entry(1) };
    assert_eq!(read_entry(&entry_result(&e), 0), Some(e));
    let mut r = entry_result(&e);
    r.execution_metadata = None;
    assert_eq!(read_entry(&r, 42).map(|e| e.time_nanos), Some(42), "no time: now");
    let mut r = entry_result(&e);
    r.execution_metadata.as_mut().unwrap().worker_completed_timestamp = Some(Timestamp { seconds: 1, nanos: -5 });
    assert_eq!(read_entry(&r, 42).map(|e| e.time_nanos), Some(42), "bad time: now");
}

#[test]
fn foreign_results_are_misses() {
    let good = entry_result(&entry(0xab)); // hex with letters, for the case test
    type Mutation = Box<dyn Fn(&mut reapi::ActionResult)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("no output", Box::new(|r| r.output_files.clear())),
        ("two outputs", Box::new(|r| r.output_files.push(r.output_files[0].clone()))),
        ("other path", Box::new(|r| r.output_files[0].path = "bazel-out/x".into())),
        ("no digest", Box::new(|r| r.output_files[0].digest = None)),
        (
            "upper-case hash",
            Box::new(|r| {
                let d = r.output_files[0].digest.as_mut().unwrap();
                d.hash = d.hash.to_uppercase();
            }),
        ),
        ("short hash", Box::new(|r| r.output_files[0].digest.as_mut().unwrap().hash.truncate(10))),
        ("negative size", Box::new(|r| r.output_files[0].digest.as_mut().unwrap().size_bytes = -1)),
        ("a directory too", Box::new(|r| r.output_directories.push(Default::default()))),
        ("a symlink too", Box::new(|r| r.output_symlinks.push(Default::default()))),
    ];
    assert!(read_entry(&good, 0).is_some());
    for (what, edit) in cases {
        let mut r = good.clone();
        edit(&mut r);
        assert_eq!(read_entry(&r, 0), None, "{what}");
    }
    // A manifest's result is not an entry, and the other way round.
    let m = action_result(MANIFEST_PATH, &entry(1).digest(), 5);
    assert_eq!(read_entry(&m, 0), None);
    assert!(read_result(&m, MANIFEST_PATH, 0).is_some());
    assert!(read_result(&good, MANIFEST_PATH, 0).is_none());
}

#[test]
fn manifest_round_trips() {
    let entries: Vec<(ActionId, RemoteEntry)> = (0..5).map(|n| (ActionId([n + 100; 32]), entry(n))).collect();
    let blob = encode_manifest(&entries);
    assert!(blob.starts_with(b"cairn-gocache-prefetch-v1\n"));
    assert_eq!(blob.len(), MANIFEST_MAGIC.len() + 5 * MANIFEST_RECORD);
    assert_eq!(decode_manifest(&blob), Some(entries));
    assert_eq!(decode_manifest(MANIFEST_MAGIC), Some(Vec::new()));
}

#[test]
fn bad_manifests_are_rejected() {
    let blob = encode_manifest(&[(ActionId([1; 32]), entry(1))]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("no magic", blob[MANIFEST_MAGIC.len()..].to_vec()),
        ("other version", [b"cairn-gocache-prefetch-v2\n".as_slice(), &blob[MANIFEST_MAGIC.len()..]].concat()),
        ("partial record", blob[..blob.len() - 1].to_vec()),
        ("extra byte", [blob.as_slice(), b"x"].concat()),
    ];
    for (what, data) in cases {
        assert_eq!(decode_manifest(&data), None, "{what}");
    }
}

#[test]
fn manifests_are_capped() {
    let many: Vec<(ActionId, RemoteEntry)> =
        (0..MANIFEST_MAX_ENTRIES + 3).map(|_| (ActionId([9; 32]), entry(9))).collect();
    let blob = encode_manifest(&many);
    assert_eq!(decode_manifest(&blob).map(|m| m.len()), Some(MANIFEST_MAX_ENTRIES));
    let too_long = [blob.as_slice(), &blob[MANIFEST_MAGIC.len()..MANIFEST_MAGIC.len() + MANIFEST_RECORD]].concat();
    assert_eq!(decode_manifest(&too_long), None);
}
