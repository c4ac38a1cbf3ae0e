//! Reads the admin HTTP port as Prometheus and a person's browser would:
//! plain HTTP/1.1 GETs with hyper's client, and the scraped text parsed
//! into numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// GET `path` on `addr`: the status code, Content-Type and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the admin port");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("HTTP handshake");
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr.to_string()).body(Empty::<Bytes>::new()).expect("request");
    let resp = sender.send_request(req).await.expect("HTTP request");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = resp.into_body().collect().await.expect("HTTP body").to_bytes();
    drop(sender);
    let _ = conn.await;
    (status, ctype, String::from_utf8(body.to_vec()).expect("UTF-8 body"))
}

/// GET `/status`, parsed.
pub async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, ctype, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "/status: {body}");
    assert!(ctype.starts_with("application/json"), "/status Content-Type {ctype}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// A scrape: each sample line (`name{labels} value`) keyed by its name and
/// labels exactly as written.
pub struct Scrape {
    pub text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// GET `/metrics` and parse it.
    pub async fn take(addr: SocketAddr) -> Scrape {
        let (code, ctype, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200, "/metrics: {text}");
        assert!(ctype.contains("text"), "/metrics Content-Type {ctype}");
        Scrape::parse(text)
    }

    /// A scrape once `calls` calls in all have been recorded (a call is
    /// recorded just after its client has the answer); panics after 10 s.
    pub async fn settled(addr: SocketAddr, calls: u64) -> Scrape {
        let mut last = String::new();
        for _ in 0..200 {
            let m = Scrape::take(addr).await;
            if m.sum("cairn_requests_total", &[]) >= calls as f64 {
                return m;
            }
            last = m.text;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let seen: Vec<&str> = last.lines().filter(|l| l.starts_with("cairn_requests")).collect();
        panic!("the server did not record {calls} calls within 10 s: {seen:#?}")
    }

    /// Parses the text format; panics on a line that is not a sample or comment.
    pub fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            samples.insert(key.to_string(), value);
        }
        assert!(text.ends_with("# EOF\n"), "the scrape is not complete OpenMetrics text");
        Scrape { text, samples }
    }

    /// The value of `name` with exactly these labels (in any order), 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        want.sort();
        self.samples
            .iter()
            .filter(|(key, _)| {
                let (n, l) = key.split_once('{').unwrap_or((key.as_str(), "}"));
                if n != name {
                    return false;
                }
                let mut have: Vec<String> =
                    l.trim_end_matches('}').split(',').filter(|s| !s.is_empty()).map(String::from).collect();
                have.sort();
                have == want
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// The sum of `name` over every label set that includes `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.samples
            .iter()
            .filter(|(key, _)| {
                let (n, l) = key.split_once('{').unwrap_or((key.as_str(), "}"));
                n == name && want.iter().all(|w| l.trim_end_matches('}').split(',').any(|x| x == w))
            })
            .map(|(_, v)| *v)
            .sum()
    }
}
