//! End-to-end: a real Bazel (Debian's bazel-bootstrap 4.2.3) builds a
//! generated workspace of ~65 cacheable actions against an in-process cairn
//! with `--remote_cache`. Bazel runs an action itself whenever the cache
//! can't supply it and still goes green, so every test asserts on the counts
//! in Bazel's process summary (and names misses from its execution log),
//! never on the exit code alone.
//!
//! Run: `CARGO_TARGET_DIR=/var/tmp/cairn-target cargo test --release --test bazel_e2e -- --nocapture`
//! Bazel must be installed (scripts/setup.sh); without it these tests fail.

mod bazel_support;
mod common;
mod security_support;

use std::collections::BTreeMap;

use bazel_support::runner::{Bazel, Build};
use common::TestServer;
use tokio::sync::Mutex;

/// The workspace must give at least this many cacheable actions (it has ~65).
const MIN_CACHEABLE: u64 = 50;
/// What changing //edit:input.txt must re-run, as `mnemonic: progress message`.
const EDIT_DEPENDENTS: [&str; 3] = [
    "Genrule: Executing genrule //edit/down:e3",
    "Genrule: Executing genrule //edit:e1",
    "Genrule: Executing genrule //edit:e2",
];

/// Bazel is heavy on these 2-core machines (a JVM server plus the actions):
/// the scenarios run one at a time even when cargo runs tests in parallel.
/// An async mutex: each test holds it across awaits, on its own runtime, and
/// a failed test doesn't poison it for the next.
static BAZEL_LOCK: Mutex<()> = Mutex::const_new(());

/// Flags pointing Bazel at `server`, optionally under an instance name.
fn cache_flags(server: &TestServer, instance: Option<&str>) -> Vec<String> {
    let mut flags = vec![format!("--remote_cache={}", server.grpc_url())];
    if let Some(name) = instance {
        flags.push(format!("--remote_instance_name={name}"));
    }
    flags
}

/// Logs a build and checks Bazel reported no trouble with the cache.
fn log_build(what: &str, build: &Build) {
    eprintln!("bazel {what}: {}", build.describe());
    let warnings = build.remote_warnings();
    assert!(warnings.is_empty(), "{what}: Bazel reported remote cache problems:\n{warnings:#?}");
}

/// A build against an empty cache: every cacheable action executed (and,
/// with --remote_cache, was uploaded: the rebuilds check that).
fn assert_cold(what: &str, build: &Build) {
    log_build(what, build);
    let s = &build.summary;
    assert!(s.cacheable() >= MIN_CACHEABLE, "{what}: only {} cacheable actions", s.cacheable());
    assert_eq!(s.remote_cache_hits(), 0, "{what}: hits from an empty cache: {s:?}");
    assert_eq!(s.executed(), s.cacheable(), "{what}: {s:?}");
}

/// A rebuild after `clean --expunge`: every action of `cold` is a hit.
fn assert_all_hits(what: &str, build: &Build, cold: &Build) {
    log_build(what, build);
    let s = &build.summary;
    assert_eq!(s.cacheable(), cold.summary.cacheable(), "{what}: different action count: {s:?}");
    assert_eq!(
        s.remote_cache_hits(),
        s.cacheable(),
        "{what}: not every action was a remote cache hit: {s:?}\nmisses: {:#?}",
        build.misses()
    );
    assert!(build.misses().is_empty(), "{what}: execution log misses: {:#?}", build.misses());
}

/// A build that got nothing from the cache although `cold` filled it
/// (under another instance name).
fn assert_no_hits(what: &str, build: &Build, cold: &Build) {
    log_build(what, build);
    let s = &build.summary;
    assert_eq!(s.remote_cache_hits(), 0, "{what}: hits across instance names: {s:?}");
    assert_eq!(s.executed(), cold.summary.cacheable(), "{what}: {s:?}");
}

/// Spot checks of the special outputs, on the files of a full build.
fn check_special_outputs(bazel: &Bazel, hashes: &BTreeMap<String, String>) {
    let size = |rel: &str| std::fs::metadata(bazel.bin_path(rel)).map(|m| m.len()).ok();
    assert_eq!(size("big/blob5m.txt"), Some(5 * 1024 * 1024), "5 MiB output");
    assert_eq!(size("empty/empty.txt"), Some(0), "empty output");
    assert_eq!(size("empty/also_empty.txt"), Some(0), "empty output of a 2-output action");
    assert_eq!(size("tree/dir/other/empty.txt"), Some(0), "empty file in a tree");
    let tree_files = hashes.keys().filter(|k| k.starts_with("tree/dir/")).count();
    assert_eq!(tree_files, 15, "files in the tree artifact");
    let app = std::fs::read_to_string(bazel.bin_path("cc/app/app_output.txt")).expect("app output");
    assert!(app.starts_with("0 -> "), "output of the C++ binary: {app:?}");
}

