//! `cairn bench link`, the emulated network of scripts/bench-go.sh: two TUN
//! devices, one moved into a network namespace, and UDP datagrams sent
//! through the forwarder. Checks behaviour, not speed: datagrams arrive in
//! the order sent, never sooner than the configured delay and rate allow,
//! and a burst larger than the queue is dropped and counted, not lost
//! silently. Needs root and /dev/net/tun (skipped with a message otherwise).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One-way delay the link is started with.
const DELAY: Duration = Duration::from_millis(20);
/// Its rate in bit/s.
const RATE: f64 = 10e6;
/// Its queue in bytes.
const QUEUE: usize = 64 * 1024;
/// UDP payload per datagram; the IP packet adds 28 bytes.
const PAYLOAD: usize = 1000;

/// The forwarder and the namespace, removed on drop even when a check fails.
struct Link {
    child: Child,
    ns: String,
    /// Every counters line the forwarder printed.
    stats: Arc<Mutex<Vec<String>>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<&'static str> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (TUN devices and network namespaces need root)");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is missing");
    }
    None
}

/// Starts the forwarder between host device and a device moved into a new
/// namespace; returns it with the host and namespace addresses.
fn start_link() -> (Link, Ipv4Addr, Ipv4Addr) {
    let id = std::process::id() % 100_000;
    let (a, b, ns) = (format!("clt-a{id}"), format!("clt-b{id}"), format!("cairn-lt-{id}"));
    let net = (id % 250) as u8 + 1;
    let (host_ip, ns_ip) = (Ipv4Addr::new(10, 205, net, 1), Ipv4Addr::new(10, 205, net, 2));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "link", "--tun-a", &a, "--tun-b", &b, "--delay", "20ms", "--rate", "10Mbit"])
        .args(["--queue", "64KiB", "--stats-every", "20ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn bench link");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let stats = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&stats);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
    ip(&["netns", "add", &ns]);
    let link = Link { child, ns: ns.clone(), stats };
    assert!(ready.starts_with("link ready"), "forwarder did not start: {ready:?} {:?}", link.stats.lock().unwrap());
    ip(&["addr", "add", &host_ip.to_string(), "peer", &ns_ip.to_string(), "dev", &a]);
    ip(&["link", "set", &a, "up"]);
    ip(&["link", "set", &b, "netns", &ns]);
    ip(&["-n", &ns, "addr", "add", &ns_ip.to_string(), "peer", &host_ip.to_string(), "dev", &b]);
    ip(&["-n", &ns, "link", "set", &b, "up"]);
    (link, host_ip, ns_ip)
}

/// A UDP socket bound inside namespace `ns` (a socket stays in the
/// namespace it was made in, whichever thread uses it later).
fn socket_in(ns: &str, addr: Ipv4Addr) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open the namespace");
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        UdpSocket::bind(SocketAddr::from((addr, 0))).expect("bind in the namespace")
    })
    .join()
    .unwrap()
}

/// Sends `n` numbered datagrams at once; receives until 1 s of silence.
/// Returns (number, microseconds from the first send to its arrival).
fn burst(tx: &UdpSocket, rx: &UdpSocket, n: u32) -> Vec<(u32, Duration)> {
    let to = rx.local_addr().unwrap();
    let start = Instant::now();
    for i in 0..n {
        let mut d = vec![0u8; PAYLOAD];
        d[..4].copy_from_slice(&i.to_be_bytes());
        tx.send_to(&d, to).unwrap();
    }
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(len) = rx.recv(&mut buf) {
        assert_eq!(len, PAYLOAD);
        got.push((u32::from_be_bytes(buf[..4].try_into().unwrap()), start.elapsed()));
    }
    got
}

/// The forwarder's "dropped (queue full)" count for host to namespace.
fn dropped(link: &Link) -> u64 {
    let stats = link.stats.lock().unwrap();
    let Some(last) = stats.last() else { return 0 };
    let first = last.split(';').next().unwrap();
    let n = first.split(", ").find(|s| s.ends_with("dropped (queue full)")).expect("drop counter");
    n.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn link_delays_paces_keeps_order_and_counts_drops() {
    if let Some(why) = cannot_run() {
        eprintln!("SKIPPED bench_link: {why}");
        return;
    }
    let (link, host_ip, ns_ip) = start_link();
    let rx = socket_in(&link.ns, ns_ip);
    let tx = UdpSocket::bind(SocketAddr::from((host_ip, 0))).unwrap();
    let ser = Duration::from_secs_f64((PAYLOAD + 28) as f64 * 8.0 / RATE);

    // A burst the queue holds: everything arrives, in order, no sooner than
    // the delay, and the last no sooner than the rate allows.
    let n = (QUEUE / (PAYLOAD + 28)) as u32 - 2;
    let got = burst(&tx, &rx, n);
    let numbers: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "every datagram, in order");
    assert!(got[0].1 >= DELAY, "the first datagram came after {:?}, before the {DELAY:?} delay", got[0].1);
    let last = got.last().unwrap().1;
    let paced = DELAY + ser * (n - 1);
    assert!(
        last >= paced,
        "{n} datagrams of {PAYLOAD} bytes at 10 Mbit/s arrived within {last:?}, faster than {paced:?}"
    );
    let dropped_before = dropped(&link);

    // A burst five times the queue: what does not fit is dropped and counted;
    // what arrives is still in order.
    let n = 5 * (QUEUE / (PAYLOAD + 28)) as u32;
    let got = burst(&tx, &rx, n);
    let numbers: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order: {numbers:?}");
    assert!(got.len() < n as usize, "a burst of {n} through a {QUEUE}-byte queue lost nothing");
    let lost = n as u64 - got.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped(&link) - dropped_before < lost && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let counted = dropped(&link) - dropped_before;
    assert!(counted >= lost, "{lost} datagrams lost but only {counted} drops counted");
}
