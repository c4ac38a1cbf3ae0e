//! The soak's well-behaved clients: replayed Bazel and Go builds that run
//! until the deadline against a server at its size limit.
//! - Bazel, a new action: GetActionResult (must miss) → FindMissingBlobs of
//!   the outputs, stdout and Action → upload the missing (BatchUpdateBlobs when
//!   small, ByteStream for 1 MiB..`--soak-stream-max` outputs) →
//!   UpdateActionResult. A re-run of an earlier action: GetActionResult; on a
//!   hit, download and verify every output; on a miss (evicted) run it again.
//! - Go, as `cairn gocacheprog` maps it (see [`crate::gocache::mapping`]): a
//!   get (GetActionResult of the prefixed key), and a put (FindMissingBlobs,
//!   upload, UpdateActionResult naming the output); later gets hit and download.
//!
//! A miss is never an error. A blob the server promised (reported present by
//! FindMissingBlobs, or named by an ActionCache hit) is read back at once; if
//! it is gone although the promise is younger than `--min-age`, that is
//! "lost after promise", counted apart from the other errors. Reads that start
//! later than `--min-age` after the promise and miss are only counted ("late").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::data::{self, BigBlobs, Rng};
use super::report::Samples;
use crate::client::{Client, ClientError, BATCH_BLOB_MAX};
use crate::digest::{Digest, DigestFunction};
use crate::gocache::mapping;
use crate::gocache::protocol::ActionId;
use crate::proto::reapi;

/// Completed actions kept for re-runs (a team's recent builds), per kind.
const POOL: usize = 4096;
/// Largest Go output: Go's p99 is 3.8 MB; bigger ones would only add memory.
const GO_OUTPUT_MAX: usize = 4 << 20;
/// Bound on one client operation, so a stalled server ends the soak with
/// errors instead of hanging it (generous: a 1 GiB stream on a busy machine).
const OP_TIMEOUT: Duration = Duration::from_secs(900);

/// What the well-behaved clients do, from the soak's flags.
#[derive(Clone)]
pub struct Plan {
    pub clients: usize,
    pub deadline: Instant,
    pub duration: Duration,
    pub min_age: Duration,
    pub stream_share: f64,
    pub stream_min: u64,
    pub stream_max: u64,
    pub go_share: f64,
    pub huge: u64,
    pub huge_size: u64,
    pub seed: u64,
}

/// A blob, as the means to regenerate it: memory stays flat however many
/// actions the pools remember.
#[derive(Clone, Copy)]
enum Out {
    /// `len` bytes of `data::bytes(seed, len)`.
    Small { seed: u64, len: usize, digest: Digest },
    /// Blob `k` of the shared [`BigBlobs`], streamed.
    Big { k: u64, digest: Digest },
}

impl Out {
    fn digest(&self) -> Digest {
        match self {
            Out::Small { digest, .. } | Out::Big { digest, .. } => *digest,
        }
    }

    fn small(seed: u64, len: usize) -> Out {
        Out::Small { seed, len, digest: DigestFunction::Sha256.digest_of(&data::bytes(seed, len)) }
    }
}

/// One Bazel action: its key is the digest of its Action blob.
struct Action {
    action: Out,
    outputs: Vec<Out>,
    stdout: Option<Out>,
}

/// One Go cache entry: the prefixed ActionCache key and the output.
#[derive(Clone, Copy)]
struct GoEntry {
    key: Digest,
    output: Out,
}

/// Why an operation did not succeed.
enum Fail {
    /// A promised blob was gone within `--min-age` of the promise.
    Lost(String),
    /// A promised blob was gone, but the read started after `--min-age`.
    Late,
    /// Anything else: (gRPC code or kind, message).
    Error(String, String),
}