/// Compares two output snapshots, naming the files that differ.
fn assert_same_outputs(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let differ: Vec<&String> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(differ.is_empty(), "outputs differ after the cached rebuild: {differ:#?}");
}

/// Cold build, `clean --expunge`, rebuild: all hits, identical bytes.
#[tokio::test(flavor = "multi_thread")]
async fn rebuild_after_expunge_is_all_remote_hits() {
    let _serial = BAZEL_LOCK.lock().await;
    let server = TestServer::start().await;
    let bazel = Bazel::new("original");
    let flags = cache_flags(&server, None);

    let cold = bazel.build(&flags).await;
    assert_cold("cold", &cold);
    let before = bazel.hash_outputs();
    check_special_outputs(&bazel, &before);

    bazel.clean_expunge().await;
    assert!(!bazel.bin_path("big/blob5m.txt").exists(), "clean --expunge left outputs");
    let warm = bazel.build(&flags).await;
    assert_all_hits("rebuild", &warm, &cold);
    let after = bazel.hash_outputs();
    check_special_outputs(&bazel, &after);
    assert_same_outputs(&before, &after);

    drop(bazel);
    server.stop().await;
}

/// The same with `--experimental_remote_download_outputs=minimal` on the
/// rebuild: hits come from ActionCache results alone, nothing is downloaded.
#[tokio::test(flavor = "multi_thread")]
async fn rebuild_with_minimal_downloads_is_all_remote_hits() {
    let _serial = BAZEL_LOCK.lock().await;
    let server = TestServer::start().await;
    let bazel = Bazel::new("original");
    let flags = cache_flags(&server, None);

    let cold = bazel.build(&flags).await;
    assert_cold("cold", &cold);

    bazel.clean_expunge().await;
    let mut minimal = flags.clone();
    minimal.extend(
        [
            "--experimental_remote_download_outputs=minimal",
            // What --remote_download_minimal also sets; Bazel 4 refuses minimal without it.
            "--experimental_inmemory_jdeps_files",
            "--experimental_inmemory_dotd_files",
        ]
        .map(String::from),
    );
    let warm = bazel.build(&minimal).await;
    assert_all_hits("minimal rebuild", &warm, &cold);
    assert!(
        !bazel.bin_path("big/blob5m.txt").exists(),
        "minimal mode downloaded an output: the flag did not take effect"
    );

    drop(bazel);
    server.stop().await;
}

/// ActionCache entries are per instance name: the same instance hits,
/// another one (and the empty one) does not.
#[tokio::test(flavor = "multi_thread")]
async fn action_cache_is_per_instance_name() {
    let _serial = BAZEL_LOCK.lock().await;
    let server = TestServer::start().await;
    let bazel = Bazel::new("original");

    let cold = bazel.build(&cache_flags(&server, Some("some/instance"))).await;
    assert_cold("cold some/instance", &cold);

    bazel.clean_expunge().await;
    let warm = bazel.build(&cache_flags(&server, Some("some/instance"))).await;
    assert_all_hits("rebuild some/instance", &warm, &cold);
    let before = bazel.hash_outputs();

    bazel.clean_expunge().await;
    let other = bazel.build(&cache_flags(&server, Some("other/instance"))).await;
    assert_no_hits("other/instance", &other, &cold);
    assert_same_outputs(&before, &bazel.hash_outputs());

    bazel.clean_expunge().await;
    let unnamed = bazel.build(&cache_flags(&server, None)).await;
    assert_no_hits("no instance name", &unnamed, &cold);

    drop(bazel);
    server.stop().await;
}

