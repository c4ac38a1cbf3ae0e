//! GetTree page tokens: the walk's own state, so the next call resumes where
//! the last page ended instead of re-walking the tree from its root. A token
//! is opaque to clients (URL-safe base64 of a small binary record with a
//! checksum), bounded in size, and checked field by field when it comes back:
//! a token that was not issued for this root is INVALID_ARGUMENT, never a panic.
//!
//! Record: magic `GT1`, digest function tag, flags, frame count (u16), seen
//! count (u16), the frames (hash, size u64, next child u32), the seen digests
//! (hash, size u64), then the first 8 bytes of the SHA-256 of all that.

use base64::Engine;
use sha2::Digest as _;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

/// Deepest tree walked: a path from the root longer than this is
/// INVALID_ARGUMENT. Real trees are a few dozen levels deep; the bound keeps
/// a token under ~12 KiB of frames.
pub const MAX_DEPTH: usize = 256;

/// Most directories remembered across calls as already returned, so a
/// subtree shared between branches isn't sent again by a later call. Beyond
/// this (a tree of many shared subtrees paged over several calls) a later page
/// may repeat a directory, which GetTree allows.
pub const MAX_SEEN: usize = 256;

const MAGIC: &[u8; 3] = b"GT1";
const CHECKSUM: usize = 8;
/// Flag: the deepest frame's directory was read but not yet returned.
const TOP_UNSENT: u8 = 1;

/// Where a walk stopped: the path from the root, and what was returned.
#[derive(Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Each level's directory and the index of its next child to visit; the
    /// first is the root.
    pub frames: Vec<(Digest, u32)>,
    /// The deepest frame's directory is still to be returned.
    pub top_unsent: bool,
    /// Directories returned so far (the most recent, at most [`MAX_SEEN`]).
    pub seen: Vec<Digest>,
}

/// Encodes `cursor` as a page token.
pub fn encode(function: DigestFunction, cursor: &Cursor) -> String {
    let mut b = Vec::with_capacity(9 + cursor.frames.len() * 44 + cursor.seen.len() * 40 + CHECKSUM);
    b.extend_from_slice(MAGIC);
    b.push(function.tag());
    b.push(if cursor.top_unsent { TOP_UNSENT } else { 0 });
    b.extend_from_slice(&(cursor.frames.len() as u16).to_le_bytes());
    b.extend_from_slice(&(cursor.seen.len() as u16).to_le_bytes());
    for (d, next) in &cursor.frames {
        b.extend_from_slice(&d.hash);
        b.extend_from_slice(&d.size.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
    }
    for d in &cursor.seen {
        b.extend_from_slice(&d.hash);
        b.extend_from_slice(&d.size.to_le_bytes());
    }
    let sum = sha2::Sha256::digest(&b);
    b.extend_from_slice(&sum[..CHECKSUM]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Decodes a token issued for a walk from `root`.
pub fn decode(token: &str, root: &Digest) -> Result<Cursor> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "page_token {:?} was not issued by this server for root {root} ({why}); \
             pass the next_page_token of a previous page, or none to start over",
            abbreviate(token)
        ))
    };
    let max_len = (9 + MAX_DEPTH * 44 + MAX_SEEN * 40 + CHECKSUM) * 4 / 3 + 4;
    if token.len() > max_len {
        return Err(bad("too long"));
    }
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64"))?;
    if b.len() < 9 + CHECKSUM {
        return Err(bad("too short"));
    }
    let (body, sum) = b.split_at(b.len() - CHECKSUM);
    if sha2::Sha256::digest(body)[..CHECKSUM] != *sum {
        return Err(bad("checksum mismatch"));
    }
    if &body[..3] != MAGIC {
        return Err(bad("unknown format"));
    }
    if body[3] != root.function.tag() {
        return Err(bad("another digest function"));
    }
    let flags = body[4];
    let frames = u16::from_le_bytes([body[5], body[6]]) as usize;
    let seen = u16::from_le_bytes([body[7], body[8]]) as usize;
    if frames == 0 || frames > MAX_DEPTH || seen > MAX_SEEN || flags & !TOP_UNSENT != 0 {
        return Err(bad("bad counts"));
    }
    if body.len() != 9 + frames * 44 + seen * 40 {
        return Err(bad("bad length"));
    }
    let mut rest = &body[9..];
    let take_digest = |rest: &mut &[u8]| -> Result<Digest> {
        let hash: [u8; 32] = rest[..32].try_into().expect("32 bytes");
        let size = u64::from_le_bytes(rest[32..40].try_into().expect("8 bytes"));
        *rest = &rest[40..];
        if size > i64::MAX as u64 {
            return Err(bad("bad size"));
        }
        Ok(Digest { function: root.function, hash, size })
    };
    let mut cursor =
        Cursor { frames: Vec::with_capacity(frames), top_unsent: flags & TOP_UNSENT != 0, seen: Vec::new() };
    for _ in 0..frames {
        let d = take_digest(&mut rest)?;
        let next = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        cursor.frames.push((d, next));
    }
    for _ in 0..seen {
        cursor.seen.push(take_digest(&mut rest)?);
    }
    if cursor.frames[0].0 != *root {
        return Err(bad("issued for another root"));
    }
    Ok(cursor)
}

/// The start of a long token, for error messages.
fn abbreviate(token: &str) -> String {
    match token.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &token[..i]),
        None => token.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        DigestFunction::Sha256.digest_of(&[n])
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let cursor = Cursor { frames: vec![(d(0), 3), (d(1), 0)], top_unsent: true, seen: vec![d(2), d(3)] };
        let token = encode(DigestFunction::Sha256, &cursor);
        assert_eq!(decode(&token, &d(0)).unwrap(), cursor);
        assert!(decode(&token, &d(9)).unwrap_err().to_string().contains("another root"));
        // Every single-character change and every truncation is refused, never a panic.
        let alphabet = ['A', 'z', '0', '-', '_'];
        for i in 0..token.len() {
            for c in alphabet {
                let mut t: Vec<char> = token.chars().collect();
                if t[i] == c {
                    continue;
                }
                t[i] = c;
                let t: String = t.into_iter().collect();
                assert!(decode(&t, &d(0)).is_err(), "tampered token at {i} accepted");
            }
            assert!(decode(&token[..i], &d(0)).is_err(), "truncated token accepted");
        }
        for junk in ["", "1", "abc", "!!!!", &"A".repeat(100_000)] {
            assert!(matches!(decode(junk, &d(0)), Err(Error::InvalidArgument(_))), "{junk:?}");
        }
    }

    #[test]
    fn a_full_cursor_stays_bounded() {
        let cursor = Cursor {
            frames: (0..MAX_DEPTH).map(|i| (d(i as u8), u32::MAX)).collect(),
            top_unsent: false,
            seen: (0..MAX_SEEN).map(|i| d(i as u8)).collect(),
        };
        let token = encode(DigestFunction::Sha256, &cursor);
        assert!(token.len() < 32 << 10, "{} bytes", token.len());
        assert_eq!(decode(&token, &d(0)).unwrap(), cursor);
    }
}
