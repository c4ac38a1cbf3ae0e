//! Unit tests of the GOCACHEPROG codec (kept beside `protocol.rs`, split only
//! to keep that file readable).

use super::*;
use tokio::io::BufReader;

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn aid(n: u8) -> ActionId {
    ActionId([n; 32])
}

/// A put exactly as go writes it: object, newline, blank line, body line.
fn put_wire(id: i64, action: ActionId, body: &[u8]) -> String {
    let output = OutputId::of(body);
    if body.is_empty() {
        return format!(
            "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\"}}\n\n",
            action.to_base64(),
            output.to_base64()
        );
    }
    format!(
        "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{}}}\n\n\"{}\"\n",
        action.to_base64(),
        output.to_base64(),
        body.len(),
        b64(body)
    )
}

fn get_wire(id: i64, action: ActionId) -> String {
    format!("{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n", action.to_base64())
}

/// A reader over `wire` with a deliberately tiny buffer, so every chunk
/// boundary inside a body (and inside a base64 group) gets exercised.
fn reader(wire: &[u8], cap: usize) -> RequestReader<BufReader<&[u8]>> {
    RequestReader::new(BufReader::with_capacity(cap, wire))
}

async fn read_put_body(wire: &str, cap: usize) -> Result<(Request, Body, Vec<u8>), ProtocolError> {
    let mut r = reader(wire.as_bytes(), cap);
    let req = r.next_request().await?.expect("a request");
    let mut sink = Vec::new();
    let body = r.read_body(Some(&mut sink)).await?;
    assert!(r.next_request().await?.is_none(), "body must be consumed to the end");
    Ok((req, body, sink))
}

#[tokio::test]
async fn get_then_eof_with_blank_lines() {
    let wire = get_wire(1, aid(7)) + &get_wire(2, aid(8));
    for cap in [1, 3, 64, 8192] {
        let mut r = reader(wire.as_bytes(), cap);
        assert_eq!(r.next_request().await.unwrap(), Some(Request { id: 1, command: Command::Get { action: aid(7) } }));
        assert_eq!(r.next_request().await.unwrap(), Some(Request { id: 2, command: Command::Get { action: aid(8) } }));
        assert_eq!(r.next_request().await.unwrap(), None);
    }
}

#[tokio::test]
async fn zero_length_put_has_no_body_size_and_no_body_line() {
    let wire = put_wire(3, aid(1), b"") + &get_wire(4, aid(1));
    let mut r = reader(wire.as_bytes(), 16);
    assert_eq!(
        r.next_request().await.unwrap(),
        Some(Request { id: 3, command: Command::Put { action: aid(1), output: OutputId::EMPTY, size: 0 } })
    );
    // The next thing on the wire is the get, not a body.
    assert_eq!(r.next_request().await.unwrap().unwrap().id, 4);
}

#[tokio::test]
async fn put_bodies_of_every_padding_and_chunking() {
    for len in [1usize, 2, 3, 4, 5, 6, 7, 100, 4097] {
        let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let wire = put_wire(9, aid(2), &body);
        for cap in [1, 2, 3, 5, 7, 64, 1 << 20] {
            let (req, got, sink) = read_put_body(&wire, cap).await.unwrap();
            assert_eq!(req.command, Command::Put { action: aid(2), output: OutputId::of(&body), size: len as u64 });
            assert_eq!(got.size, len as u64, "len {len} cap {cap}");
            assert_eq!(got.output, OutputId::of(&body));
            assert!(got.write_error.is_none());
            assert_eq!(sink, body, "len {len} cap {cap}");
        }
    }
}

#[tokio::test]
async fn huge_body_line_streams() {
    // 24 MiB of body is a 32 MiB base64 line; go sends up to ~63 MB ones.
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i ^ (i >> 9)) as u8).collect();
    let wire = put_wire(5, aid(3), &body);
    let (_, got, sink) = read_put_body(&wire, 1 << 20).await.unwrap();
    assert_eq!(got.size, body.len() as u64);
    assert_eq!(got.output, OutputId::of(&body));
    assert!(sink == body);
}

#[tokio::test]
async fn body_is_consumed_even_without_a_sink() {
    let wire = put_wire(1, aid(1), b"hello world") + &get_wire(2, aid(2));
    let mut r = reader(wire.as_bytes(), 4);
    r.next_request().await.unwrap();
    let body = r.read_body(None).await.unwrap();
    assert_eq!(body.output, OutputId::of(b"hello world"));
    assert_eq!(r.next_request().await.unwrap().unwrap().id, 2);
}

