//! ActionCache GetActionResult / UpdateActionResult against the real server:
//! round trips, per-instance entries, inlined stdout/stderr, bad inputs as a
//! table, and entries surviving a restart.

mod common;
mod rpc;

use cairn::config::Config;
use cairn::proto::reapi::{
    self, ActionResult, Directory, FileNode, GetActionResultRequest, OutputDirectory, OutputFile, Tree,
    UpdateActionResultRequest,
};
use common::TestServer;
use prost::Message;
use rpc::*;
use tonic::transport::Channel;
use tonic::Code;

fn get_req(instance: &str, action: &reapi::Digest) -> GetActionResultRequest {
    GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.clone()),
        digest_function: SHA256,
        ..Default::default()
    }
}

fn update_req(instance: &str, action: &reapi::Digest, result: ActionResult) -> UpdateActionResultRequest {
    UpdateActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.clone()),
        action_result: Some(result),
        results_cache_policy: None,
        digest_function: SHA256,
    }
}

/// A result like Bazel uploads: two output files, an output directory (its
/// Tree in CAS), stdout and stderr in CAS, exit code 0. Its blobs are
/// uploaded first, as a client does before UpdateActionResult.
async fn realistic_result(ch: &Channel, tag: &str) -> ActionResult {
    let out1 = format!("object code for {tag}").into_bytes();
    let out2 = gen_blob(3, 300 << 10);
    let stdout = format!("compiling {tag}\n").into_bytes();
    let stderr = b"warning: unused variable\n".to_vec();
    let file_in_dir = b"generated header".to_vec();
    let tree = Tree {
        root: Some(Directory {
            files: vec![FileNode { name: "gen.h".into(), digest: Some(sha256(&file_in_dir)), ..Default::default() }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    upload(&mut cas(ch), &[&out1, &out2, &stdout, &stderr, &file_in_dir, &tree]).await;
    ActionResult {
        output_files: vec![
            OutputFile {
                path: format!("bazel-out/{tag}.o"),
                digest: Some(sha256(&out1)),
                is_executable: false,
                ..Default::default()
            },
            OutputFile {
                path: format!("bazel-out/{tag}.bin"),
                digest: Some(sha256(&out2)),
                is_executable: true,
                ..Default::default()
            },
        ],
        output_directories: vec![OutputDirectory {
            path: "bazel-out/gen".into(),
            tree_digest: Some(sha256(&tree)),
            ..Default::default()
        }],
        exit_code: 0,
        stdout_digest: Some(sha256(&stdout)),
        stderr_digest: Some(sha256(&stderr)),
        ..Default::default()
    }
}

/// Update then Get returns the same result; Update echoes what was stored.
/// Updating again replaces the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_then_get_round_trip() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut ac = ac(&ch);
    let action = sha256(b"action: compile a.c");
    let result = realistic_result(&ch, "a").await;
    let echoed = ac.update_action_result(update_req("", &action, result.clone())).await.expect("Update").into_inner();
    assert_eq!(echoed, result);
    let got = ac.get_action_result(get_req("", &action)).await.expect("Get").into_inner();
    assert_eq!(got, result);

    let newer = ActionResult { exit_code: 1, ..realistic_result(&ch, "b").await };
    ac.update_action_result(update_req("", &action, newer.clone())).await.expect("second Update");
    assert_eq!(ac.get_action_result(get_req("", &action)).await.expect("Get").into_inner(), newer);
}

/// A miss is NOT_FOUND naming the action (and the instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_absent_entry_is_not_found() {
    let server = TestServer::start().await;
    let mut ac = ac(&server.channel().await);
    let action = sha256(b"never run");
    assert_status(ac.get_action_result(get_req("", &action)).await, Code::NotFound, &[&action.hash], "absent");
    let r = ac.get_action_result(get_req("some/inst", &action)).await;
    assert_status(r, Code::NotFound, &[&action.hash, "some/inst"], "absent in instance");
}

/// The same action digest under instances "a", "b" and "" are three entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_per_instance() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut ac = ac(&ch);
    let action = sha256(b"action: link");
    let ra = ActionResult { exit_code: 11, ..realistic_result(&ch, "a").await };
    ac.update_action_result(update_req("a", &action, ra.clone())).await.expect("Update a");
    assert_eq!(ac.get_action_result(get_req("a", &action)).await.expect("Get a").into_inner(), ra);
    assert_status(ac.get_action_result(get_req("b", &action)).await, Code::NotFound, &[], "b before its update");
    assert_status(ac.get_action_result(get_req("", &action)).await, Code::NotFound, &[], "default instance");
    assert_status(ac.get_action_result(get_req("a/b", &action)).await, Code::NotFound, &[], "nested instance");

    let rb = ActionResult { exit_code: 22, ..realistic_result(&ch, "b").await };
    ac.update_action_result(update_req("b", &action, rb.clone())).await.expect("Update b");
    assert_eq!(ac.get_action_result(get_req("a", &action)).await.unwrap().into_inner(), ra);
    assert_eq!(ac.get_action_result(get_req("b", &action)).await.unwrap().into_inner(), rb);

    // BLAKE3 and SHA-256 entries with the same hex are distinct too.
    let req = GetActionResultRequest { digest_function: BLAKE3, ..get_req("a", &action) };
    assert_status(ac.get_action_result(req).await, Code::NotFound, &[], "same hex under BLAKE3");
}

/// inline_stdout / inline_stderr return the bytes when the blob is in CAS
/// and small; a large one may be declined (empty raw field, digest kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_stdout_and_stderr() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut ac = ac(&ch);
    let result = realistic_result(&ch, "inline").await;
    let action = sha256(b"action: with output");
    ac.update_action_result(update_req("", &action, result.clone())).await.expect("Update");

    let req = GetActionResultRequest { inline_stdout: true, inline_stderr: true, ..get_req("", &action) };
    let got = ac.get_action_result(req).await.expect("Get").into_inner();
    assert_eq!(got.stdout_raw[..], b"compiling inline\n"[..]);
    assert_eq!(got.stderr_raw[..], b"warning: unused variable\n"[..]);
    assert_eq!(got.stdout_digest, result.stdout_digest);

    // inline_output_files: the server may inline a listed file or decline,
    // but never returns wrong contents.
    let req = GetActionResultRequest { inline_output_files: vec!["bazel-out/inline.o".into()], ..get_req("", &action) };
    let got = ac.get_action_result(req).await.expect("Get with inline_output_files").into_inner();
    let f = got.output_files.iter().find(|f| f.path == "bazel-out/inline.o").expect("output file kept");
    assert!(f.contents.is_empty() || f.contents[..] == b"object code for inline"[..], "inlined file differs");

    // Without asking, nothing is inlined.
    let got = ac.get_action_result(get_req("", &action)).await.expect("Get").into_inner();
    assert!(got.stdout_raw.is_empty() && got.stderr_raw.is_empty());

    // Only stdout asked for: only stdout inlined.
    let req = GetActionResultRequest { inline_stdout: true, ..get_req("", &action) };
    let got = ac.get_action_result(req).await.expect("Get").into_inner();
    assert!(!got.stdout_raw.is_empty() && got.stderr_raw.is_empty());

    // A stdout too large to inline (1.5 MiB, in CAS): the server may decline
    // (empty stdout_raw, the client reads the digest) but never sends wrong bytes.
    let big = gen_blob(77, 3 << 19);
    let big_d = upload(&mut cas(&ch), &[&big]).await.remove(0);
    let action2 = sha256(b"action: large stdout");
    let r2 = ActionResult { stdout_digest: Some(big_d.clone()), ..Default::default() };
    ac.update_action_result(update_req("", &action2, r2)).await.expect("Update");
    let req = GetActionResultRequest { inline_stdout: true, ..get_req("", &action2) };
    let got = ac.get_action_result(req).await.expect("Get").into_inner();
    assert!(got.stdout_raw.is_empty() || got.stdout_raw[..] == big[..], "inlined stdout differs from the blob");
    assert_eq!(got.stdout_digest, Some(big_d));
}

