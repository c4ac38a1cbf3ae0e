//! The GOCACHEPROG wire protocol: request and response types and the framing codec.
//!
//! go → cairn (stdin): each request is one line of compact JSON followed by an
//! empty line (go's JSON encoder ends the object with `\n`, then go writes one
//! more). A `put` with `BodySize > 0` is followed by one more line holding a
//! JSON string whose content is the standard, padded base64 of the body; bodies
//! of tens of MB arrive as a single line, so they are decoded in a stream. A
//! zero-length put has no `BodySize` (omitempty) and no body line.
//!
//! cairn → go (stdout): one JSON object per line, in any order; go matches them
//! by `ID`. Byte fields are base64 (std alphabet, padded) in both directions.
//!
//! The authority is Go's `src/cmd/go/internal/cacheprog/cacheprog.go`;
//! `/work/shared/GOCACHEPROG.md` has notes checked against a real go1.27.3.

use std::fmt;
use std::io;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest request line accepted. Real ones are about 200 bytes; the bound
/// only stops a non-protocol input (a binary piped in by mistake) from being
/// buffered without limit before it fails to parse.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// The commands cairn advertises in the handshake, in Go's spelling.
pub const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex, as used in file names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<$name> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }

            /// Standard padded base64, as on the wire.
            pub fn to_base64(&self) -> String {
                STANDARD.encode(self.0)
            }

            /// Parses a wire field: base64 of exactly 32 bytes.
            fn from_base64(field: &str, s: &str) -> Result<$name, String> {
                let bytes = STANDARD.decode(s).map_err(|e| format!("{field} is not base64: {e}"))?;
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|b: Vec<u8>| format!("{field} has {} bytes, want 32", b.len()))?;
                Ok($name(arr))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

id_type!(
    /// Go's cache key: a 32-byte hash of everything that determines an
    /// action's result (and of derived keys such as an action's stdout).
    ActionId
);

id_type!(
    /// The SHA-256 of an output's content, computed by go before a put. It is
    /// exactly a REAPI SHA-256 CAS digest (with the body's size).
    OutputId
);

impl OutputId {
    /// The output ID of `data`.
    pub fn of(data: &[u8]) -> OutputId {
        OutputId(Sha256::digest(data).into())
    }

    /// sha256(""), the output ID of every zero-length put.
    pub const EMPTY: OutputId = OutputId([
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae,
        0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
    ]);
}

/// One request from go, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the response; go numbers requests 1, 2, 3, ...
    pub id: i64,
    pub command: Command,
}

/// What go asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Look `action` up.
    Get { action: ActionId },
    /// Store `size` bytes whose SHA-256 is `output` under `action`. When
    /// `size > 0` the body follows on the input and must be consumed with
    /// [`RequestReader::read_body`] before the next request is read.
    Put { action: ActionId, output: OutputId, size: u64 },
    /// go is done: reply, then exit.
    Close,
}

