//! The object-store tier (`cairn::store::bucket::Bucket`) against a real
//! three-node Garage cluster started by each test: blobs small and large
//! (multipart), ActionResults, FindMissing, objects of the wrong size, and
//! what one and two lost storage nodes do to it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::digest::{Digest, DigestFunction};
use cairn::error::Error;
use cairn::store::bucket::{Bucket, BucketOptions, Op};
use cairn::store::tier::{Body, Tier};
use common::garage::Garage;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

/// A bucket on node `node` of `garage` under `prefix`.
fn bucket(garage: &Garage, node: usize, prefix: &str, timeout: Duration) -> Bucket {
    let opts = BucketOptions { settings: garage.settings(node), request_timeout: timeout, ..Default::default() };
    Bucket::open(&garage.url(prefix), opts).expect("open bucket")
}

fn blob(seed: u8, len: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

async fn read_all(b: &Bucket, d: &Digest) -> Option<Vec<u8>> {
    let chunks = b.read(d).await.expect("read")?;
    let parts: Vec<Bytes> = chunks.try_collect().await.expect("read stream");
    Some(parts.concat())
}

/// A stream of `data` in 1 MiB chunks, as the local store hands a large blob over.
fn stream_of(data: Bytes) -> Body {
    let chunks: Vec<cairn::error::Result<Bytes>> =
        (0..data.len()).step_by(1 << 20).map(|at| Ok(data.slice(at..(at + (1 << 20)).min(data.len())))).collect();
    Body::Stream(futures::stream::iter(chunks).boxed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_small_and_large_and_action_results_round_trip() {
    let garage = Garage::start().expect("a Garage cluster");
    let b = bucket(&garage, 0, "rt", Duration::from_secs(10));

    let (small, small_data) = blob(1, 3000);
    let (medium, medium_data) = blob(2, 300_000);
    let (large, large_data) = blob(3, 20 << 20);
    let started = Instant::now();
    b.write(&small, Body::Whole(small_data.clone())).await.expect("put small");
    let small_put = started.elapsed();
    b.write(&medium, stream_of(medium_data.clone())).await.expect("put medium as a stream");
    let started = Instant::now();
    b.write(&large, stream_of(large_data.clone())).await.expect("put large in parts");
    let large_put = started.elapsed();
    let counts = b.counts();
    assert_eq!(counts.get(Op::MultipartCreate), 1, "only the blob over one part goes multipart");
    assert_eq!(counts.get(Op::MultipartPart), 3, "20 MiB in 8 MiB parts");
    assert_eq!(counts.get(Op::MultipartComplete), 1);
    assert_eq!(counts.get(Op::Put), 2);

    let started = Instant::now();
    assert_eq!(read_all(&b, &small).await.as_deref(), Some(&small_data[..]));
    let small_get = started.elapsed();
    assert_eq!(read_all(&b, &medium).await.as_deref(), Some(&medium_data[..]));
    let started = Instant::now();
    let got = read_all(&b, &large).await.expect("large blob present");
    let large_get = started.elapsed();
    assert!(got == large_data[..], "the large blob came back different ({} bytes)", got.len());
    let (absent, _) = blob(4, 10);
    assert!(b.read(&absent).await.expect("read absent").is_none());
    let empty = DigestFunction::Sha256.empty();
    assert_eq!(read_all(&b, &empty).await.as_deref(), Some(&[][..]), "the empty blob is always there");

    // ActionResults: per instance, any instance name (slashes included) kept apart.
    let action = blob(5, 100).0;
    b.put_action("", &action, Bytes::from_static(b"result-for-default")).await.expect("put ac");
    b.put_action("team/a", &action, Bytes::from_static(b"result-for-team-a")).await.expect("put ac");
    assert_eq!(b.get_action("", &action).await.unwrap().as_deref(), Some(&b"result-for-default"[..]));
    assert_eq!(b.get_action("team/a", &action).await.unwrap().as_deref(), Some(&b"result-for-team-a"[..]));
    assert_eq!(b.get_action("team", &action).await.unwrap(), None);
    assert_eq!(b.get_action("", &small).await.unwrap(), None);
    assert_eq!(b.describe(), "s3://cairn/rt");
    eprintln!(
        "garage, 3 nodes on loopback: one 3 KB PUT {small_put:?}, one 3 KB GET {small_get:?}; \
         20 MiB multipart PUT {large_put:?}, streamed GET {large_get:?}; calls {:?}",
        counts.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_heads_every_digest_in_parallel() {
    let garage = Garage::start().expect("a Garage cluster");
    let b = bucket(&garage, 0, "fm", Duration::from_secs(10));
    let mut present = Vec::new();
    for i in 0..20u8 {
        let (d, data) = blob(i, 4000 + i as usize);
        b.write(&d, Body::Whole(data)).await.expect("put");
        present.push(d);
    }
    let absent: Vec<Digest> = (100..300u16).map(|i| blob(i as u8, 5000 + i as usize).0).collect();
    let mut asked = present.clone();
    asked.extend(absent.iter().copied());
    asked.push(DigestFunction::Blake3.empty());
    // One at a time, for the record: what a lone HEAD costs on stock Garage.
    let started = Instant::now();
    for d in &present {
        assert!(b.find_missing(&[*d]).await.expect("find missing").is_empty());
    }
    let one_by_one = started.elapsed() / present.len() as u32;
    let heads_before = b.counts().get(Op::Head);
    let started = Instant::now();
    let missing = b.find_missing(&asked).await.expect("find missing");
    let took = started.elapsed();
    assert_eq!(missing, absent, "exactly the absent digests, in the order asked");
    assert_eq!(b.counts().get(Op::Head) - heads_before, 220, "one HEAD per digest, none for the empty blob");
    eprintln!("garage: one HEAD {one_by_one:?} on average; FindMissing of 220 digests (64 HEADs at a time) {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_the_wrong_size_is_a_miss() {
    let garage = Garage::start().expect("a Garage cluster");
    let b = bucket(&garage, 0, "ws", Duration::from_secs(10));
    let (d, data) = blob(7, 5000);
    // Another writer (or a torn upload) left fewer bytes under the blob's key.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(common::garage::BUCKET)
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key(&garage.secret)
        .with_endpoint(garage.endpoint(0))
        .with_region("garage")
        .with_allow_http(true)
        .build()
        .expect("raw client");
    let key = object_store::path::Path::from(format!("ws/cas/sha256/{}", d.hex()));
    raw.put(&key, data.slice(..4000).into()).await.expect("raw put");
    assert!(b.read(&d).await.expect("read").is_none(), "a short object must not be served");
    assert_eq!(b.find_missing(&[d]).await.expect("find missing"), vec![d]);
    // The tier's own write repairs it.
    b.write(&d, Body::Whole(data.clone())).await.expect("put");
    assert_eq!(read_all(&b, &d).await.as_deref(), Some(&data[..]));
    assert!(b.find_missing(&[d]).await.expect("find missing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_garage_node_lost_reads_and_writes_go_on() {
    let mut garage = Garage::start().expect("a Garage cluster");
    let b = bucket(&garage, 0, "one", Duration::from_secs(5));
    let (before, before_data) = blob(1, 10_000);
    b.write(&before, Body::Whole(before_data.clone())).await.expect("put before");
    let action = blob(9, 10).0;
    b.put_action("", &action, Bytes::from_static(b"ac")).await.expect("put ac");

    garage.kill(2);
    assert_eq!(read_all(&b, &before).await.as_deref(), Some(&before_data[..]), "read after a node loss");
    assert_eq!(b.get_action("", &action).await.expect("get ac").as_deref(), Some(&b"ac"[..]));
    let (after, after_data) = blob(2, 12 << 20);
    b.write(&after, stream_of(after_data.clone())).await.expect("multipart write with a node lost");
    assert!(b.find_missing(&[before, after]).await.expect("find missing").is_empty());
    let got = read_all(&b, &after).await.expect("present");
    assert!(got == after_data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_garage_nodes_lost_calls_fail_fast_with_unavailable() {
    let mut garage = Garage::start().expect("a Garage cluster");
    let b = Arc::new(bucket(&garage, 0, "two", Duration::from_secs(2)));
    let (d, data) = blob(1, 10_000);
    b.write(&d, Body::Whole(data.clone())).await.expect("put before");
    garage.kill(1);
    garage.kill(2);

    // A hang would fail here, by this generous bound, instead of the test hanging.
    let bound = Duration::from_secs(60);
    let (fresh, fresh_data) = blob(2, 10_000);
    let write = tokio::time::timeout(bound, b.write(&fresh, Body::Whole(fresh_data))).await.expect("write hung");
    let err = write.expect_err("a write with two of three nodes lost must fail");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("s3://cairn/two"), "the message names the bucket: {err}");

    let ac =
        tokio::time::timeout(bound, b.put_action("", &d, Bytes::from_static(b"x"))).await.expect("put_action hung");
    assert!(matches!(ac, Err(Error::Unavailable(_))), "{ac:?}");
    // Reads either still find the blob on the last node or fail the same way; never hang, never lie.
    let read = tokio::time::timeout(bound, read_all_or_error(&b, &d)).await.expect("read hung");
    match read {
        Ok(Some(got)) => assert_eq!(got, data.to_vec()),
        Ok(None) => panic!("a blob that was written cannot be reported absent"),
        Err(e) => assert!(matches!(e, Error::Unavailable(_)), "{e:?}"),
    }
    let fm = tokio::time::timeout(bound, b.find_missing(&[d, fresh])).await.expect("find_missing hung");
    if let Err(e) = fm {
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
}

async fn read_all_or_error(b: &Bucket, d: &Digest) -> cairn::error::Result<Option<Vec<u8>>> {
    let Some(chunks) = b.read(d).await? else { return Ok(None) };
    let parts: Vec<Bytes> = chunks.try_collect().await?;
    Ok(Some(parts.concat()))
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_message() {
    for (url, want) in [("ftp://x/y", "unsupported scheme"), ("not a url", "--object-store not a url")] {
        let err = Bucket::open(url, BucketOptions::default()).err().expect("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{url}: {err}");
    }
}