/// Changing one source re-runs exactly its 3 dependent actions; everything
/// else comes from the cache. Changing it back re-runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn changed_input_reruns_only_dependent_actions() {
    let _serial = BAZEL_LOCK.lock().await;
    let server = TestServer::start().await;
    let bazel = Bazel::new("original");
    let flags = cache_flags(&server, None);

    let cold = bazel.build(&flags).await;
    assert_cold("cold", &cold);

    bazel.clean_expunge().await;
    bazel.generate("edited");
    let edited = bazel.build(&flags).await;
    log_build("after edit", &edited);
    let s = &edited.summary;
    assert_eq!(s.cacheable(), cold.summary.cacheable(), "{s:?}");
    assert_eq!(s.executed(), EDIT_DEPENDENTS.len() as u64, "{s:?}: {:#?}", edited.misses());
    assert_eq!(s.remote_cache_hits(), s.cacheable() - EDIT_DEPENDENTS.len() as u64, "{s:?}");
    assert_eq!(edited.misses(), EDIT_DEPENDENTS, "the actions that re-ran");
    let e3 = std::fs::read_to_string(bazel.bin_path("edit/down/e3.txt")).expect("e3");
    assert_eq!(e3, "DETIDE\nDETIDE\n", "output of the edited chain");

    // No clean: the unchanged actions are up to date locally; the 3 reverted
    // ones find their original results still in the cache.
    bazel.generate("original");
    let reverted = bazel.build(&flags).await;
    log_build("after revert", &reverted);
    let s = &reverted.summary;
    assert_eq!((s.remote_cache_hits(), s.executed()), (3, 0), "{s:?}: {:#?}", reverted.misses());
    let e3 = std::fs::read_to_string(bazel.bin_path("edit/down/e3.txt")).expect("e3");
    assert_eq!(e3, "LANIGIRO\nLANIGIRO\n", "output of the reverted chain");

    drop(bazel);
    server.stop().await;
}

/// Bazel's HTTP cache protocol (`--remote_cache=http://…`, served on
/// `--http-listen`), under an instance prefix in the URL: the cold build
/// uploads every result, the rebuild after `clean --expunge` is all hits
/// with the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn http_cache_rebuild_is_all_remote_hits() {
    let _serial = BAZEL_LOCK.lock().await;
    let server = TestServer::start_http(None).await;
    let bazel = Bazel::new("original");
    let flags = vec![format!("--remote_cache={}/team", server.http_cache_url())];

    let cold = bazel.build(&flags).await;
    assert_cold("cold over HTTP", &cold);
    let before = bazel.hash_outputs();
    check_special_outputs(&bazel, &before);

    bazel.clean_expunge().await;
    let warm = bazel.build(&flags).await;
    assert_all_hits("rebuild over HTTP", &warm, &cold);
    let after = bazel.hash_outputs();
    check_special_outputs(&bazel, &after);
    assert_same_outputs(&before, &after);

    // The results were stored under the prefix's instance: another prefix misses.
    bazel.clean_expunge().await;
    let other = bazel.build(&[format!("--remote_cache={}/other", server.http_cache_url())]).await;
    assert_no_hits("other prefix over HTTP", &other, &cold);

    drop(bazel);
    server.stop().await;
}

/// Bazel over https to the HTTP cache port: TLS with a CA made for the
/// test. Bazel 4.2.3's HTTP cache client ignores `--tls_certificate` (it
/// checks the server against its JVM's trust store and fails with "PKIX path
/// building failed"), so the CA goes into a trust store handed to Bazel's
/// JVM; netty's HTTP/1.1 needs no ALPN, unlike grpcs://. Cold build uploads,
/// the rebuild after `clean --expunge` is all hits with the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn https_cache_rebuild_is_all_remote_hits() {
    let _serial = BAZEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = security_support::Ca::new(dir.path(), "team");
    let server = TestServer::start_http(Some(security_support::tls_config(dir.path(), &ca, None))).await;
    let store = dir.path().join("truststore.p12");
    let out = std::process::Command::new("keytool")
        .args(["-importcert", "-noprompt", "-alias", "cairn-test-ca", "-storetype", "PKCS12"])
        .args(["-storepass", "changeit", "-file"])
        .arg(&ca.cert)
        .arg("-keystore")
        .arg(&store)
        .output()
        .expect("run keytool (it comes with the JDK Bazel runs on)");
    assert!(out.status.success(), "keytool: {}", String::from_utf8_lossy(&out.stderr));
    // README: --host_jvm_args=-Djavax.net.ssl.trustStore=… with --remote_cache=https://…
    let bazel = Bazel::new("original").with_startup(&[
        format!("--host_jvm_args=-Djavax.net.ssl.trustStore={}", store.display()),
        "--host_jvm_args=-Djavax.net.ssl.trustStorePassword=changeit".into(),
    ]);
    let flags = vec![format!("--remote_cache=https://{}/team", server.http_addr.unwrap())];

    let cold = bazel.build(&flags).await;
    assert_cold("cold over https", &cold);
    let before = bazel.hash_outputs();
    bazel.clean_expunge().await;
    let warm = bazel.build(&flags).await;
    assert_all_hits("rebuild over https", &warm, &cold);
    assert_same_outputs(&before, &bazel.hash_outputs());

    drop(bazel);
    server.stop().await;
}
