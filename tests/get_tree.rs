//! ContentAddressableStorage.GetTree against the real server: a three-level
//! tree with a shared subdirectory and a missing one, fetched whole, page by
//! page across calls, and with bad inputs.

mod common;
mod rpc;

use std::collections::BTreeSet;

use cairn::proto::reapi::{self, Directory, DirectoryNode, FileNode, GetTreeRequest};
use common::TestServer;
use futures::StreamExt;
use prost::Message;
use rpc::*;
use tonic::transport::Channel;
use tonic::Code;

fn file(name: &str, content: &[u8]) -> FileNode {
    FileNode { name: name.into(), digest: Some(sha256(content)), ..Default::default() }
}

fn subdir(name: &str, d: &reapi::Digest) -> DirectoryNode {
    DirectoryNode { name: name.into(), digest: Some(d.clone()) }
}

/// The uploaded tree, and the encoded form of each distinct directory in it.
struct Tree {
    root: reapi::Digest,
    /// Every distinct Directory reachable and present, encoded.
    expected: BTreeSet<Vec<u8>>,
}

/// Uploads:
/// ```text
/// root ── top.txt
///  ├─ a/ ── a.txt
///  │   └─ c/ ── leaf.txt      (C, shared)
///  ├─ b/
///  │   └─ c/                  (the same C)
///  └─ gone/                   (a Directory never uploaded: skipped)
/// ```
/// Four distinct directories are present: root, A, B, C.
async fn upload_tree(ch: &Channel) -> Tree {
    let c = Directory { files: vec![file("leaf.txt", b"leaf")], ..Default::default() };
    let dc = sha256(&c.encode_to_vec());
    let a = Directory { files: vec![file("a.txt", b"a")], directories: vec![subdir("c", &dc)], ..Default::default() };
    let b = Directory { directories: vec![subdir("c", &dc)], ..Default::default() };
    let gone = Directory { files: vec![file("never.txt", b"never")], ..Default::default() };
    let (da, db, dgone) = (sha256(&a.encode_to_vec()), sha256(&b.encode_to_vec()), sha256(&gone.encode_to_vec()));
    let root = Directory {
        files: vec![file("top.txt", b"top")],
        directories: vec![subdir("a", &da), subdir("b", &db), subdir("gone", &dgone)],
        ..Default::default()
    };
    let encoded: Vec<Vec<u8>> = [&root, &a, &b, &c].iter().map(|d| d.encode_to_vec()).collect();
    let blobs: Vec<&[u8]> = encoded.iter().map(|v| v.as_slice()).collect();
    let digests = upload(&mut cas(ch), &blobs).await;
    Tree { root: digests[0].clone(), expected: encoded.into_iter().collect() }
}

fn tree_req(root: &reapi::Digest, page_size: i32, token: &str) -> GetTreeRequest {
    GetTreeRequest {
        instance_name: String::new(),
        root_digest: Some(root.clone()),
        page_size,
        page_token: token.into(),
        digest_function: SHA256,
    }
}

/// All responses of one GetTree call.
async fn get_tree_all(ch: &Channel, req: GetTreeRequest) -> Result<Vec<reapi::GetTreeResponse>, tonic::Status> {
    let mut stream = cas(ch).get_tree(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r?);
    }
    Ok(out)
}

/// Adds `dirs` to `seen`, failing on a directory returned twice.
fn collect(seen: &mut BTreeSet<Vec<u8>>, dirs: &[Directory]) {
    for d in dirs {
        assert!(seen.insert(d.encode_to_vec()), "directory returned twice: {d:?}");
    }
}

/// page_size 0 (server's default) and page_size 2 both return every distinct
/// present directory exactly once, the missing one skipped, root first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_returns_every_distinct_directory() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let tree = upload_tree(&ch).await;
    for page_size in [0, 2, 3, 1000] {
        let pages = get_tree_all(&ch, tree_req(&tree.root, page_size, "")).await.expect("GetTree");
        let mut seen = BTreeSet::new();
        for p in &pages {
            if page_size > 0 {
                assert!(p.directories.len() <= page_size as usize, "page over page_size {page_size}");
            }
            collect(&mut seen, &p.directories);
        }
        assert_eq!(seen, tree.expected, "page_size {page_size}");
        assert_eq!(
            pages[0].directories[0].encode_to_vec(),
            *tree.expected.iter().find(|e| sha256(e) == tree.root).unwrap()
        );
        assert_eq!(pages.last().unwrap().next_page_token, "", "the last page has no next token");
    }
}

