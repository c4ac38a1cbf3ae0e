//! The GOCACHEPROG wire protocol: request and response types (the framing
//! codec, which streams put bodies, is in `codec`).
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
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

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

#[path = "codec.rs"]
mod codec;
pub use codec::{Body, RequestReader};

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
