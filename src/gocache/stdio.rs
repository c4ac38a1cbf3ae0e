//! The process's stdin and stdout, as go hands them to us: pipes.
//!
//! Why not `tokio::io::stdin()`/`stdout()`: those do every read and write on
//! a blocking-pool thread, a thread hop each way per request. go keeps only
//! `-p`+1 requests in flight, so per-request latency is paid almost serially
//! (~0.1 ms a request is ~10% of a warm `go build std`). When fd 0 and fd 1
//! are pipes, we drive them from epoll instead; anything else (a terminal, a
//! file) falls back to tokio's stdio.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// Our stdin, read asynchronously.
pub fn input() -> Box<dyn AsyncRead + Unpin + Send> {
    match dup_pipe(0).and_then(pipe::Receiver::from_owned_fd) {
        Ok(rx) => Box::new(rx),
        Err(_) => Box::new(tokio::io::stdin()),
    }
}

/// Our stdout, written asynchronously.
pub fn output() -> Box<dyn AsyncWrite + Unpin + Send> {
    // Non-blocking mode belongs to the open pipe, not the fd: if stderr is
    // the same pipe (`2>&1`), making it non-blocking could drop log lines.
    if same_file(1, 2) {
        return Box::new(tokio::io::stdout());
    }
    match dup_pipe(1).and_then(pipe::Sender::from_owned_fd) {
        Ok(tx) => Box::new(tx),
        Err(_) => Box::new(tokio::io::stdout()),
    }
}

/// Points fds 1 and 2 at /dev/null. After `close`, go waits for EOF on our
/// stdout before it exits, and a caller may be waiting on our stderr (it is
/// go's). Call only when every reply has been flushed and the handles from
/// [`output`] are dropped (they hold a duplicate of fd 1).
pub fn release() {
    // SAFETY: plain fd syscalls on a path literal; fds 1 and 2 are replaced,
    // never left closed, so no later open can land on them.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// A duplicate of `fd` if it is a pipe (so the tokio handle owns and closes
/// its own fd, and fd 0/1 stay valid for anything else in the process).
fn dup_pipe(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: fds 0-2 stay open for the life of the process.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let meta = fstat(borrowed)?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a pipe"));
    }
    borrowed.try_clone_to_owned()
}

fn same_file(a: i32, b: i32) -> bool {
    // SAFETY: as above.
    let (a, b) = unsafe { (BorrowedFd::borrow_raw(a), BorrowedFd::borrow_raw(b)) };
    match (fstat(a), fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success; the fd is valid (borrowed).
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialized by the successful fstat.
    Ok(unsafe { st.assume_init() })
}