/// With page_size 1, taking only the first page of each call and resuming
/// from its next_page_token in a new call walks the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_pages_across_calls() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let tree = upload_tree(&ch).await;
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    for call in 0.. {
        assert!(call < 10, "paging never ended");
        let mut stream = cas(&ch).get_tree(tree_req(&tree.root, 1, &token)).await.expect("GetTree").into_inner();
        let page = stream.next().await.expect("a page").expect("GetTree page");
        drop(stream); // abandon the rest of this call, as a paging client may
        assert!(page.directories.len() <= 1);
        collect(&mut seen, &page.directories);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, tree.expected);
}

/// The empty Directory is the empty blob, so it is always a valid root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_of_the_empty_directory() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let pages = get_tree_all(&ch, tree_req(&digest(EMPTY_SHA256, 0), 0, "")).await.expect("GetTree");
    let dirs: Vec<_> = pages.iter().flat_map(|p| p.directories.clone()).collect();
    assert_eq!(dirs, vec![Directory::default()]);
}

/// A BLAKE3 tree walks with digest_function = BLAKE3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_with_blake3() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let leaf = Directory {
        files: vec![FileNode { name: "f".into(), digest: Some(blake3(b"f")), ..Default::default() }],
        ..Default::default()
    };
    let leaf_bytes = leaf.encode_to_vec();
    let root = Directory { directories: vec![subdir("leaf", &blake3(&leaf_bytes))], ..Default::default() };
    let root_bytes = root.encode_to_vec();
    let requests = [&root_bytes, &leaf_bytes]
        .iter()
        .map(|b| reapi::batch_update_blobs_request::Request {
            digest: Some(blake3(b)),
            data: b.to_vec().into(),
            compressor: 0,
        })
        .collect();
    let resp = cas(&ch)
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests,
            digest_function: BLAKE3,
        })
        .await
        .expect("upload")
        .into_inner();
    for r in &resp.responses {
        assert_rpc_status(r.status.as_ref(), Code::Ok, &[], "blake3 dir upload");
    }
    let req = GetTreeRequest { digest_function: BLAKE3, ..tree_req(&blake3(&root_bytes), 0, "") };
    let pages = get_tree_all(&ch, req).await.expect("GetTree");
    let dirs: Vec<_> = pages.iter().flat_map(|p| p.directories.clone()).collect();
    assert_eq!(dirs, vec![root, leaf]);
}

/// Bad GetTree inputs: each the prescribed code, with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_rejects_bad_input() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let tree = upload_tree(&ch).await;
    let absent = sha256(b"no such directory");
    // A stored blob that is not a Directory message (0xff.. is a truncated varint tag).
    let junk = upload(&mut cas(&ch), &[&[0xff, 0xff, 0xff]]).await.remove(0);

    let cases: Vec<(&str, GetTreeRequest, Code, Vec<String>)> = vec![
        ("missing root", tree_req(&absent, 0, ""), Code::NotFound, vec![absent.hash.clone()]),
        (
            "non-numeric page token",
            tree_req(&tree.root, 1, "abc"),
            Code::InvalidArgument,
            vec!["page_token".into(), "abc".into()],
        ),
        ("negative page token", tree_req(&tree.root, 1, "-1"), Code::InvalidArgument, vec!["page_token".into()]),
        ("negative page size", tree_req(&tree.root, -1, ""), Code::InvalidArgument, vec!["page_size".into()]),
        ("malformed root", tree_req(&digest("abc", 3), 0, ""), Code::InvalidArgument, vec!["root_digest".into()]),
        (
            "no root",
            GetTreeRequest { root_digest: None, ..tree_req(&tree.root, 0, "") },
            Code::InvalidArgument,
            vec!["root_digest".into()],
        ),
        (
            "SHA1",
            GetTreeRequest { digest_function: 2, ..tree_req(&tree.root, 0, "") },
            Code::InvalidArgument,
            vec!["SHA1".into()],
        ),
        (
            "bad instance",
            GetTreeRequest { instance_name: "../x".into(), ..tree_req(&tree.root, 0, "") },
            Code::InvalidArgument,
            vec!["../x".into()],
        ),
        ("root is not a Directory", tree_req(&junk, 0, ""), Code::InvalidArgument, vec!["Directory".into()]),
    ];
    for (what, req, code, needles) in cases {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_status(get_tree_all(&ch, req).await, code, &needles, what);
    }

    // A stored Directory naming a malformed child: the walk reports it, naming the child.
    let bad_child =
        Directory { directories: vec![subdir("broken", &digest(&"A".repeat(64), 1))], ..Default::default() };
    let d = upload(&mut cas(&ch), &[&bad_child.encode_to_vec()]).await.remove(0);
    assert_status(get_tree_all(&ch, tree_req(&d, 0, "")).await, Code::InvalidArgument, &["broken"], "malformed child");

    // Still serving.
    let pages = get_tree_all(&ch, tree_req(&tree.root, 0, "")).await.expect("GetTree after bad input");
    assert_eq!(pages.iter().map(|p| p.directories.len()).sum::<usize>(), tree.expected.len());
}