/// Bad requests are INVALID_ARGUMENT naming the bad field, for Get and
/// Update alike; none of them stores anything; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected() {
    let server = TestServer::start().await;
    let ch = server.channel().await;
    let mut ac = ac(&ch);
    let good = sha256(b"action");
    let h = good.hash.clone();
    let ok_result = ActionResult { exit_code: 0, ..Default::default() };

    // Malformed action digests, with what the message must say.
    let bad_digests: Vec<(&str, Option<reapi::Digest>, Vec<&str>)> = vec![
        ("missing", None, vec!["action_digest is missing"]),
        ("63 chars", Some(digest(&h[..63], 6)), vec!["action_digest", "63 characters"]),
        ("65 chars", Some(digest(&format!("{h}a"), 6)), vec!["action_digest", "65 characters"]),
        ("upper case", Some(digest(&h.to_uppercase(), 6)), vec!["action_digest", "lower-case hex"]),
        ("non-hex", Some(digest(&format!("{}x", &h[..63]), 6)), vec!["action_digest", "lower-case hex"]),
        ("negative size", Some(digest(&h, -6)), vec!["action_digest", "negative size"]),
    ];
    for (what, d, needles) in &bad_digests {
        let get = GetActionResultRequest { action_digest: d.clone(), ..get_req("", &good) };
        assert_status(ac.get_action_result(get).await, Code::InvalidArgument, needles, &format!("get: {what}"));
        let upd = UpdateActionResultRequest { action_digest: d.clone(), ..update_req("", &good, ok_result.clone()) };
        assert_status(ac.update_action_result(upd).await, Code::InvalidArgument, needles, &format!("update: {what}"));
    }

    // Other bad fields: instance names, digest functions (for both calls).
    for instance in ["../x", "a//b", "blobs", "x/uploads"] {
        let r = ac.get_action_result(get_req(instance, &good)).await;
        assert_status(r, Code::InvalidArgument, &["instance name", instance], instance);
        let r = ac.update_action_result(update_req(instance, &good, ok_result.clone())).await;
        assert_status(r, Code::InvalidArgument, &["instance name", instance], instance);
    }
    for (function, needle) in [(2, "SHA1"), (99, "99")] {
        let r = ac.get_action_result(GetActionResultRequest { digest_function: function, ..get_req("", &good) }).await;
        assert_status(r, Code::InvalidArgument, &["digest function", needle], needle);
        let upd = UpdateActionResultRequest { digest_function: function, ..update_req("", &good, ok_result.clone()) };
        assert_status(ac.update_action_result(upd).await, Code::InvalidArgument, &["digest function", needle], needle);
    }

    // Update-only problems: no result, or a malformed digest inside it (named by its path).
    let bad_results: Vec<(&str, Option<ActionResult>, Vec<&str>)> = vec![
        ("no action_result", None, vec!["action_result is missing"]),
        (
            "bad output file digest",
            Some(ActionResult {
                output_files: vec![OutputFile {
                    path: "out/x.o".into(),
                    digest: Some(digest("XYZ", 1)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            vec!["out/x.o"],
        ),
        (
            "output file without digest",
            Some(ActionResult {
                output_files: vec![OutputFile { path: "out/y.o".into(), digest: None, ..Default::default() }],
                ..Default::default()
            }),
            vec!["out/y.o", "missing"],
        ),
        (
            "bad tree digest",
            Some(ActionResult {
                output_directories: vec![OutputDirectory {
                    path: "out/dir".into(),
                    tree_digest: Some(digest(&h, -1)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            vec!["out/dir", "tree_digest"],
        ),
        (
            "bad stdout digest",
            Some(ActionResult { stdout_digest: Some(digest(&h[..10], 1)), ..Default::default() }),
            vec!["stdout_digest"],
        ),
        (
            "bad stderr digest",
            Some(ActionResult { stderr_digest: Some(digest(&h.to_uppercase(), 1)), ..Default::default() }),
            vec!["stderr_digest"],
        ),
    ];
    for (what, result, needles) in bad_results {
        let upd = UpdateActionResultRequest { action_result: result, ..update_req("", &good, ok_result.clone()) };
        assert_status(ac.update_action_result(upd).await, Code::InvalidArgument, &needles, what);
    }

    // Nothing got stored by any of that; a good update still works.
    assert_status(ac.get_action_result(get_req("", &good)).await, Code::NotFound, &[], "after bad updates");
    ac.update_action_result(update_req("", &good, ok_result.clone())).await.expect("good update");
    assert_eq!(ac.get_action_result(get_req("", &good)).await.expect("good get").into_inner(), ok_result);
}

/// Entries (and the CAS blobs they name) survive a graceful restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_restart() {
    let (_dir, path) = common::temp_data_dir();
    let server = TestServer::start_with(Config::for_data_dir(&path)).await;
    let ch = server.channel().await;
    let action = sha256(b"action: survives");
    let result = realistic_result(&ch, "persisted").await;
    ac(&ch).update_action_result(update_req("inst", &action, result.clone())).await.expect("Update");
    drop(ch);
    let config = server.stop().await;

    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;
    let got = ac(&ch).get_action_result(get_req("inst", &action)).await.expect("Get after restart").into_inner();
    assert_eq!(got, result);
    let mut named: Vec<reapi::Digest> = result.output_files.iter().filter_map(|f| f.digest.clone()).collect();
    named.extend(result.output_directories.iter().filter_map(|d| d.tree_digest.clone()));
    named.extend(result.stdout_digest.clone());
    assert!(find_missing(&mut cas(&ch), "", SHA256, &named).await.is_empty(), "its blobs survive too");
}