fn fail(e: ClientError) -> Fail {
    let code = match &e {
        ClientError::Rpc { status, .. } => format!("{:?}", status.code()),
        ClientError::Corrupt { .. } => "corrupt data".into(),
        ClientError::Connect { .. } | ClientError::BadAddress(_) | ClientError::Tls(_) => "connect".into(),
        ClientError::Io { .. } => "client I/O".into(),
    };
    Fail::Error(code, e.to_string())
}

fn wrong(msg: String) -> Fail {
    Fail::Error("wrong answer".into(), msg)
}

/// The kinds of operation, each with its own latency row.
#[derive(Clone, Copy)]
enum Kind {
    BazelNew,
    BazelRerun,
    GoPut,
    GoGet,
    Huge,
}

/// What the well-behaved clients saw.
#[derive(Default)]
pub struct Tally {
    pub bazel_new: Samples,
    pub bazel_rerun: Samples,
    pub go_put: Samples,
    pub go_get: Samples,
    pub huge: Samples,
    /// Re-runs that missed because the entry was evicted (not an error).
    pub evicted_misses: u64,
    pub lost: u64,
    pub lost_first: Option<String>,
    pub late: u64,
    /// Errors by gRPC code (or kind).
    pub codes: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, kind: Kind, took: Duration, r: Result<u64, Fail>) {
        let outcome = match r {
            Ok(b) => Ok(b),
            Err(Fail::Lost(m)) => {
                self.lost += 1;
                self.lost_first.get_or_insert(m);
                Ok(0)
            }
            Err(Fail::Late) => {
                self.late += 1;
                Ok(0)
            }
            Err(Fail::Error(code, m)) => {
                *self.codes.entry(code).or_default() += 1;
                Err(m)
            }
        };
        let samples = match kind {
            Kind::BazelNew => &mut self.bazel_new,
            Kind::BazelRerun => &mut self.bazel_rerun,
            Kind::GoPut => &mut self.go_put,
            Kind::GoGet => &mut self.go_get,
            Kind::Huge => &mut self.huge,
        };
        samples.record(took, outcome);
    }

    fn merge(&mut self, o: Tally) {
        self.bazel_new.merge(o.bazel_new);
        self.bazel_rerun.merge(o.bazel_rerun);
        self.go_put.merge(o.go_put);
        self.go_get.merge(o.go_get);
        self.huge.merge(o.huge);
        self.evicted_misses += o.evicted_misses;
        self.lost += o.lost;
        self.late += o.late;
        if self.lost_first.is_none() {
            self.lost_first = o.lost_first;
        }
        for (k, v) in o.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }
}

/// State shared by all well-behaved clients.
struct Shared {
    plan: Plan,
    big: BigBlobs,
    actions: Mutex<Vec<Arc<Action>>>,
    go: Mutex<Vec<GoEntry>>,
}

impl Shared {
    fn remember_action(&self, a: Arc<Action>, rng: &mut Rng) {
        let mut p = self.actions.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < POOL {
            p.push(a);
        } else {
            let i = rng.below(POOL as u64) as usize;
            p[i] = a;
        }
    }

    fn remember_go(&self, e: GoEntry, rng: &mut Rng) {
        let mut p = self.go.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < POOL {
            p.push(e);
        } else {
            let i = rng.below(POOL as u64) as usize;
            p[i] = e;
        }
    }

    /// A big output of `size` bytes (hashing it off the async workers).
    async fn big_out(self: &Arc<Self>, k: u64, size: u64) -> Out {
        let me = Arc::clone(self);
        let digest = tokio::task::spawn_blocking(move || me.big.digest(k, size))
            .await
            .unwrap_or_else(|_| DigestFunction::Sha256.empty());
        Out::Big { k, digest }
    }

