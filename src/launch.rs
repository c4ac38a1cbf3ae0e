//! Starting `cairn serve` as a child process and learning where it listens:
//! the one place the bench and the tests do it, so both start the server the
//! same way and read its gRPC address from the same log line.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the server logs once its gRPC port accepts connections, followed by
/// the address (see `server::run`). The admin and HTTP ports log their own
/// "... listening on" lines, which this does not match.
pub const GRPC_LISTENING: &str = "cairn listening on ";

/// The gRPC address in `line`, when it is the server's [`GRPC_LISTENING`] line
/// (plain or JSON log format).
pub fn grpc_addr(line: &str) -> Option<SocketAddr> {
    addr_after(line, GRPC_LISTENING)
}

/// What the admin port logs once it listens, followed by the address.
pub const ADMIN_LISTENING: &str = "admin listening on ";

/// The address logged right after `marker` in `line` (plain or JSON log format).
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.split(|c: char| c == ',' || c == '"' || c.is_whitespace()).next()?.parse().ok()
}

/// The command for `bin serve` on an ephemeral loopback port (unless `extra`
/// names `--listen`) over `data_dir`,
/// with the admin port on one too unless `extra` names `--admin-listen` (so
/// servers started side by side never collide); stderr (the log) is piped.
pub fn serve_command<S: AsRef<OsStr>>(bin: &Path, data_dir: &Path, extra: &[S]) -> Command {
    let own_admin = !extra.iter().any(|a| a.as_ref() == "--admin-listen");
    // A test restarting a server on its old port passes its own `--listen`
    // (clap refuses the flag twice).
    let own_listen = !extra.iter().any(|a| a.as_ref() == "--listen");
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .args(if own_listen { &["--listen", "127.0.0.1:0"][..] } else { &[][..] })
        .arg("--data-dir")
        .arg(data_dir)
        .args(if own_admin { &["--admin-listen", "127.0.0.1:0"][..] } else { &[][..] })
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A started server and the gRPC address it reported.
pub struct Launched {
    pub child: Child,
    pub addr: SocketAddr,
    /// From spawn to the [`GRPC_LISTENING`] line.
    pub startup: Duration,
}

/// Spawns `command` (made by [`serve_command`]), hands every line the server
/// logs to `on_line` (on a thread that lives as long as the server's stderr),
/// and waits up to `wait` for the [`GRPC_LISTENING`] line. When it does not
/// come (the server exited, or is too slow) the child is killed and the error
/// carries what it logged.
pub fn launch(
    mut command: Command,
    wait: Duration,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::io::Result<Launched> {
    let spawned = Instant::now();
    let mut child = command.spawn()?;
    let stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("serve_command pipes stderr"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut reported = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            on_line(&line);
            if reported {
                continue;
            }
            match grpc_addr(&line) {
                Some(addr) => {
                    let _ = tx.send(Ok((addr, Instant::now())));
                    reported = true;
                }
                None => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
        }
        // The server's log ended before it listened: hand over what it said.
        if !reported {
            let _ = tx.send(Err(seen));
        }
    });
    match rx.recv_timeout(wait) {
        Ok(Ok((addr, at))) => Ok(Launched { child, addr, startup: at - spawned }),
        failed => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match failed {
                Ok(Err(log)) => format!("cairn serve exited before listening; it logged:\n{log}"),
                _ => format!("cairn serve did not report its gRPC address within {wait:?}"),
            };
            Err(std::io::Error::other(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_grpc_line_gives_the_address() {
        let cases = [
            (
                "2026-11-26T08:35:07Z  INFO cairn::server: cairn listening on 127.0.0.1:38687, storing in /x",
                Some("127.0.0.1:38687"),
            ),
            (
                r#"{"level":"INFO","fields":{"message":"cairn listening on [::1]:9092, storing in /x"}}"#,
                Some("[::1]:9092"),
            ),
            ("INFO cairn::server: cairn listening on 127.0.0.1:9092", Some("127.0.0.1:9092")),
            ("INFO cairn::server: admin listening on 127.0.0.1:9093 (/metrics)", None),
            ("INFO cairn::server: http listening on 127.0.0.1:8080 (Bazel's HTTP cache protocol)", None),
            ("INFO cairn::server: cairn listening on nowhere", None),
        ];
        for (line, want) in cases {
            assert_eq!(grpc_addr(line), want.map(|a| a.parse().unwrap()), "{line}");
        }
    }
}
