//! Which CAS blobs an ActionResult names, and which a Tree or Directory
//! names in turn: protocol knowledge only. The store answers whether they are
//! present (`store::complete`); UpdateActionResult uses the strict form to
//! refuse a malformed result before storing it.

use prost::Message;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi;

/// The CAS digests an ActionResult refers to, by how they are used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultRefs {
    /// Plain blobs: output files, stdout and stderr.
    pub blobs: Vec<Digest>,
    /// Serialized Tree messages (`OutputDirectory.tree_digest`).
    pub trees: Vec<Digest>,
    /// Root Directory messages (`OutputDirectory.root_directory_digest`),
    /// each the top of a hierarchy of Directory blobs.
    pub root_directories: Vec<Digest>,
}

impl ResultRefs {
    /// Every digest of `r`, refusing the first malformed one with an
    /// INVALID_ARGUMENT naming its field, and an output directory that names
    /// neither a Tree nor a root Directory.
    pub fn parse(function: DigestFunction, r: &reapi::ActionResult) -> Result<ResultRefs> {
        collect(function, r, &mut |e| Err(e))
    }

    /// Every well-formed digest of `r`, skipping malformed ones: for results
    /// already stored (they were checked by [`ResultRefs::parse`] on update).
    pub fn lenient(function: DigestFunction, r: &reapi::ActionResult) -> ResultRefs {
        collect(function, r, &mut |_| Ok(())).expect("lenient collection never fails")
    }
}

/// Walks `r`, handing each problem to `bad` (which fails or skips it).
fn collect(
    function: DigestFunction,
    r: &reapi::ActionResult,
    bad: &mut dyn FnMut(Error) -> Result<()>,
) -> Result<ResultRefs> {
    let mut refs = ResultRefs::default();
    for f in &r.output_files {
        push(function, &mut refs.blobs, f.digest.as_ref(), &|| format!("output file {:?}", f.path), bad)?;
    }
    for (what, d) in [("stdout_digest", &r.stdout_digest), ("stderr_digest", &r.stderr_digest)] {
        if d.is_some() {
            push(function, &mut refs.blobs, d.as_ref(), &|| what.to_string(), bad)?;
        }
    }
    for dir in &r.output_directories {
        let (tree, root) = (dir.tree_digest.as_ref(), dir.root_directory_digest.as_ref());
        if tree.is_none() && root.is_none() {
            bad(Error::InvalidArgument(format!(
                "output directory {:?} has neither tree_digest nor root_directory_digest",
                dir.path
            )))?;
        }
        if tree.is_some() {
            let what = || format!("output directory {:?} tree_digest", dir.path);
            push(function, &mut refs.trees, tree, &what, bad)?;
        }
        if root.is_some() {
            let what = || format!("output directory {:?} root_directory_digest", dir.path);
            push(function, &mut refs.root_directories, root, &what, bad)?;
        }
    }
    Ok(refs)
}

/// Parses one digest field into `into`; a problem goes to `bad`, the field
/// path (`what`) formatted only then.
fn push(
    function: DigestFunction,
    into: &mut Vec<Digest>,
    d: Option<&reapi::Digest>,
    what: &dyn Fn() -> String,
    bad: &mut dyn FnMut(Error) -> Result<()>,
) -> Result<()> {
    let parsed = match d {
        None => Err(Error::InvalidArgument(format!("{} is missing", what()))),
        Some(p) => Digest::parse(function, &p.hash, p.size_bytes)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", what()))),
    };
    match parsed {
        Ok(d) => {
            into.push(d);
            Ok(())
        }
        Err(e) => bad(e),
    }
}

/// The file blobs a serialized Tree names (in its root and every child), with
/// malformed digests skipped. An undecodable Tree is INVALID_ARGUMENT: a client
/// could not use it either.
pub fn tree_files(function: DigestFunction, tree: &[u8]) -> Result<Vec<Digest>> {
    let tree = reapi::Tree::decode(tree).map_err(|e| Error::InvalidArgument(format!("Tree does not decode: {e}")))?;
    let mut files = Vec::new();
    for d in tree.root.iter().chain(tree.children.iter()) {
        files.extend(d.files.iter().filter_map(|f| well_formed(function, f.digest.as_ref())));
    }
    Ok(files)
}

/// What one serialized Directory names: its files and its subdirectories
/// (each another Directory blob).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryRefs {
    pub files: Vec<Digest>,
    pub directories: Vec<Digest>,
}