#[tokio::test]
async fn request_fields_are_read_as_go_writes_them() {
    let a = aid(5).to_base64();
    let o = OutputId::of(b"x").to_base64();
    let cases: Vec<(String, Command)> = vec![
        (r#"{"ID":1,"Command":"close"}"#.to_string(), Command::Close),
        // Unknown fields are ignored, for newer go versions.
        (format!(r#"{{"ID":1,"Command":"get","ActionID":"{a}","Future":[1,2]}}"#), Command::Get { action: aid(5) }),
        // Pre-1.24 spelling of OutputID.
        (
            format!(r#"{{"ID":1,"Command":"put","ActionID":"{a}","ObjectID":"{o}","BodySize":1}}"#),
            Command::Put { action: aid(5), output: OutputId::of(b"x"), size: 1 },
        ),
        // Go 1.24 experimental builds send both.
        (
            format!(r#"{{"ID":1,"Command":"put","ActionID":"{a}","OutputID":"{o}","BodySize":1,"ObjectID":"{o}"}}"#),
            Command::Put { action: aid(5), output: OutputId::of(b"x"), size: 1 },
        ),
    ];
    for (line, want) in cases {
        let wire = format!("{line}\n\n");
        let got = reader(wire.as_bytes(), 8).next_request().await.unwrap().unwrap();
        assert_eq!(got.command, want, "{line}");
    }
}

#[tokio::test]
async fn malformed_requests_are_fatal_with_a_clear_message() {
    let a = aid(5).to_base64();
    let short = b64(&[1u8; 31]);
    let cases: Vec<(String, &str)> = vec![
        ("not json at all\n\n".into(), "not a valid JSON request"),
        (r#"{"ID":1}"#.to_string() + "\n\n", "not a valid JSON request"),
        (r#"{"Command":"get"}"#.to_string() + "\n\n", "not a valid JSON request"),
        (r#"{"ID":1,"Command":"get"}"#.to_string() + "\n\n", "get without ActionID"),
        (format!("{{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"{short}\"}}\n\n"), "31 bytes, want 32"),
        (format!("{{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"{a}!\"}}\n\n"), "not base64"),
        (format!("{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\"}}\n\n"), "put without OutputID"),
        (
            format!("{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{a}\",\"BodySize\":-1}}\n\n"),
            "negative BodySize",
        ),
        (r#"{"ID":1,"Command":"trim"}"#.to_string() + "\n\n", "unknown command \"trim\""),
        ("x".repeat(MAX_REQUEST_LINE + 1), "longer than"),
    ];
    for (wire, want) in cases {
        let err = reader(wire.as_bytes(), 1024).next_request().await.unwrap_err();
        assert!(err.to_string().contains(want), "{wire:.80}: got {err}, want {want}");
    }
}

#[tokio::test]
async fn malformed_bodies_are_fatal() {
    let head = |size: usize| {
        format!(
            "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{size}}}\n\n",
            aid(1).to_base64(),
            OutputId::EMPTY.to_base64()
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (head(3), "ended in the middle of a put body"),
        (head(3) + "\"AAAA", "ended in the middle of a put body"),
        (head(3) + "AAAA\n", "expected a JSON string"),
        (head(3) + "\"AAA\"\n", "not a multiple of 4"),
        (head(3) + "\"AA*A\"\n", "standard base64"),
        (head(3) + "\"AAAA\nAAAA\"\n", "standard base64"),
        (head(3) + "\"AA\\/A\"\n", "standard base64"),
        (head(3) + "\"AA==AAAA\"\n", "base64"),
    ];
    for (wire, want) in cases {
        for cap in [1, 3, 4096] {
            let mut r = reader(wire.as_bytes(), cap);
            r.next_request().await.unwrap();
            let err = r.read_body(None).await.unwrap_err();
            assert!(err.to_string().contains(want), "{wire:?} cap {cap}: got {err}, want {want}");
        }
    }
}

#[tokio::test]
async fn last_request_without_trailing_newline_is_read() {
    let wire = r#"{"ID":7,"Command":"close"}"#;
    let mut r = reader(wire.as_bytes(), 4);
    assert_eq!(r.next_request().await.unwrap(), Some(Request { id: 7, command: Command::Close }));
    assert_eq!(r.next_request().await.unwrap(), None);
}

#[test]
fn responses_use_go_field_names_and_omit_empty_ones() {
    let out = OutputId::of(b"abc");
    let cases = vec![
        (Response::handshake(), r#"{"ID":0,"KnownCommands":["get","put","close"]}"#.to_string()),
        (Response::miss(4), r#"{"ID":4,"Miss":true}"#.to_string()),
        (Response::ok(9), r#"{"ID":9}"#.to_string()),
        (Response::error(2, "boom"), r#"{"ID":2,"Err":"boom"}"#.to_string()),
        (Response::stored(3, "/c/o/ab".into()), r#"{"ID":3,"DiskPath":"/c/o/ab"}"#.to_string()),
        (
            Response::hit(5, out, 3, 1_700_000_000_123_456_789, "/c/o/x".into()),
            format!(
                r#"{{"ID":5,"OutputID":"{}","Size":3,"Time":"2023-11-14T22:13:20.123456789Z","DiskPath":"/c/o/x"}}"#,
                out.to_base64()
            ),
        ),
        // A hit on an empty output: Size 0 is omitted, as go's encoder does.
        (
            Response::hit(6, OutputId::EMPTY, 0, 0, "/c/o/e".into()),
            r#"{"ID":6,"OutputID":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","Time":"1970-01-01T00:00:00.000000000Z","DiskPath":"/c/o/e"}"#
                .to_string(),
        ),
    ];
    for (resp, want) in cases {
        let line = resp.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(std::str::from_utf8(&line[..line.len() - 1]).unwrap(), want);
    }
}

#[test]
fn empty_output_id_is_sha256_of_nothing() {
    assert_eq!(OutputId::EMPTY, OutputId::of(b""));
    assert_eq!(OutputId::EMPTY.to_base64(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

#[test]
fn ids_round_trip_through_hex() {
    let id = OutputId::of(b"round trip");
    assert_eq!(OutputId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(ActionId::from_hex("zz"), None);
    assert_eq!(id.to_hex().len(), 64);
}

#[test]
fn rfc3339_formatting() {
    let cases = [
        (0i64, "1970-01-01T00:00:00.000000000Z"),
        (951_782_400 * 1_000_000_000, "2000-02-29T00:00:00.000000000Z"),
        (1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789Z"),
        (4_102_444_799 * 1_000_000_000 + 999_999_999, "2099-12-31T23:59:59.999999999Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
    ];
    for (nanos, want) in cases {
        assert_eq!(format_rfc3339(nanos), want, "{nanos}");
    }
}
