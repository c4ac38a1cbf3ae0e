//! ContentAddressableStorage.GetTree: every Directory below a root, breadth
//! first, each distinct directory once, in pages. A page token is the number
//! of directories already returned, so paging needs no server-side state.
//! Directories missing from the CAS are skipped (the spec allows a partial
//! tree); a missing root is NOT_FOUND.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;

use futures::Stream;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::digest::{validate_instance, Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi;
use crate::server::status::{to_status, IntoStatus};
use crate::store::Store;

/// Directories per page when the client does not say.
const DEFAULT_PAGE_SIZE: usize = 1000;
/// Upper bound on directories per page, whatever the client asks.
const MAX_PAGE_SIZE: usize = 10_000;
/// Serialized bytes per page, to stay under gRPC's default 4 MiB message limit.
const MAX_PAGE_BYTES: usize = 2 << 20;
/// Largest Directory blob read; anything bigger is not a sane directory.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

pub type GetTreeStream = Pin<Box<dyn Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;

pub async fn get_tree(store: Store, req: reapi::GetTreeRequest) -> Result<Response<GetTreeStream>, Status> {
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
    let skip: usize = if req.page_token.is_empty() {
        0
    } else {
        req.page_token.parse().map_err(|_| {
            Status::invalid_argument(format!("page_token {:?} was not issued by this server", req.page_token))
        })?
    };
    // Fail fast (as a status, not a stream error) when the root is absent.
    let store2 = store.clone();
    let root_dir = crate::server::blocking(move || read_directory(&store2, &root))
        .await?
        .ok_or_else(|| Status::not_found(format!("root directory {root} is not in the CAS")))?;

    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = walk(&store, root, root_dir, skip, page_size, &tx) {
            let _ = tx.blocking_send(Err(to_status(e)));
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

fn read_directory(store: &Store, d: &Digest) -> Result<Option<reapi::Directory>, Error> {
    if d.size > MAX_DIRECTORY_BYTES {
        return Err(Error::InvalidArgument(format!("directory {d} is larger than {MAX_DIRECTORY_BYTES} bytes")));
    }
    let Some(bytes) = store.read_all(d)? else {
        return Ok(None);
    };
    reapi::Directory::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| Error::InvalidArgument(format!("blob {d} is not a Directory message: {e}")))
}

/// Walks the tree breadth first, sending pages once `skip` directories have passed.
fn walk(
    store: &Store,
    root: Digest,
    root_dir: reapi::Directory,
    skip: usize,
    page_size: usize,
    tx: &tokio::sync::mpsc::Sender<Result<reapi::GetTreeResponse, Status>>,
) -> Result<(), Error> {
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root_dir]);
    let mut index = 0usize;
    let mut page = Vec::new();
    let mut page_bytes = 0usize;
    while let Some(dir) = queue.pop_front() {
        for child in &dir.directories {
            let d = Digest::from_proto(root.function, child.digest.as_ref(), &format!("directory {:?}", child.name))?;
            if seen.insert(d) {
                if let Some(sub) = read_directory(store, &d)? {
                    queue.push_back(sub);
                }
            }
        }
        index += 1;
        if index <= skip {
            continue;
        }
        page_bytes += dir.encoded_len();
        page.push(dir);
        if page.len() >= page_size || page_bytes >= MAX_PAGE_BYTES {
            let token = if queue.is_empty() { String::new() } else { index.to_string() };
            let msg = reapi::GetTreeResponse { directories: std::mem::take(&mut page), next_page_token: token };
            page_bytes = 0;
            if tx.blocking_send(Ok(msg)).is_err() {
                return Ok(()); // The client went away.
            }
        }
    }
    if !page.is_empty() || index <= skip {
        let _ = tx.blocking_send(Ok(reapi::GetTreeResponse { directories: page, next_page_token: String::new() }));
    }
    Ok(())
}
