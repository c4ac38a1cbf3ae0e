//! A TCP proxy that adds latency, for benchmarking `cairn gocacheprog`
//! against a "remote" server on loopback (scripts/bench-go.sh).
//!
//! Usage: `delay_proxy LISTEN UPSTREAM RTT_MS`, e.g.
//! `delay_proxy 127.0.0.1:0 127.0.0.1:9092 10`; prints `listening on ADDR`.
//! Every chunk read from either side is written to the other side RTT/2
//! later (chunks keep their order), so a request/response round trip takes
//! RTT longer. Bandwidth is not limited. tokio's timer ticks in whole
//! milliseconds, so each direction's delay is rounded up to the next
//! millisecond: use even RTTs (2, 10) for exact figures.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: delay_proxy LISTEN UPSTREAM RTT_MS");
        std::process::exit(2);
    }
    let rtt_ms: f64 = args[3].parse().expect("RTT_MS is a number");
    let one_way = Duration::from_secs_f64(rtt_ms / 2e3);
    let listener = TcpListener::bind(&args[1]).await?;
    println!("listening on {}", listener.local_addr()?);
    let upstream = args[2].clone();
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pipe(cr, sw, one_way), pipe(sr, cw, one_way));
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
