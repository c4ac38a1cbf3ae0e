//! `cairn bench link`: an emulated network link between two TUN devices.
//!
//! This kernel has no `netem` qdisc, so benchmarks that need real TCP over a
//! slow or distant link (scripts/bench-go.sh) join a network namespace to the
//! host with two TUN devices and this forwarder in between. Each direction is
//! modelled as a router port followed by a wire: a packet waits in a FIFO
//! queue (bounded in bytes, like a router's buffer) until the port has sent
//! the packets before it at `--rate`, then travels `--delay` before it is
//! written to the other device. Packets keep their order; a packet that
//! finds the queue full is dropped and counted, never lost silently.
//!
//! Threads rather than async tasks: each direction is a blocking read loop
//! and a blocking write loop with sleeps, and timer precision matters more
//! here than task count.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::parse_size;

/// Largest packet a TUN device hands us (its MTU can be at most 65535).
const MAX_PACKET: usize = 65_536;

/// Packets on the wire (past the queue, waiting out the delay) at once per
/// direction: a memory bound for unlimited rates, where the byte-bounded
/// queue never fills. Packets beyond it are dropped and counted.
const MAX_IN_FLIGHT: usize = 1 << 16;

/// Flags of `cairn bench link`.
#[derive(clap::Args, Clone, Debug)]
pub struct LinkArgs {
    /// Name of the TUN device created for one end (at most 15 bytes).
    #[arg(long)]
    pub tun_a: String,
    /// Name of the TUN device created for the other end (move it into a
    /// network namespace after the "ready" line).
    #[arg(long)]
    pub tun_b: String,
    /// One-way delay of every packet, each direction (e.g. 5ms, 250us, 0):
    /// the round-trip time is twice this.
    #[arg(long, default_value = "5ms", value_parser = parse_delay)]
    pub delay: Duration,
    /// Rate of each direction in bits per second (e.g. 100Mbit, 1Gbit,
    /// 500kbit) or `unlimited`.
    #[arg(long, default_value = "unlimited", value_parser = parse_rate)]
    pub rate: u64,
    /// Bytes that may wait for the rate in each direction (a router's
    /// buffer); a packet that does not fit is dropped and counted.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub queue: u64,
    /// How often the packet counters are printed to stderr (when they changed).
    #[arg(long, default_value = "1s", value_parser = parse_delay)]
    pub stats_every: Duration,
}

/// Parses a delay: a number with `us`, `ms` or `s` (`5ms`, `0.5ms`), or `0`.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("delay {s:?} has no number; use e.g. 5ms, 250us or 1s"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(format!("delay {s:?} needs a unit: us, ms or s")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("delay {s:?} is out of range"))
}

/// Parses a rate in bits per second (`100Mbit`, `1.5Gbit`, `500kbit`,
/// `1000000`); `unlimited` (or `0`) means no pacing, returned as 0.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "unlimited" || t == "0" {
        return Ok(0);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("rate {s:?} has no number; use e.g. 100Mbit or unlimited"))?;
    let mult = match unit.strip_suffix("/s").unwrap_or(unit) {
        "" | "bit" | "bps" => 1e0,
        "k" | "kbit" | "kbps" => 1e3,
        "m" | "mbit" | "mbps" => 1e6,
        "g" | "gbit" | "gbps" => 1e9,
        _ => return Err(format!("rate {s:?} has unknown unit {unit:?}; use bit, kbit, Mbit or Gbit")),
    };
    let v = n * mult;
    if !v.is_finite() || !(1.0..1e15).contains(&v) {
        return Err(format!("rate {s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Packet counters of one direction.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Dropped because the queue (`--queue` bytes) was full.
    dropped_queue: AtomicU64,
    /// Dropped because `MAX_IN_FLIGHT` packets were already on the wire.
    dropped_wire: AtomicU64,
    /// Writes the receiving device refused (e.g. it was down).
    write_errors: AtomicU64,
}

impl Counters {
    fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} packets, {} bytes, {} dropped (queue full), {} dropped (wire full), {} write errors",
            g(&self.packets),
            g(&self.bytes),
            g(&self.dropped_queue),
            g(&self.dropped_wire),
            g(&self.write_errors)
        )
    }
}

