//! ContentAddressableStorage.GetTree: every Directory below a root, depth
//! first in pre-order, each distinct directory once per call, in pages. The
//! walk's state (the path from the root and what was returned) travels in the
//! page token ([`get_tree_token`]), so a later call resumes where the last page
//! ended instead of re-walking from the root. Each page is produced by one
//! short blocking task when the client asks for it: a slow client holds no
//! thread. Directories missing from the CAS are skipped (the spec allows a
//! partial tree); a missing root is NOT_FOUND.

use std::collections::HashSet;
use std::pin::Pin;

use futures::Stream;
use prost::Message;
use tonic::{Response, Status};

use crate::digest::{validate_instance, Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi;
use crate::server::get_tree_token::{self as token, Cursor, MAX_DEPTH, MAX_SEEN};
use crate::server::status::{to_status, IntoStatus};
use crate::store::tiered::Tiered;
use crate::store::Store;

/// Directories per page when the client does not say.
const DEFAULT_PAGE_SIZE: usize = 1000;
/// Upper bound on directories per page, whatever the client asks.
const MAX_PAGE_SIZE: usize = 10_000;
/// Serialized Directory bytes per page; with the token (under 32 KiB) a page
/// stays well under gRPC's default 4 MiB message limit.
const MAX_PAGE_BYTES: usize = 2 << 20;
/// Largest Directory read: one must fit in a page on its own.
const MAX_DIRECTORY_BYTES: u64 = MAX_PAGE_BYTES as u64;

pub type GetTreeStream = Pin<Box<dyn Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;

pub async fn get_tree(tiers: Tiered, req: reapi::GetTreeRequest) -> Result<Response<GetTreeStream>, Status> {
    let function = DigestFunction::from_proto(req.digest_function).status()?;
    validate_instance(&req.instance_name).status()?;
    let root = Digest::from_proto(function, req.root_digest.as_ref(), "root_digest").status()?;
    if req.page_size < 0 {
        return Err(Status::invalid_argument(format!("page_size {} is negative", req.page_size)));
    }
    let page_size = match req.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    // Directories only the tier holds are fetched before the walk.
    tiers.fill_directories(root).await.status()?;
    let store = tiers.store().clone();
    let cursor = if req.page_token.is_empty() { None } else { Some(token::decode(&req.page_token, &root).status()?) };
    // Fail fast (as a status, not a stream error) when the root is absent.
    let walk = crate::server::blocking(move || Walk::start(store, root, cursor, page_size))
        .await?
        .ok_or_else(|| Status::not_found(format!("root directory {root} is not in the CAS")))?;
    let pages = futures::stream::unfold(Some(walk), |walk| async move {
        let mut walk = walk?;
        let produced = tokio::task::spawn_blocking(move || {
            let page = walk.next_page();
            (walk, page)
        })
        .await;
        match produced {
            Ok((walk, Ok(page))) => {
                let more = !walk.done();
                Some((Ok(page), more.then_some(walk)))
            }
            Ok((_, Err(e))) => Some((Err(to_status(e)), None)),
            Err(e) => Some((Err(Status::internal(format!("GetTree task failed: {e}"))), None)),
        }
    });
    Ok(Response::new(Box::pin(pages)))
}

fn read_directory(store: &Store, d: &Digest) -> Result<Option<reapi::Directory>, Error> {
    if d.size > MAX_DIRECTORY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "directory {d} is larger than {MAX_DIRECTORY_BYTES} bytes, more than a GetTree page can carry"
        )));
    }
    let Some(bytes) = store.read_all(d)? else {
        return Ok(None);
    };
    reapi::Directory::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| Error::InvalidArgument(format!("blob {d} is not a Directory message: {e}")))
}

/// One level of the walk: a directory and the next child to visit.
struct Frame {
    digest: Digest,
    dir: reapi::Directory,
    next: usize,
}

/// A depth-first walk in progress.
struct Walk {
    store: Store,
    function: DigestFunction,
    page_size: usize,
    /// The path from the root to the directory last visited.
    stack: Vec<Frame>,
    /// The deepest frame's directory is still to be returned.
    top_unsent: bool,
    /// Every directory returned or skipped by this walk, so each goes out once.
    seen: HashSet<Digest>,
    /// The most recent of `seen`, carried in the token (at most [`MAX_SEEN`]).
    recent: std::collections::VecDeque<Digest>,
    /// The last page has been produced.
    finished: bool,
}