/// Page tokens carry the walk's state and are checked when they come back:
/// one issued for another root, a tampered one, an old-style offset, or junk
/// is INVALID_ARGUMENT, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_rejects_forged_tokens() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let tree = upload_tree(&ch).await;
    // Another stored Directory (one unnamed, empty file entry).
    let other = upload(&mut cas(&ch), &[b"\x0a\x00"]).await;
    let mut stream = cas(&ch).get_tree(tree_req(&tree.root, 1, "")).await.expect("GetTree").into_inner();
    let token = stream.next().await.unwrap().unwrap().next_page_token;
    drop(stream);
    assert!(!token.is_empty());

    let mut tampered: Vec<char> = token.chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let cases: Vec<(&str, reapi::Digest, String)> = vec![
        ("another root", other[0].clone(), token.clone()),
        ("tampered", tree.root.clone(), tampered),
        ("truncated", tree.root.clone(), token.get(..token.len().saturating_sub(3)).unwrap_or("").to_string()),
        ("an offset", tree.root.clone(), "2".into()),
        ("junk", tree.root.clone(), "%%%".into()),
        ("huge", tree.root.clone(), "A".repeat(1 << 20)),
    ];
    for (what, root, token) in cases {
        assert_status(
            get_tree_all(&ch, tree_req(&root, 1, &token)).await,
            Code::InvalidArgument,
            &["page_token"],
            what,
        );
    }
    // The genuine token still resumes.
    let rest = get_tree_all(&ch, tree_req(&tree.root, 0, &token)).await.expect("resume");
    assert_eq!(rest.iter().map(|p| p.directories.len()).sum::<usize>(), tree.expected.len() - 1);
}

/// Large directories: no page carries more than 2 MiB of directories (the
/// size is checked before a directory is added), so every page fits a
/// client's default 4 MiB message limit; together they hold the whole tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_pages_stay_under_the_message_limit() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut subdirs = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..4 {
        // ~1.5 MiB of file entries.
        let files = (0..15_000).map(|j| file(&format!("dir{i}-file-{j:06}-with-a-longish-name"), b"x")).collect();
        let dir = Directory { files, ..Default::default() };
        let bytes = dir.encode_to_vec();
        let d = sha256(&bytes);
        write(&mut bs(&ch), &fresh_upload_name(&d), &bytes).await.expect("upload a large directory");
        subdirs.push(subdir(&format!("d{i}"), &d));
        expected.insert(bytes);
    }
    let root = Directory { directories: subdirs, ..Default::default() };
    let root_bytes = root.encode_to_vec();
    let root_digest = upload(&mut cas(&ch), &[&root_bytes]).await.remove(0);
    expected.insert(root_bytes);
    let pages = get_tree_all(&ch, tree_req(&root_digest, 0, "")).await.expect("GetTree");
    let mut seen = BTreeSet::new();
    for p in &pages {
        assert!(p.encoded_len() <= (2 << 20) + (64 << 10), "a page of {} bytes", p.encoded_len());
        collect(&mut seen, &p.directories);
    }
    assert_eq!(seen, expected);
}