/// Decodes a Directory blob into the digests it names, skipping malformed
/// ones; an undecodable Directory is INVALID_ARGUMENT.
pub fn directory_refs(function: DigestFunction, directory: &[u8]) -> Result<DirectoryRefs> {
    let dir = reapi::Directory::decode(directory)
        .map_err(|e| Error::InvalidArgument(format!("Directory does not decode: {e}")))?;
    Ok(DirectoryRefs {
        files: dir.files.iter().filter_map(|f| well_formed(function, f.digest.as_ref())).collect(),
        directories: dir.directories.iter().filter_map(|d| well_formed(function, d.digest.as_ref())).collect(),
    })
}

fn well_formed(function: DigestFunction, d: Option<&reapi::Digest>) -> Option<Digest> {
    d.and_then(|d| Digest::parse(function, &d.hash, d.size_bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DigestFunction = DigestFunction::Sha256;

    fn d(data: &[u8]) -> reapi::Digest {
        F.digest_of(data).to_proto()
    }

    fn bad() -> reapi::Digest {
        reapi::Digest { hash: "xyz".into(), size_bytes: 3 }
    }

    fn dir(tree: Option<reapi::Digest>, root: Option<reapi::Digest>) -> reapi::OutputDirectory {
        reapi::OutputDirectory {
            path: "out".into(),
            tree_digest: tree,
            root_directory_digest: root,
            ..Default::default()
        }
    }

    #[test]
    fn names_every_kind_of_reference() {
        let r = reapi::ActionResult {
            output_files: vec![reapi::OutputFile { path: "a".into(), digest: Some(d(b"a")), ..Default::default() }],
            output_directories: vec![dir(Some(d(b"tree")), Some(d(b"root"))), dir(None, Some(d(b"root2")))],
            stdout_digest: Some(d(b"out")),
            ..Default::default()
        };
        let refs = ResultRefs::parse(F, &r).unwrap();
        assert_eq!(refs.blobs, vec![F.digest_of(b"a"), F.digest_of(b"out")]);
        assert_eq!(refs.trees, vec![F.digest_of(b"tree")]);
        assert_eq!(refs.root_directories, vec![F.digest_of(b"root"), F.digest_of(b"root2")]);
        assert_eq!(ResultRefs::lenient(F, &r), refs);
    }

    #[test]
    fn malformed_results_are_refused_naming_the_field() {
        let file = |digest| reapi::OutputFile { path: "f".into(), digest, ..Default::default() };
        let cases = [
            (reapi::ActionResult { output_files: vec![file(None)], ..Default::default() }, "output file \"f\""),
            (reapi::ActionResult { output_files: vec![file(Some(bad()))], ..Default::default() }, "output file"),
            (reapi::ActionResult { stderr_digest: Some(bad()), ..Default::default() }, "stderr_digest"),
            (reapi::ActionResult { output_directories: vec![dir(None, None)], ..Default::default() }, "neither"),
            (
                reapi::ActionResult { output_directories: vec![dir(Some(bad()), None)], ..Default::default() },
                "tree_digest",
            ),
            (
                reapi::ActionResult { output_directories: vec![dir(Some(d(b"t")), Some(bad()))], ..Default::default() },
                "root_directory_digest",
            ),
        ];
        for (r, want) in cases {
            let err = ResultRefs::parse(F, &r).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(want), "{want}: {err}");
            // Stored results are read leniently: the bad digest is skipped.
            let lenient = ResultRefs::lenient(F, &r);
            assert!(lenient.blobs.len() + lenient.trees.len() + lenient.root_directories.len() <= 1);
        }
    }

    #[test]
    fn trees_and_directories_name_their_blobs() {
        let file = |name: &str, digest| reapi::FileNode { name: name.into(), digest, ..Default::default() };
        let child = reapi::Directory { files: vec![file("c", Some(d(b"c")))], ..Default::default() };
        let root = reapi::Directory {
            files: vec![file("r", Some(d(b"r"))), file("bad", Some(bad()))],
            directories: vec![reapi::DirectoryNode { name: "sub".into(), digest: Some(d(b"child")) }],
            ..Default::default()
        };
        let tree = reapi::Tree { root: Some(root.clone()), children: vec![child] };
        assert_eq!(tree_files(F, &tree.encode_to_vec()).unwrap(), vec![F.digest_of(b"r"), F.digest_of(b"c")]);
        let refs = directory_refs(F, &root.encode_to_vec()).unwrap();
        assert_eq!(refs.files, vec![F.digest_of(b"r")]);
        assert_eq!(refs.directories, vec![F.digest_of(b"child")]);
        for garbage in [&b"\xff\xff\xff"[..], b"\x0a\x05ab"] {
            assert!(tree_files(F, garbage).unwrap_err().to_string().contains("Tree does not decode"));
            assert!(directory_refs(F, garbage).unwrap_err().to_string().contains("Directory does not decode"));
        }
    }
}