    /// A fresh action: 1–3 small outputs, sometimes one streamed output.
    async fn new_action(self: &Arc<Self>, rng: &mut Rng) -> Action {
        let mut outputs: Vec<Out> =
            (0..1 + rng.below(3)).map(|_| Out::small(rng.next_u64(), data::small_size(rng))).collect();
        if rng.unit() < self.plan.stream_share {
            let (lo, hi) = ((self.plan.stream_min.max(1) as f64).ln(), (self.plan.stream_max.max(1) as f64).ln());
            let size = (lo + (hi - lo).max(0.0) * rng.unit()).exp() as u64;
            outputs.push(self.big_out(rng.next_u64(), size).await);
        }
        let stdout = (rng.below(10) < 3).then(|| Out::small(rng.next_u64(), 50 + rng.below(2000) as usize));
        Action { action: Out::small(rng.next_u64(), 150 + rng.below(200) as usize), outputs, stdout }
    }
}

/// The ActionResult naming an action's outputs.
fn result_of(a: &Action) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: a
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| reapi::OutputFile {
                path: format!("bazel-out/k8-fastbuild/bin/soak/out_{i}"),
                digest: Some(o.digest().to_proto()),
                ..Default::default()
            })
            .collect(),
        stdout_digest: a.stdout.map(|o| o.digest().to_proto()),
        ..Default::default()
    }
}

/// Reads back and verifies `outs`, promised by the server at `promised`.
async fn download(c: &Client, sh: &Shared, outs: &[Out], promised: Instant) -> Result<u64, Fail> {
    let gone = |d: &Digest, what: &str| {
        if promised.elapsed() < sh.plan.min_age {
            Fail::Lost(format!("{d} ({what}) unreadable {:?} after the promise", promised.elapsed()))
        } else {
            Fail::Late
        }
    };
    let small: Vec<Digest> =
        outs.iter().map(Out::digest).filter(|d| d.size <= BATCH_BLOB_MAX && !d.is_empty_blob()).collect();
    let mut got = 0u64;
    if !small.is_empty() {
        for (d, b) in small.iter().zip(c.batch_read(&small).await.map_err(fail)?) {
            got += b.ok_or_else(|| gone(d, "BatchReadBlobs"))?.len() as u64;
        }
    }
    for d in outs.iter().map(Out::digest).filter(|d| d.size > BATCH_BLOB_MAX) {
        got += c.read_blob(&d, true).await.map_err(fail)?.ok_or_else(|| gone(&d, "ByteStream.Read"))?;
    }
    Ok(got)
}

/// Uploads what the server lacks of `outs`; reads back what it says it has.
async fn upload_missing(c: &Client, sh: &Shared, outs: &[Out]) -> Result<u64, Fail> {
    let digests: Vec<Digest> = outs.iter().map(Out::digest).collect();
    let asked = Instant::now();
    let missing = c.find_missing(&digests).await.map_err(fail)?;
    let present: Vec<Out> = outs.iter().filter(|o| !missing.contains(&o.digest())).copied().collect();
    let mut moved = download(c, sh, &present, asked).await?;
    let mut batch = Vec::new();
    for d in &missing {
        let Some(o) = outs.iter().find(|o| o.digest() == *d) else {
            return Err(wrong(format!("FindMissingBlobs reported {d}, which was not asked")));
        };
        match *o {
            Out::Small { seed, len, digest } if len as u64 <= BATCH_BLOB_MAX => {
                batch.push((digest, data::bytes(seed, len)));
            }
            Out::Small { seed, len, digest } => c.write_bytes(&digest, data::bytes(seed, len)).await.map_err(fail)?,
            Out::Big { k, digest } => c.write_chunks(&digest, sh.big.chunks(k, digest.size)).await.map_err(fail)?,
        }
        moved += d.size;
    }
    if !batch.is_empty() {
        c.batch_upload(&batch).await.map_err(fail)?;
    }
    Ok(moved)
}

/// Runs an action and records its result: what Bazel does after a miss.
async fn execute(c: &Client, sh: &Shared, a: &Action) -> Result<u64, Fail> {
    let mut outs: Vec<Out> = a.outputs.clone();
    outs.extend(a.stdout);
    outs.push(a.action);
    let moved = upload_missing(c, sh, &outs).await?;
    c.update_action_result(&a.action.digest(), result_of(a)).await.map_err(fail)?;
    Ok(moved)
}

