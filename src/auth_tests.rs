//! Unit tests of the tokens file and the access decision.

use super::*;

fn creds(token: Option<&str>, cn: Option<&str>) -> Credentials {
    Credentials { bearer: token.map(str::to_string), client_cn: cn.map(str::to_string) }
}

fn line(name: &str, mode: &str, token: &str, prefixes: &str) -> String {
    format!("{name} {mode} {} {prefixes}\n", hex::encode(token_sha256(token)))
}

fn policy(anonymous: Anonymous) -> Policy {
    let text = format!(
        "# CI tokens\n{}{}{}  \nci-cert rw cert:ci.example # a machine\nreader ro cert:reader.example\n",
        line("main", "rw", "tok-main", ""),
        line("pr", "ro", "tok-pr", ""),
        line("team-a", "rw", "tok-a", "team-a \"\""),
    );
    Policy::parse(&text, anonymous).unwrap()
}

#[test]
fn every_outcome() {
    use Access::{Read, Write};
    let p = policy(Anonymous::None);
    assert_eq!(p.counts(), (3, 2));
    let unauth = |r: Result<&str, Denied>| matches!(r, Err(Denied::Unauthenticated(_)));
    let denied = |r: Result<&str, Denied>| matches!(r, Err(Denied::PermissionDenied(_)));
    // No token, unknown token.
    assert!(unauth(p.check(&creds(None, None), "", Read)));
    assert!(unauth(p.check(&creds(Some("nope"), None), "", Read)));
    // rw writes anywhere; ro reads, never writes.
    assert_eq!(p.check(&creds(Some("tok-main"), None), "x/y", Write), Ok("main"));
    assert_eq!(p.check(&creds(Some("tok-pr"), None), "x", Read), Ok("pr"));
    assert!(denied(p.check(&creds(Some("tok-pr"), None), "x", Write)));
    // Prefixes: by path component, reads and writes alike; "" is the default name.
    let a = creds(Some("tok-a"), None);
    assert_eq!(p.check(&a, "team-a", Write), Ok("team-a"));
    assert_eq!(p.check(&a, "team-a/linux", Write), Ok("team-a"));
    assert_eq!(p.check(&a, "", Write), Ok("team-a"));
    assert!(denied(p.check(&a, "team-ab", Read)));
    assert!(denied(p.check(&a, "other", Read)));
    // Certificates: known CN gets its scope; unknown is unauthenticated; a token wins.
    assert_eq!(p.check(&creds(None, Some("ci.example")), "", Write), Ok("ci-cert"));
    assert!(denied(p.check(&creds(None, Some("reader.example")), "", Write)));
    assert!(unauth(p.check(&creds(None, Some("stranger")), "", Read)));
    assert_eq!(p.check(&creds(Some("tok-pr"), Some("ci.example")), "", Read), Ok("pr"));
    assert!(denied(p.check(&creds(Some("tok-pr"), Some("ci.example")), "", Write)));
}

#[test]
fn anonymous_reads() {
    let p = policy(Anonymous::Ro);
    assert_eq!(p.check(&creds(None, None), "any", Access::Read), Ok("anonymous"));
    assert!(matches!(p.check(&creds(None, None), "any", Access::Write), Err(Denied::Unauthenticated(_))));
    // A wrong token is still refused: a mistyped secret must be noticed.
    assert!(matches!(p.check(&creds(Some("typo"), None), "any", Access::Read), Err(Denied::Unauthenticated(_))));
    assert_eq!(p.check(&creds(None, Some("stranger")), "", Access::Read), Ok("anonymous"));
}

#[test]
fn bad_files_name_the_line() {
    let hash = hex::encode(token_sha256("t"));
    for (text, want) in [
        ("a rw\n", "line 1"),
        (&format!("a rx {hash}\n") as &str, "ro or rw"),
        ("# c\na rw 1234\n", "line 2"),
        ("a rw cert:\n", "cert:"),
        (&format!("a rw {hash}\nb ro {hash}\n"), "twice"),
    ] {
        let err = Policy::parse(text, Anonymous::None).unwrap_err();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    assert_eq!(Policy::parse("", Anonymous::None).unwrap().counts(), (0, 0));
}

#[test]
fn new_tokens_parse_back() {
    let (token, line) = new_token("ci", false, &["team-a".into(), String::new()]);
    assert!(token.starts_with("cairn_") && token.len() == 6 + 43, "{token}");
    assert!(line.starts_with("ci ro ") && line.ends_with(" team-a \"\""), "{line}");
    let p = Policy::parse(&line, Anonymous::None).unwrap();
    assert_eq!(p.check(&creds(Some(&token), None), "team-a/x", Access::Read), Ok("ci"));
    assert_ne!(new_token("ci", true, &[]).0, token);
}

#[test]
fn reload_keeps_the_old_policy_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, line("a", "rw", "one", "")).unwrap();
    let auth = Auth::from_file(&path, Anonymous::None).unwrap();
    let one = creds(Some("one"), None);
    assert!(auth.check(&one, "", Access::Write).is_ok());
    std::fs::write(&path, "garbage\n").unwrap();
    assert!(auth.reload().is_err());
    assert!(auth.check(&one, "", Access::Write).is_ok());
    std::fs::write(&path, line("b", "rw", "two", "")).unwrap();
    auth.reload().unwrap();
    assert!(auth.check(&one, "", Access::Write).is_err());
    assert!(auth.check(&creds(Some("two"), None), "", Access::Write).is_ok());
    assert!(Auth::open().check(&Credentials::default(), "", Access::Write).is_ok());
}