impl Walk {
    /// Starts at the root, or resumes at `cursor`; None when the root is absent.
    fn start(store: Store, root: Digest, cursor: Option<Cursor>, page_size: usize) -> Result<Option<Walk>, Error> {
        let Some(root_dir) = read_directory(&store, &root)? else {
            return Ok(None);
        };
        let mut walk = Walk {
            store,
            function: root.function,
            page_size,
            stack: vec![Frame { digest: root, dir: root_dir, next: 0 }],
            top_unsent: true,
            seen: HashSet::from([root]),
            recent: std::collections::VecDeque::new(),
            finished: false,
        };
        let Some(cursor) = cursor else { return Ok(Some(walk)) };
        walk.top_unsent = cursor.top_unsent;
        walk.stack[0].next = cursor.frames[0].1 as usize;
        for (digest, next) in cursor.frames.into_iter().skip(1) {
            walk.seen.insert(digest);
            // A level deleted since the last page: its remaining children are skipped.
            let dir = read_directory(&walk.store, &digest)?.unwrap_or_default();
            walk.stack.push(Frame { digest, dir, next: next as usize });
        }
        for f in &walk.stack {
            if f.next > f.dir.directories.len() {
                return Err(Error::InvalidArgument(format!(
                    "page_token names child {} of directory {}, which has {}; start over without a token",
                    f.next,
                    f.digest,
                    f.dir.directories.len()
                )));
            }
        }
        for d in cursor.seen {
            walk.note_seen(d);
        }
        Ok(Some(walk))
    }

    fn done(&self) -> bool {
        self.finished
    }

    fn note_seen(&mut self, d: Digest) {
        self.seen.insert(d);
        if self.recent.len() == MAX_SEEN {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// Moves to the next directory not yet seen, leaving it unsent on top of
    /// the stack; false when the walk is over.
    fn advance(&mut self) -> Result<bool, Error> {
        loop {
            // Levels with no children left are finished.
            let Some(top) = self.stack.last_mut() else { return Ok(false) };
            let Some(child) = top.dir.directories.get(top.next) else {
                self.stack.pop();
                continue;
            };
            top.next += 1;
            let d = Digest::from_proto(self.function, child.digest.as_ref(), &format!("directory {:?}", child.name))?;
            if !self.seen.insert(d) {
                continue;
            }
            let Some(dir) = read_directory(&self.store, &d)? else { continue };
            if self.stack.len() >= MAX_DEPTH {
                return Err(Error::InvalidArgument(format!(
                    "the tree is deeper than {MAX_DEPTH} levels at directory {d}; GetTree walks no deeper"
                )));
            }
            self.stack.push(Frame { digest: d, dir, next: 0 });
            self.top_unsent = true;
            return Ok(true);
        }
    }

    /// The next page, with a token to resume after it (empty on the last page).
    fn next_page(&mut self) -> Result<reapi::GetTreeResponse, Error> {
        let mut page = Vec::new();
        let mut page_bytes = 0usize;
        loop {
            if !self.top_unsent && !self.advance()? {
                self.finished = true;
                return Ok(reapi::GetTreeResponse { directories: page, next_page_token: String::new() });
            }
            let top = self.stack.last().expect("advance leaves a frame");
            // Room for the directory's bytes plus its field tag and length.
            let cost = top.dir.encoded_len() + 8;
            if !page.is_empty() && (page.len() >= self.page_size || page_bytes + cost > MAX_PAGE_BYTES) {
                break;
            }
            page.push(top.dir.clone());
            page_bytes += cost;
            let digest = top.digest;
            self.top_unsent = false;
            self.note_seen(digest);
        }
        // Levels with nothing left need no place in the token.
        while self.stack.last().is_some_and(|f| !self.top_unsent && f.next >= f.dir.directories.len()) {
            self.stack.pop();
        }
        if self.stack.is_empty() {
            self.finished = true;
            return Ok(reapi::GetTreeResponse { directories: page, next_page_token: String::new() });
        }
        let cursor = Cursor {
            frames: self.stack.iter().map(|f| (f.digest, f.next as u32)).collect(),
            top_unsent: self.top_unsent,
            seen: self.recent.iter().copied().collect(),
        };
        Ok(reapi::GetTreeResponse { directories: page, next_page_token: token::encode(self.function, &cursor) })
    }
}
