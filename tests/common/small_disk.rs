//! A small tmpfs mounted for one test (tests run as root here), for the
//! full-disk behaviour of the server and its clients; unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    _dir: tempfile::TempDir,
    /// Where the tmpfs is mounted.
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `96m`) on a fresh temp dir.
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { _dir: dir, path }
    }

    /// Fills the disk with one file until fewer than `leave` bytes are free
    /// (0: full); returns the file, whose removal gives the space back.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let free = free_bytes(&self.path);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&filler).unwrap());
        let chunk = vec![1u8; 64 * 1024];
        let mut written = 0u64;
        while written + leave < free && w.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        let _ = w.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Bytes free on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}