/// Opens /dev/net/tun and creates (or attaches to) the TUN device `name`,
/// without packet-information headers: each read or write is one IP packet.
fn open_tun(name: &str) -> anyhow::Result<File> {
    anyhow::ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "TUN device name {name:?} must be 1 to {} bytes",
        libc::IFNAMSIZ - 1
    );
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun (needs root and the tun module)");
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(File::from(owned))
}

/// Runs the forwarder until killed: creates both devices, prints one
/// "ready" line to stdout, then forwards and prints counters to stderr.
pub fn run(args: LinkArgs) -> anyhow::Result<()> {
    let a = Arc::new(open_tun(&args.tun_a)?);
    let b = Arc::new(open_tun(&args.tun_b)?);
    // Sleeps of a fraction of a millisecond must not be rounded up by the
    // default 50 us timer slack on every packet.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let ab = Arc::new(Counters::default());
    let ba = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for (from, to, counters) in [(&a, &b, &ab), (&b, &a, &ba)] {
        let (tx, rx) = sync_channel(MAX_IN_FLIGHT);
        let (from, to, c) = (Arc::clone(from), Arc::clone(to), Arc::clone(counters));
        let (delay, rate, queue) = (args.delay, args.rate, args.queue);
        threads.push(std::thread::spawn(move || receive(&from, tx, &c, delay, rate, queue)));
        let c = Arc::clone(counters);
        threads.push(std::thread::spawn(move || {
            deliver(&to, rx, &c);
            Ok(())
        }));
    }
    let rate = if args.rate == 0 { "unlimited".to_string() } else { format!("{} bit/s", args.rate) };
    println!(
        "link ready: {} <-> {}, delay {:?} each way, rate {rate}, queue {} bytes",
        args.tun_a, args.tun_b, args.delay, args.queue
    );
    std::io::stdout().flush()?;
    let mut last = String::new();
    loop {
        std::thread::sleep(args.stats_every.max(Duration::from_millis(10)));
        if let Some(t) = threads.iter().position(|t| t.is_finished()) {
            let result = threads.swap_remove(t).join().map_err(|_| anyhow::anyhow!("a link thread panicked"))?;
            result?;
            anyhow::bail!("a link thread stopped");
        }
        let line = format!(
            "link {}->{}: {}; {}->{}: {}",
            args.tun_a,
            args.tun_b,
            ab.line(),
            args.tun_b,
            args.tun_a,
            ba.line()
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
    }
}

/// Reads packets from `from`, gives each its delivery time (queueing for the
/// rate, then the delay) and hands it to the delivering thread in order.
fn receive(
    from: &File,
    tx: SyncSender<(Instant, Vec<u8>)>,
    c: &Counters,
    delay: Duration,
    rate: u64,
    queue: u64,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; MAX_PACKET];
    // When the port has finished sending every packet accepted so far.
    let mut port_free = Instant::now();
    loop {
        let n = match (&*from).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading a TUN device"),
        };
        let now = Instant::now();
        let sent = if rate == 0 {
            now
        } else {
            let start = port_free.max(now);
            let waiting_bytes = (start - now).as_secs_f64() * rate as f64 / 8.0;
            if waiting_bytes + n as f64 > queue as f64 {
                c.dropped_queue.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            port_free = start + Duration::from_secs_f64(n as f64 * 8.0 / rate as f64);
            port_free
        };
        match tx.try_send((sent + delay, buf[..n].to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                c.dropped_wire.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
    }
}

/// Writes each packet to `to` at its delivery time. Delivery times never
/// decrease, so packets leave in the order they came.
fn deliver(to: &File, rx: Receiver<(Instant, Vec<u8>)>, c: &Counters) {
    for (at, packet) in rx {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // One write is one packet: a short write would be a truncated one.
        match (&*to).write(&packet) {
            Ok(n) if n == packet.len() => {
                c.packets.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            _ => {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delays_and_rates() {
        assert_eq!(parse_delay("5ms").unwrap(), Duration::from_millis(5));
        assert_eq!(parse_delay("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_delay("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_delay("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_delay("2s").unwrap(), Duration::from_secs(2));
        for bad in ["", "5", "ms", "5 parsecs", "-1ms"] {
            assert!(parse_delay(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_rate("100Mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1.5Gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("100mbps").unwrap(), 100_000_000);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
        assert_eq!(parse_rate("0").unwrap(), 0);
        for bad in ["", "fast", "100MB", "0.1bit"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