async fn bazel_new(c: &Client, sh: &Arc<Shared>, rng: &mut Rng, a: Action) -> Result<u64, Fail> {
    if c.get_action_result(&a.action.digest()).await.map_err(fail)?.is_some() {
        return Err(wrong(format!("never-run action {} hit", a.action.digest())));
    }
    let moved = execute(c, sh, &a).await?;
    sh.remember_action(Arc::new(a), rng);
    Ok(moved)
}

async fn bazel_rerun(c: &Client, sh: &Shared, a: &Action, evicted: &mut u64) -> Result<u64, Fail> {
    let asked = Instant::now();
    let Some(r) = c.get_action_result(&a.action.digest()).await.map_err(fail)? else {
        *evicted += 1;
        return execute(c, sh, a).await;
    };
    let names = |r: &reapi::ActionResult| -> Vec<Option<reapi::Digest>> {
        r.output_files.iter().map(|f| f.digest.clone()).chain([r.stdout_digest.clone()]).collect()
    };
    if names(&r) != names(&result_of(a)) {
        return Err(wrong(format!("action {} came back with another result", a.action.digest())));
    }
    let mut outs = a.outputs.clone();
    outs.extend(a.stdout);
    download(c, sh, &outs, asked).await
}

/// A Go output: 26% empty, else log-normal around 1.6 KB (as in `replay`).
fn go_output(rng: &mut Rng) -> Out {
    if rng.below(100) < 26 {
        return Out::small(0, 0);
    }
    let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Out::small(rng.next_u64(), (1600.0 * (3.34 * z).exp()).clamp(1.0, GO_OUTPUT_MAX as f64) as usize)
}

/// A go put as `cairn gocacheprog` makes it (after its get missed).
async fn go_put(c: &Client, sh: &Shared, e: GoEntry) -> Result<u64, Fail> {
    let d = e.output.digest();
    let moved = if d.is_empty_blob() { 0 } else { upload_missing(c, sh, &[e.output]).await? };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_nanos() as i64);
    c.update_action_result(&e.key, mapping::action_result(mapping::OUTPUT_PATH, &d, now)).await.map_err(fail)?;
    Ok(moved)
}

async fn go_new(c: &Client, sh: &Shared, rng: &mut Rng) -> Result<u64, Fail> {
    let mut id = [0u8; 32];
    rng.fill(&mut id);
    let e = GoEntry { key: mapping::action_key(&ActionId(id)), output: go_output(rng) };
    if c.get_action_result(&e.key).await.map_err(fail)?.is_some() {
        return Err(wrong(format!("never-put go action {} hit", e.key)));
    }
    let moved = go_put(c, sh, e).await?;
    sh.remember_go(e, rng);
    Ok(moved)
}

async fn go_get(c: &Client, sh: &Shared, e: GoEntry, evicted: &mut u64) -> Result<u64, Fail> {
    let asked = Instant::now();
    let Some(r) = c.get_action_result(&e.key).await.map_err(fail)? else {
        *evicted += 1;
        return go_put(c, sh, e).await;
    };
    let d = e.output.digest();
    let named = r.output_files.first().and_then(|f| f.digest.as_ref()).map(|p| (p.hash.clone(), p.size_bytes));
    if named != Some((d.hex(), d.size as i64)) {
        return Err(wrong(format!("go entry {} names another output", e.key)));
    }
    download(c, sh, &[e.output], asked).await
}

