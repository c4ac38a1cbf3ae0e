//! The GOCACHEPROG framing codec: reads go's requests from stdin and streams
//! put bodies (base64 on one line, possibly tens of MB) through a decoder
//! and a hasher into a sink, one buffer-full at a time. The message types
//! are in the parent, `protocol`.

use std::io;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::*;

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