/// Why the input cannot be read as GOCACHEPROG requests. All of these are
/// fatal: once the framing is broken there is no way to find the next request.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading stdin failed.
    #[error("reading requests from go: {0}")]
    Read(#[from] io::Error),
    /// A line longer than any request go writes.
    #[error("request line is longer than {MAX_REQUEST_LINE} bytes; is this really go talking to GOCACHEPROG?")]
    LineTooLong,
    /// A request line that is not a JSON request object.
    #[error("request is not a valid JSON request ({source}): {line}")]
    Json {
        /// The start of the offending line, for the error message.
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed JSON that is not a valid request (unknown command, missing
    /// or malformed ID fields).
    #[error("request {id}: {msg}")]
    Invalid { id: i64, msg: String },
    /// The body line after a put is not one JSON string of standard base64.
    #[error("put body: {0}")]
    Body(String),
    /// The input ended halfway through something.
    #[error("input ended in the middle of {0}")]
    UnexpectedEof(&'static str),
}

/// The request object as go encodes it; unknown fields are ignored so that
/// newer go versions can add some.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "Command")]
    command: String,
    #[serde(rename = "ActionID", default)]
    action_id: Option<String>,
    #[serde(rename = "OutputID", default)]
    output_id: Option<String>,
    /// The pre-1.24 (experimental) name of `OutputID`; read only as a fallback.
    #[serde(rename = "ObjectID", default)]
    object_id: Option<String>,
    /// Omitted by go when 0.
    #[serde(rename = "BodySize", default)]
    body_size: i64,
}

impl RawRequest {
    fn validate(self) -> Result<Request, ProtocolError> {
        let id = self.id;
        let invalid = |msg: String| ProtocolError::Invalid { id, msg };
        let command = match self.command.as_str() {
            "get" => {
                let action = self.action_id.ok_or_else(|| invalid("get without ActionID".into()))?;
                Command::Get { action: ActionId::from_base64("ActionID", &action).map_err(invalid)? }
            }
            "put" => {
                let action = self.action_id.ok_or_else(|| invalid("put without ActionID".into()))?;
                let output = self.output_id.or(self.object_id).ok_or_else(|| invalid("put without OutputID".into()))?;
                let size = u64::try_from(self.body_size)
                    .map_err(|_| invalid(format!("negative BodySize {}", self.body_size)))?;
                Command::Put {
                    action: ActionId::from_base64("ActionID", &action).map_err(invalid)?,
                    output: OutputId::from_base64("OutputID", &output).map_err(invalid)?,
                    size,
                }
            }
            "close" => Command::Close,
            // go only sends commands we advertised, so anything else means we
            // are not talking to the go we think we are.
            other => return Err(invalid(format!("unknown command {other:?}; cairn knows {KNOWN_COMMANDS:?}"))),
        };
        Ok(Request { id, command })
    }
}

/// What [`RequestReader::read_body`] learned while streaming a put body.
#[derive(Debug)]
pub struct Body {
    /// Decoded bytes.
    pub size: u64,
    /// SHA-256 of the decoded bytes, to check against the put's OutputID.
    pub output: OutputId,
    /// The first error writing to the sink. The body was still consumed to the
    /// end, so the stream stays in sync and only this put fails.
    pub write_error: Option<io::Error>,
}

/// Reads requests (and put bodies) from go's side of the pipe.
pub struct RequestReader<R> {
    input: R,
    /// Reused buffer for the current request line.
    line: Vec<u8>,
    /// Reused buffer for decoded body bytes (at most 3/4 of one input chunk).
    decoded: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> RequestReader<R> {
    /// Wraps a buffered reader; give it a large buffer (say 1 MiB), since put
    /// bodies are decoded one buffer-full at a time.
    pub fn new(input: R) -> Self {
        RequestReader { input, line: Vec::new(), decoded: Vec::new() }
    }

    /// The next request, or `None` at a clean end of input (go exited or, as
    /// `go list` does, closed stdin without sending `close`).
    pub async fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        if !self.skip_whitespace().await? {
            return Ok(None);
        }
        self.read_line().await?;
        let raw: RawRequest = serde_json::from_slice(&self.line).map_err(|source| {
            let shown = String::from_utf8_lossy(&self.line[..self.line.len().min(200)]).into_owned();
            ProtocolError::Json { line: shown, source }
        })?;
        raw.validate().map(Some)
    }

    /// Streams the body of the put just returned by [`Self::next_request`]
    /// into `sink` (if any), decoding base64 and hashing as it goes, so a body
    /// is never held in memory whole. Call only when the put's size is > 0.
    ///
    /// The sink is a plain blocking writer: in cairn, a temp file, written
    /// one decoded buffer-full at a time. Those are page-cache writes, and
    /// this task has to consume the whole body before anything else anyway,
    /// so handing each chunk to another thread would only add latency.
    pub async fn read_body(&mut self, mut sink: Option<&mut (dyn io::Write + Send)>) -> Result<Body, ProtocolError> {
        if !self.skip_whitespace().await? {
            return Err(ProtocolError::UnexpectedEof("a put body"));
        }
        let first = self.input.fill_buf().await?[0];
        if first != b'"' {
            return Err(ProtocolError::Body(format!(
                "expected a JSON string after a put with BodySize > 0, found {:?}",
                char::from(first)
            )));
        }
        self.input.consume(1);

        let mut decoder = Base64Stream::default();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut write_error = None;
        loop {
            let chunk = self.input.fill_buf().await?;
            if chunk.is_empty() {
                return Err(ProtocolError::UnexpectedEof("a put body"));
            }
            let (text, used, closed) = match chunk.iter().position(|&b| b == b'"') {
                Some(p) => (&chunk[..p], p + 1, true),
                None => (chunk, chunk.len(), false),
            };
            self.decoded.clear();
            decoder.push(text, &mut self.decoded).map_err(ProtocolError::Body)?;
            self.input.consume(used);

            hasher.update(&self.decoded);
            size += self.decoded.len() as u64;
            if let Some(w) = sink.as_mut() {
                if let Err(e) = w.write_all(&self.decoded) {
                    write_error = Some(e);
                    sink = None;
                }
            }
            if closed {
                break;
            }
        }
        decoder.finish().map_err(ProtocolError::Body)?;
        Ok(Body { size, output: OutputId(hasher.finalize().into()), write_error })
    }

    /// Skips ASCII whitespace (the blank line after each request, newlines,
    /// a stray `\r`). False at end of input.
    async fn skip_whitespace(&mut self) -> io::Result<bool> {
        loop {
            let buf = self.input.fill_buf().await?;
            if buf.is_empty() {
                return Ok(false);
            }
            let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let more = n < buf.len();
            self.input.consume(n);
            if more {
                return Ok(true);
            }
        }
    }

    /// Reads up to (not including) the next `\n`, or to end of input, into
    /// `self.line`, refusing lines longer than [`MAX_REQUEST_LINE`].
    async fn read_line(&mut self) -> Result<(), ProtocolError> {
        self.line.clear();
        loop {
            let buf = self.input.fill_buf().await?;
            if buf.is_empty() {
                return Ok(());
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (p, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_REQUEST_LINE {
                return Err(ProtocolError::LineTooLong);
            }
            self.line.extend_from_slice(&buf[..take]);
            self.input.consume(if done { take + 1 } else { take });
            if done {
                return Ok(());
            }
        }
    }
}

/// Incremental standard-base64 decoder: input arrives in arbitrary chunks, so
/// up to 3 characters of an incomplete 4-character group carry over.
#[derive(Default)]
struct Base64Stream {
    carry: [u8; 4],
    carry_len: usize,
    /// A group with `=` padding was decoded: the encoding has ended.
    padded: bool,
}

impl Base64Stream {
    /// Decodes `text`, appending bytes to `out`.
    fn push(&mut self, mut text: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self.carry_len > 0 {
            let n = (4 - self.carry_len).min(text.len());
            self.carry[self.carry_len..self.carry_len + n].copy_from_slice(&text[..n]);
            self.carry_len += n;
            text = &text[n..];
            if self.carry_len < 4 {
                return Ok(());
            }
            let group = self.carry;
            self.carry_len = 0;
            self.decode_groups(&group, out)?;
        }
        let whole = text.len() / 4 * 4;
        self.decode_groups(&text[..whole], out)?;
        let rest = &text[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        Ok(())
    }

    /// Decodes a whole number of 4-character groups.
    fn decode_groups(&mut self, groups: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if groups.is_empty() {
            return Ok(());
        }
        if self.padded {
            return Err("data after the base64 padding".into());
        }
        let start = out.len();
        out.resize(start + groups.len() / 4 * 3, 0);
        let n = STANDARD
            .decode_slice(groups, &mut out[start..])
            .map_err(|e| format!("not one line of standard base64 ({e})"))?;
        out.truncate(start + n);
        self.padded = groups.last() == Some(&b'=');
        Ok(())
    }

    /// Checks that the input ended on a group boundary.
    fn finish(&self) -> Result<(), String> {
        if self.carry_len != 0 {
            return Err("base64 length is not a multiple of 4".into());
        }
        Ok(())
    }
}

/// One response to go. Fields follow Go's `ProgResponse`; empty ones are
/// omitted, as go's own encoder would.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    /// Non-empty: this request failed. On a get go treats it as a miss; on a
    /// put it can fail the build (see the put handler).
    #[serde(rename = "Err", skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    /// Handshake only.
    #[serde(rename = "KnownCommands", skip_serializing_if = "Vec::is_empty")]
    pub known_commands: Vec<&'static str>,
    #[serde(rename = "Miss", skip_serializing_if = "is_false")]
    pub miss: bool,
    #[serde(rename = "OutputID", skip_serializing_if = "Option::is_none", serialize_with = "ser_output_id")]
    pub output_id: Option<OutputId>,
    #[serde(rename = "Size", skip_serializing_if = "is_zero")]
    pub size: u64,
    /// RFC 3339; go uses it for `go clean -testcache`, so it is the put time.
    #[serde(rename = "Time", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Absolute path of a local file holding the body (get hits and puts).
    #[serde(rename = "DiskPath", skip_serializing_if = "Option::is_none")]
    pub disk_path: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn ser_output_id<S: Serializer>(id: &Option<OutputId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_base64()),
        None => s.serialize_none(),
    }
}

impl Response {
    /// The unprompted first message: ID 0 and the commands we support.
    pub fn handshake() -> Response {
        Response { known_commands: KNOWN_COMMANDS.to_vec(), ..Response::default() }
    }

    /// A get that found nothing.
    pub fn miss(id: i64) -> Response {
        Response { id, miss: true, ..Response::default() }
    }

    /// A get hit; `time_nanos` is when the entry was stored (Unix nanoseconds).
    pub fn hit(id: i64, output: OutputId, size: u64, time_nanos: i64, disk_path: String) -> Response {
        Response {
            id,
            output_id: Some(output),
            size,
            time: Some(format_rfc3339(time_nanos)),
            disk_path: Some(disk_path),
            ..Response::default()
        }
    }

    /// A stored put.
    pub fn stored(id: i64, disk_path: String) -> Response {
        Response { id, disk_path: Some(disk_path), ..Response::default() }
    }

    /// A plain acknowledgement (the close reply).
    pub fn ok(id: i64) -> Response {
        Response { id, ..Response::default() }
    }

    /// A failed request.
    pub fn error(id: i64, msg: impl Into<String>) -> Response {
        Response { id, err: Some(msg.into()), ..Response::default() }
    }

    /// The response as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        let mut line = serde_json::to_vec(self).expect("response serializes");
        line.push(b'\n');
        line
    }
}

/// Formats Unix nanoseconds as RFC 3339 in UTC with nanoseconds
/// (`2006-01-02T15:04:05.999999999Z`), which Go's `time.Time` parses.
pub fn format_rfc3339(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", day_secs / 3600, day_secs % 3600 / 60, day_secs % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