/// One client's loop until the deadline.
async fn client_loop(c: Client, sh: Arc<Shared>, seed: u64) -> Tally {
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    while Instant::now() < sh.plan.deadline {
        let go = rng.unit() < sh.plan.go_share;
        let rerun = rng.below(2) == 0;
        let started = Instant::now();
        let mut evicted = 0;
        let (kind, r) = if go {
            match rerun.then(|| pick(&sh.go, &mut rng)).flatten() {
                Some(e) => (Kind::GoGet, timed(go_get(&c, &sh, e, &mut evicted)).await),
                None => (Kind::GoPut, timed(go_new(&c, &sh, &mut rng)).await),
            }
        } else {
            match rerun.then(|| pick(&sh.actions, &mut rng)).flatten() {
                Some(a) => (Kind::BazelRerun, timed(bazel_rerun(&c, &sh, &a, &mut evicted)).await),
                None => {
                    let a = sh.new_action(&mut rng).await;
                    (Kind::BazelNew, timed(bazel_new(&c, &sh, &mut rng, a)).await)
                }
            }
        };
        t.evicted_misses += evicted;
        t.record(kind, started.elapsed(), r);
    }
    t
}

/// The few huge streams: evenly spread over the soak, one at a time, each
/// uploaded as an action's output, then fetched back as a hit.
async fn huge_loop(c: Client, sh: Arc<Shared>, start: Instant) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng::new(sh.plan.seed ^ 0x4855_4745);
    for j in 0..sh.plan.huge {
        let at = start + sh.plan.duration.mul_f64((j + 1) as f64 / (sh.plan.huge + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        if Instant::now() >= sh.plan.deadline {
            break;
        }
        let big = sh.big_out(rng.next_u64(), sh.plan.huge_size).await;
        let a = Action { action: Out::small(rng.next_u64(), 200), outputs: vec![big], stdout: None };
        let started = Instant::now();
        let r = timed(async {
            let up = bazel_new_kept(&c, &sh, &a).await?;
            let mut evicted = 0;
            let down = bazel_rerun(&c, &sh, &a, &mut evicted).await?;
            if evicted > 0 {
                return Err(wrong("huge action missed right after it was stored".into()));
            }
            Ok(up + down)
        })
        .await;
        t.record(Kind::Huge, started.elapsed(), r);
    }
    t
}

/// A new action that is not put in the re-run pool (huge ones stay rare).
async fn bazel_new_kept(c: &Client, sh: &Shared, a: &Action) -> Result<u64, Fail> {
    if c.get_action_result(&a.action.digest()).await.map_err(fail)?.is_some() {
        return Err(wrong(format!("never-run action {} hit", a.action.digest())));
    }
    execute(c, sh, a).await
}

fn pick<T: Clone>(pool: &Mutex<Vec<T>>, rng: &mut Rng) -> Option<T> {
    let p = pool.lock().unwrap_or_else(|e| e.into_inner());
    (!p.is_empty()).then(|| p[rng.below(p.len() as u64) as usize].clone())
}

async fn timed<F: std::future::Future<Output = Result<u64, Fail>>>(f: F) -> Result<u64, Fail> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Error("client timeout".into(), format!("no answer within {OP_TIMEOUT:?}"))),
    }
}

/// Runs the well-behaved clients over `clients` (connections, shared round-robin).
pub async fn run(clients: &[Client], plan: Plan) -> Tally {
    let start = Instant::now();
    let sh = Arc::new(Shared {
        big: BigBlobs::new(plan.seed, 8 << 20),
        plan: plan.clone(),
        actions: Mutex::new(Vec::new()),
        go: Mutex::new(Vec::new()),
    });
    let mut tasks: Vec<_> = (0..plan.clients.max(1))
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            tokio::spawn(client_loop(c, Arc::clone(&sh), plan.seed.wrapping_add(i as u64 * 7919)))
        })
        .collect();
    tasks.push(tokio::spawn(huge_loop(clients[0].clone(), Arc::clone(&sh), start)));
    let mut all = Tally::default();
    for t in tasks {
        match t.await {
            Ok(t) => all.merge(t),
            Err(e) => {
                *all.codes.entry("bench task panicked".into()).or_default() += 1;
                all.bazel_new.record(Duration::ZERO, Err(format!("bench task panicked: {e}")));
            }
        }
    }
    all
}
