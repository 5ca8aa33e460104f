//! Faults on real processes, judged by a checker (issue 24, CONTRACT.md §10).
//!
//! Three `zest serve` members and etcd as three `etcd` processes, all on
//! loopback. Every link of a member — to each etcd endpoint, and the one its
//! peers reach it by (`advertise`) — goes through a fault proxy the test
//! controls (`support/proxy.rs`). Schedules, drawn at random from a seed, run
//! a stream of cluster reloads (each from a random member, each naming a new
//! build of the clock, so every build is told apart by its vsn) while one
//! fault strikes:
//!
//! - `etcd_leader_kill`, `etcd_follower_kill`: SIGKILL of an etcd member while
//!   a reload runs (the instant the lock is taken), started again at the heal;
//! - `cut_etcd`, `cut_peers`, `cut_both`: one member's links cut (connections
//!   closed), held (nothing flows, nothing closes) or deaf (requests arrive,
//!   answers do not), before the reload, while
//!   its coordinator waits between prepare and commit, or right after the etcd
//!   commit; healed 1–5 s after it struck, whether or not the reload
//!   answered, with another reload sent while it lasts;
//! - `slow`: 50–250 ms of latency on every link of one member;
//! - `pause_coordinator`: SIGSTOP of the coordinator the moment etcd shows its
//!   commit (before it told the members), for `prepare_timeout` + 1 s;
//! - `pause_member`: SIGSTOP of a target while its coordinator waits between
//!   prepare and commit, past its lease (`lease_ttl` + 1.5 s).
//!
//! The moments come from etcd (a watch of the cluster's keys from the test)
//! and from the documented test hook `ZEST_CLUSTER_PAUSE`, which holds every
//! coordinator 300 ms before and after its commit so that "between prepare
//! and commit" and "after the commit, before the members heard" are windows a
//! fault can hit.
//!
//! The checker samples every member's served clock build (`system.status`)
//! and calls it (`front.time`, which calls the clock) every 50 ms, and
//! watches what etcd commits. It asserts:
//! 1. no member ever serves a build no committed reload named (starting
//!    files aside);
//! 2. a reload reported committed is the one etcd committed at that revision;
//!    one reported aborted was not committed and was never served anywhere;
//! 3. a committed reload names every member: a target in its results, or
//!    `skipped` (nobody silently left out);
//! 4. a member a result reports `ok` serves that build right after the answer;
//! 5. after every heal, every member serves the last committed build within
//!    10 s;
//! 6. no call fails on a member that stayed reachable (a SIGSTOPped member's
//!    calls are excused while it is stopped and 1 s after).
//!
//! `ZEST_CHAOS_SECONDS` sets how long schedules keep being drawn (default 60:
//! the smoke in the test command); `ZEST_CHAOS_SEED` the seed.
//! `scripts/chaos.sh MINUTES` runs it long on a release build.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::proxy::Link;
use support::{Etcd, Fleet, ADMIN, LEASE_TTL, PREPARE_TIMEOUT};

const IDS: [&str; 3] = ["a", "b", "c"];
/// The vsn every member's own files start with.
const STARTING: &str = "1.0.0";
/// The test hook: every coordinator waits this long before and after its commit.
const HOOK: &str = "before-commit:300,after-commit:300";
/// How long after a heal every member must serve the last commit.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// A small xorshift generator: schedules are reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

// ---------------------------------------------------------------------------
// What etcd says: a watch of the cluster's keys from the test itself.

#[derive(Default)]
struct Seen {
    /// Lock keys created, and commit records written, so far.
    locks: u64,
    commits: u64,
    /// Every committed clock build: commit revision → vsn.
    clock: BTreeMap<i64, String>,
}

struct Observer {
    seen: Arc<(Mutex<Seen>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// A coordinator took the lock (its prepare follows).
    Lock,
    /// A commit record was written.
    Commit,
}

impl Observer {
    fn start(endpoints: Vec<String>, name: String) -> Observer {
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let store = zest_control::cluster::etcd::Store::connect(&endpoints, &name).await.unwrap();
                // From the very first revision: nothing committed is missed.
                let mut from = 1;
                while !stopping.load(Ordering::SeqCst) {
                    let mut watch = match store.watch(from).await {
                        Ok(watch) => watch,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    loop {
                        let next = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
                        if stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        let changes = match next {
                            Err(_) => continue,
                            Ok(Err(_)) => break,
                            Ok(Ok(changes)) => changes,
                        };
                        let (lock, wake) = &*shared;
                        let mut seen = lock.lock().unwrap();
                        for change in changes {
                            from = from.max(change.mod_revision + 1);
                            if change.deleted {
                                continue;
                            }
                            if change.key == "lock" {
                                seen.locks += 1;
                            } else if change.key.starts_with("commits/") {
                                seen.commits += 1;
                            } else if change.key == "desired/base/module/clock" {
                                let value: Value = serde_json::from_slice(&change.value).unwrap_or_default();
                                let vsn = value["vsn"].as_str().unwrap_or("?").to_string();
                                seen.clock.insert(change.mod_revision, vsn);
                            }
                        }
                        wake.notify_all();
                    }
                }
            });
        });
        Observer { seen, stop, thread: Some(thread) }
    }

    fn count(&self, moment: Moment) -> u64 {
        let seen = self.seen.0.lock().unwrap();
        match moment {
            Moment::Lock => seen.locks,
            Moment::Commit => seen.commits,
        }
    }

    /// Waits until `moment` happens again after `count` of them (true), or `within` passes.
    fn wait(&self, moment: Moment, count: u64, within: Duration) -> bool {
        let (lock, wake) = &*self.seen;
        let deadline = Instant::now() + within;
        let mut seen = lock.lock().unwrap();
        loop {
            let now = match moment {
                Moment::Lock => seen.locks,
                Moment::Commit => seen.commits,
            };
            if now > count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = wake.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// The committed clock builds: revision → vsn.
    fn truth(&self) -> BTreeMap<i64, String> {
        self.seen.0.lock().unwrap().clock.clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------
// What members serve: a sampler per member.

struct Sample {
    member: String,
    started: Instant,
    vsn: String,
}

struct Call {
    member: String,
    started: Instant,
    ended: Instant,
    problem: Option<String>,
}

#[derive(Default)]
struct Samples {
    served: Vec<Sample>,
    calls: Vec<Call>,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into()
}

fn post(agent: &ureq::Agent, url: &str, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut response = agent
        .post(url)
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send(body.to_string())
        .map_err(|err| err.to_string())?;
    let text = response.body_mut().read_to_string().map_err(|err| err.to_string())?;
    serde_json::from_str(&text).map_err(|err| format!("{err}: {text}"))
}

fn clock_vsn(status: &Value) -> Option<String> {
    let modules = status["modules"].as_array()?;
    let clock = modules.iter().find(|m| m["name"] == "clock")?;
    clock["current"]["vsn"].as_str().map(str::to_string)
}

fn sample(members: Vec<(String, String)>, samples: Arc<Mutex<Samples>>, stop: Arc<AtomicBool>) {
    let agent = agent(Duration::from_secs(3));
    while !stop.load(Ordering::Relaxed) {
        for (member, url) in &members {
            let started = Instant::now();
            if let Ok(answer) = post(&agent, url, "system.status", json!(null)) {
                if let Some(vsn) = clock_vsn(&answer["result"]) {
                    samples.lock().unwrap().served.push(Sample { member: member.clone(), started, vsn });
                }
            }
            let started = Instant::now();
            let answer = post(&agent, url, "module.call", json!({"module": "front", "function": "time"}));
            let problem = match answer {
                Ok(value) if value["result"]["now_ms"].is_i64() => None,
                Ok(value) => Some(value.to_string()),
                Err(err) => Some(err),
            };
            let call = Call { member: member.clone(), started, ended: Instant::now(), problem };
            samples.lock().unwrap().calls.push(call);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sampler's thread, stopped on demand or when dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------
// Reloads, and how they were answered.

#[derive(Debug)]
enum Outcome {
    Committed {
        revision: i64,
        nodes: Vec<String>,
        skipped: Vec<String>,
        ok: Vec<String>,
    },
    Aborted {
        reasons: Vec<String>,
    },
    /// A JSON-RPC error (CONFLICT, …).
    Refused(String),
    NoAnswer(String),
}

#[derive(Debug)]
struct Attempt {
    vsn: String,
    coordinator: String,
    answered: Instant,
    outcome: Outcome,
    schedule: usize,
}

fn strings(value: &Value, field: &str) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|item| item[field].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn reload(fleet: &Fleet, coordinator: &str, vsn: &str, schedule: usize) -> Attempt {
    fleet.set_clock(coordinator, vsn);
    let params = json!({"scope": "module", "module": "clock", "lock_timeout_ms": 5000});
    let answer = post(&agent(Duration::from_secs(60)), &fleet.member(coordinator).url, "system.reload", params);
    let outcome = match answer {
        Err(err) => Outcome::NoAnswer(err),
        Ok(response) => match response.get("result") {
            None => Outcome::Refused(response["error"]["data"]["code"].as_str().unwrap_or("?").to_string()),
            Some(result) => {
                let cluster = &result["metadata"]["cluster"];
                if cluster["phase"] == "committed" {
                    let ok = result["results"]
                        .as_array()
                        .map(|children| {
                            children
                                .iter()
                                .filter(|c| c["status"] == "ok" && c["reloaded"] == json!(["clock"]))
                                .filter_map(|c| c["target"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    Outcome::Committed {
                        revision: cluster["revision"].as_i64().unwrap_or(-1),
                        nodes: cluster["nodes"]
                            .as_array()
                            .map(|n| n.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                            .unwrap_or_default(),
                        skipped: strings(&result["skipped"], "target"),
                        ok,
                    }
                } else {
                    let mut reasons = strings(&result["errors"], "reason");
                    reasons.sort();
                    reasons.dedup();
                    Outcome::Aborted { reasons }
                }
            }
        },
    };
    Attempt { vsn: vsn.to_string(), coordinator: coordinator.to_string(), answered: Instant::now(), outcome, schedule }
}

// ---------------------------------------------------------------------------
// Schedules.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    EtcdLeaderKill,
    EtcdFollowerKill,
    CutEtcd,
    CutPeers,
    CutBoth,
    Slow,
    PauseCoordinator,
    PauseMember,
}

const KINDS: [Kind; 8] = [
    Kind::CutEtcd,
    Kind::PauseMember,
    Kind::EtcdLeaderKill,
    Kind::CutPeers,
    Kind::PauseCoordinator,
    Kind::CutBoth,
    Kind::Slow,
    Kind::EtcdFollowerKill,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::EtcdLeaderKill => "etcd_leader_kill",
            Kind::EtcdFollowerKill => "etcd_follower_kill",
            Kind::CutEtcd => "cut_etcd",
            Kind::CutPeers => "cut_peers",
            Kind::CutBoth => "cut_both",
            Kind::Slow => "slow",
            Kind::PauseCoordinator => "pause_coordinator",
            Kind::PauseMember => "pause_member",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the reload is sent.
    Before,
    /// While the coordinator waits between prepare and commit.
    Prepared,
    /// Right after the etcd commit, before the members heard.
    Committed,
}

/// Windows in which a member was SIGSTOPped (its calls are excused).
type Paused = Mutex<Vec<(String, Instant, Instant)>>;

struct Chaos {
    fleet: Fleet,
    observer: Observer,
    samples: Arc<Mutex<Samples>>,
    attempts: Vec<Attempt>,
    paused: Paused,
    heals: Vec<(usize, Kind, Instant, Duration)>,
    violations: Vec<String>,
    next_vsn: u32,
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started; no memory is involved.
    unsafe { libc::kill(pid, signal) };
}

impl Chaos {
    /// A three-member etcd, three proxied members running the test hook, the
    /// etcd observer and the sampler.
    fn start() -> (Chaos, Sampler) {
        let etcd = Etcd::start_cluster(3);
        let fleet = Fleet::start_proxied(
            etcd,
            &IDS,
            support::demo_app(),
            PREPARE_TIMEOUT,
            LEASE_TTL,
            &[("ZEST_CLUSTER_PAUSE", HOOK)],
        );
        let observer = Observer::start(fleet.etcd.endpoints(), fleet.name.clone());
        let samples = Arc::new(Mutex::new(Samples::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let members: Vec<(String, String)> =
            IDS.iter().map(|id| (id.to_string(), fleet.member(id).url.clone())).collect();
        let thread = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            std::thread::spawn(move || sample(members, samples, stop))
        };
        let chaos = Chaos {
            fleet,
            observer,
            samples,
            attempts: Vec::new(),
            paused: Mutex::new(Vec::new()),
            heals: Vec::new(),
            violations: Vec::new(),
            next_vsn: 0,
        };
        (chaos, Sampler { stop, thread: Some(thread) })
    }

    fn vsn(&mut self) -> String {
        self.next_vsn += 1;
        format!("c{:04}", self.next_vsn)
    }

    fn reload(&mut self, rng: &mut Rng, schedule: usize) {
        let coordinator = rng.pick(&IDS).to_string();
        self.reload_on(&coordinator, schedule);
    }

    fn reload_on(&mut self, coordinator: &str, schedule: usize) {
        let vsn = self.vsn();
        let attempt = reload(&self.fleet, coordinator, &vsn, schedule);
        self.record(attempt);
    }

    /// One schedule: a few reloads with `kind` striking during one of them,
    /// then the heal; returns a line describing it.
    fn run(&mut self, kind: Kind, rng: &mut Rng, schedule: usize) -> String {
        let victim = rng.pick(&IDS).to_string();
        let phase = *rng.pick(&[Phase::Before, Phase::Prepared, Phase::Committed]);
        let hold = rng.pick(&[Link::Cut, Link::Hold, Link::Deaf]).to_owned();
        let lasting = rng.millis(1000, 5000);
        self.reload(rng, schedule);
        let described = match kind {
            Kind::EtcdLeaderKill | Kind::EtcdFollowerKill => {
                let leader = support::eventually(Duration::from_secs(10), || self.fleet.etcd.leader())
                    .expect("etcd has a leader");
                let index = if kind == Kind::EtcdLeaderKill {
                    leader
                } else {
                    (0..self.fleet.etcd.size()).find(|&i| i != leader).unwrap()
                };
                let pid = self.fleet.etcd.pid_of(index).expect("running");
                let coordinator = rng.pick(&IDS).to_string();
                let vsn = self.vsn();
                let attempt = self
                    .during(Moment::Lock, Duration::ZERO, &coordinator, &vsn, schedule, || signal(pid, libc::SIGKILL));
                self.record(attempt);
                self.fleet.etcd.kill_member(index);
                for _ in 0..3 {
                    self.reload(rng, schedule);
                }
                self.fleet.etcd.resume();
                format!("{kind:?}: etcd member {index} killed as a reload on {coordinator} took the lock")
            }
            Kind::CutEtcd | Kind::CutPeers | Kind::CutBoth => {
                let coordinator = rng.pick(&IDS).to_string();
                let apply = |fleet: &Fleet, link: Link| {
                    let links = fleet.links(&victim);
                    match kind {
                        Kind::CutEtcd => links.set_etcd(link),
                        Kind::CutPeers => links.peers.set(link),
                        _ => links.set_all(link),
                    }
                };
                let second = rng.pick(&IDS).to_string();
                let vsns = (self.vsn(), self.vsn());
                let fleet = &self.fleet;
                let (on, off) = (|| apply(fleet, hold), || apply(fleet, Link::Pass));
                let attempts = self.partition(phase, (&coordinator, &second), &vsns, lasting, schedule, on, off);
                for attempt in attempts {
                    self.record(attempt);
                }
                format!("{kind:?} ({hold:?}) of {victim} at {phase:?} of a reload on {coordinator}, {lasting:?}")
            }
            Kind::Slow => {
                let latency = rng.millis(50, 250);
                self.fleet.links(&victim).set_all(Link::Slow(latency));
                for _ in 0..3 {
                    self.reload(rng, schedule);
                }
                self.fleet.links(&victim).set_all(Link::Pass);
                format!("Slow: {latency:?} on every link of {victim}")
            }
            Kind::PauseCoordinator => {
                let pid = self.fleet.member(&victim).pid();
                let stopped = PREPARE_TIMEOUT + Duration::from_secs(1);
                let victim_id = victim.clone();
                let vsn = self.vsn();
                let paused = &self.paused;
                let attempt =
                    self.strike(Phase::Committed, &victim, &vsn, schedule, || pause(pid, &victim_id, stopped, paused));
                self.record(attempt);
                format!("PauseCoordinator: {victim} SIGSTOPped {stopped:?} as etcd showed its commit")
            }
            Kind::PauseMember => {
                let coordinator = loop {
                    let id = rng.pick(&IDS).to_string();
                    if id != victim {
                        break id;
                    }
                };
                let pid = self.fleet.member(&victim).pid();
                let stopped = LEASE_TTL + Duration::from_millis(1500);
                let victim_id = victim.clone();
                let vsn = self.vsn();
                let paused = &self.paused;
                let attempt = self
                    .strike(Phase::Prepared, &coordinator, &vsn, schedule, || pause(pid, &victim_id, stopped, paused));
                self.record(attempt);
                format!(
                    "PauseMember: {victim} SIGSTOPped {stopped:?} between prepare and commit of {coordinator}'s reload"
                )
            }
        };
        let healed = Instant::now();
        let took = self.converge(healed);
        self.heals.push((schedule, kind, healed, took));
        self.reload(rng, schedule);
        format!("{described}; converged {took:?} after the heal")
    }

    /// Runs one reload on `coordinator`, with `fault` applied at `phase` of it.
    fn strike(
        &self,
        phase: Phase,
        coordinator: &str,
        vsn: &str,
        schedule: usize,
        fault: impl FnOnce() + Send,
    ) -> Attempt {
        match phase {
            Phase::Before => {
                fault();
                reload(&self.fleet, coordinator, vsn, schedule)
            }
            // The coordinator prepares right after taking the lock, then waits
            // 300 ms (the hook) before committing: 150 ms in is inside it.
            Phase::Prepared => self.during(Moment::Lock, Duration::from_millis(150), coordinator, vsn, schedule, fault),
            Phase::Committed => self.during(Moment::Commit, Duration::ZERO, coordinator, vsn, schedule, fault),
        }
    }

    /// A reload on `coordinator` with `on` applied at `phase` of it and
    /// `off` (the heal) `lasting` later, whether or not the reload answered;
    /// then, while the fault lasts, another reload on `second`.
    #[allow(clippy::too_many_arguments)]
    fn partition(
        &self,
        phase: Phase,
        (coordinator, second): (&str, &str),
        (vsn, next): &(String, String),
        lasting: Duration,
        schedule: usize,
        on: impl Fn() + Sync,
        off: impl Fn() + Sync,
    ) -> Vec<Attempt> {
        let moment = match phase {
            Phase::Before => None,
            Phase::Prepared => Some((Moment::Lock, Duration::from_millis(150))),
            Phase::Committed => Some((Moment::Commit, Duration::ZERO)),
        };
        let count = moment.map(|(moment, _)| self.observer.count(moment));
        if moment.is_none() {
            on();
        }
        let healed = AtomicBool::new(false);
        let (observer, fleet, healed, on, off) = (&self.observer, &self.fleet, &healed, &on, &off);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                if let (Some((moment, delay)), Some(count)) = (moment, count) {
                    if !observer.wait(moment, count, Duration::from_secs(15)) {
                        healed.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(delay);
                    on();
                }
                std::thread::sleep(lasting);
                off();
                healed.store(true, Ordering::SeqCst);
            });
            let mut attempts = vec![reload(fleet, coordinator, vsn, schedule)];
            if !healed.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                attempts.push(reload(fleet, second, next, schedule));
            }
            attempts
        })
    }

    /// Runs one reload on `coordinator`; `fault` runs `delay` after etcd
    /// shows `moment` of it.
    fn during(
        &self,
        moment: Moment,
        delay: Duration,
        coordinator: &str,
        vsn: &str,
        schedule: usize,
        fault: impl FnOnce() + Send,
    ) -> Attempt {
        let count = self.observer.count(moment);
        let observer = &self.observer;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                if observer.wait(moment, count, Duration::from_secs(15)) {
                    std::thread::sleep(delay);
                    fault();
                }
            });
            reload(&self.fleet, coordinator, vsn, schedule)
        })
    }

    fn record(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        // Room for every sampler to see what the answer said.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Waits until every member serves the last committed build; how long
    /// that took after `healed` (a violation past [`CONVERGE_WITHIN`]).
    fn converge(&mut self, healed: Instant) -> Duration {
        let agent = agent(Duration::from_secs(2));
        let urls: Vec<(String, String)> =
            IDS.iter().map(|id| (id.to_string(), self.fleet.member(id).url.clone())).collect();
        loop {
            let clock = self.observer.truth();
            let expected = clock.values().last().cloned().unwrap_or_else(|| STARTING.to_string());
            let serving: Vec<(String, Option<String>)> = urls
                .iter()
                .map(|(id, url)| {
                    let vsn =
                        post(&agent, url, "system.status", json!(null)).ok().and_then(|s| clock_vsn(&s["result"]));
                    (id.clone(), vsn)
                })
                .collect();
            if serving.iter().all(|(_, vsn)| vsn.as_deref() == Some(expected.as_str())) {
                let took = healed.elapsed();
                if took > CONVERGE_WITHIN {
                    self.violations.push(format!("converged {took:?} after a heal (more than 10 s) on {expected}"));
                }
                return took;
            }
            if healed.elapsed() > CONVERGE_WITHIN + Duration::from_secs(10) {
                let clusters: Vec<Value> = urls
                    .iter()
                    .map(|(_, url)| {
                        post(&agent, url, "system.status", json!(null))
                            .map(|s| s["result"]["cluster"].clone())
                            .unwrap_or_default()
                    })
                    .collect();
                self.violations.push(format!(
                    "not converged 20 s after a heal: etcd's last commit is {expected} (revisions {clock:?}), members serve {serving:?}; their cluster status: {clusters:?}"
                ));
                return healed.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The checker's rules over everything recorded.
    fn check(&mut self) {
        let clock = self.observer.truth();
        let committed: HashMap<&String, i64> = clock.iter().map(|(revision, vsn)| (vsn, *revision)).collect();
        let samples = self.samples.lock().unwrap();
        let mut violations = Vec::new();
        // 1. Nothing served that no commit named.
        for sample in &samples.served {
            if sample.vsn != STARTING && !committed.contains_key(&sample.vsn) {
                violations.push(format!(
                    "{} served {}, which no committed reload named ({:?} into the run)",
                    sample.member,
                    sample.vsn,
                    sample.started.elapsed()
                ));
            }
        }
        let paused = self.paused.lock().unwrap();
        for (i, attempt) in self.attempts.iter().enumerate() {
            let next_sent = self.attempts.get(i + 1).map(|next| next.answered);
            match &attempt.outcome {
                Outcome::Committed { revision, nodes, skipped, ok } => {
                    // 2. What etcd committed at that revision.
                    if clock.get(revision) != Some(&attempt.vsn) {
                        violations.push(format!(
                            "{} (schedule {}) reported committed at revision {revision}, but etcd holds {:?} there",
                            attempt.vsn,
                            attempt.schedule,
                            clock.get(revision)
                        ));
                    }
                    // 3. Nobody silently left out.
                    for id in IDS {
                        if !nodes.iter().any(|n| n == id) && !skipped.iter().any(|n| n == id) {
                            violations.push(format!(
                                "{} (schedule {}, committed on {}) names {id} neither as a target nor as skipped: nodes {nodes:?}, skipped {skipped:?}",
                                attempt.vsn, attempt.schedule, attempt.coordinator
                            ));
                        }
                    }
                    // 4. A member reported ok serves the build right after.
                    for id in ok {
                        let after = samples.served.iter().find(|s| {
                            &s.member == id
                                && s.started > attempt.answered
                                && next_sent.is_none_or(|next| s.started < next)
                        });
                        if let Some(after) = after {
                            if after.vsn != attempt.vsn && !excused(&paused, id, after.started, after.started) {
                                violations.push(format!(
                                    "{} reported {id} ok, but {id} then served {}",
                                    attempt.vsn, after.vsn
                                ));
                            }
                        }
                    }
                }
                Outcome::Aborted { reasons } => {
                    // 2. Reported aborted: changed nothing anywhere.
                    if committed.contains_key(&attempt.vsn) {
                        violations.push(format!(
                            "{} (schedule {}) was reported aborted ({reasons:?}) but etcd committed it",
                            attempt.vsn, attempt.schedule
                        ));
                    }
                    if let Some(seen) = samples.served.iter().find(|s| s.vsn == attempt.vsn) {
                        violations.push(format!(
                            "{} was reported aborted ({reasons:?}) but {} served it",
                            attempt.vsn, seen.member
                        ));
                    }
                }
                Outcome::Refused(_) | Outcome::NoAnswer(_) => {}
            }
        }
        // 6. No failed call on a member that stayed reachable.
        for call in &samples.calls {
            if let Some(problem) = &call.problem {
                if !excused(&paused, &call.member, call.started, call.ended) {
                    violations.push(format!(
                        "a call on {} failed ({:?} into the run): {problem}",
                        call.member,
                        call.started.elapsed()
                    ));
                }
            }
        }
        self.violations.extend(violations);
    }
}

/// Whether `[from, to]` overlaps a window in which `member` was stopped (or
/// the second after it).
fn excused(paused: &[(String, Instant, Instant)], member: &str, from: Instant, to: Instant) -> bool {
    paused
        .iter()
        .any(|(id, stopped, resumed)| id == member && from <= *resumed + Duration::from_secs(1) && to >= *stopped)
}

/// SIGSTOPs `pid` for `stopped`, noting the window for `member`.
fn pause(pid: i32, member: &str, stopped: Duration, paused: &Paused) {
    let from = Instant::now();
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(stopped);
    signal(pid, libc::SIGCONT);
    paused.lock().unwrap().push((member.to_string(), from, Instant::now()));
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Found by the checker (seed 7): a coordinator whose commit landed in etcd
/// but whose etcd links then stalled never heard etcd's answer, found etcd
/// silent when it asked again, and reported the reload `aborted` — while the
/// members, reading etcd at their deadline, applied it. Now it asks etcd
/// until it answers, and reports what etcd committed. Here its etcd links
/// go deaf (requests arrive, answers do not) while it waits to commit.
#[test]
fn a_coordinator_whose_commit_answer_is_lost_reports_what_etcd_committed() {
    let _serial = one_at_a_time();
    let (mut chaos, sampler) = Chaos::start();
    for round in 0..2 {
        let vsn = chaos.vsn();
        let links = chaos.fleet.links("a");
        // Deaf longer than the commit call (2 s) and one more read (2 s).
        let attempt = chaos.strike(Phase::Prepared, "a", &vsn, round, || {
            links.set_etcd(Link::Deaf);
            std::thread::sleep(Duration::from_secs(6));
            links.set_etcd(Link::Pass);
        });
        assert!(
            matches!(attempt.outcome, Outcome::Committed { .. }),
            "round {round}: etcd committed {vsn}, and the coordinator must say so: {attempt:?}"
        );
        chaos.record(attempt);
        let took = chaos.converge(Instant::now());
        eprintln!("round {round}: every member served {vsn} {took:?} after the heal");
    }
    sampler.stop();
    chaos.check();
    assert!(chaos.violations.is_empty(), "{:#?}", chaos.violations);
}

#[test]
fn random_fault_schedules_on_real_processes_break_no_promise_of_the_cluster() {
    let seconds: u64 = std::env::var("ZEST_CHAOS_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let seed: u64 = std::env::var("ZEST_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    eprintln!("chaos: {seconds} s, seed {seed} (ZEST_CHAOS_SEED={seed} draws the same schedules)");
    let mut rng = Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);

    let _serial = one_at_a_time();
    let (mut chaos, sampler) = Chaos::start();
    let samples = Arc::clone(&chaos.samples);
    let started = Instant::now();
    let mut faults: BTreeMap<Kind, usize> = BTreeMap::new();
    // ZEST_CHAOS_KINDS=slow,cut_etcd,… draws only those kinds.
    let kinds: Vec<Kind> = match std::env::var("ZEST_CHAOS_KINDS") {
        Ok(names) => names
            .split(',')
            .map(|name| {
                *KINDS.iter().find(|k| k.name() == name.trim()).unwrap_or_else(|| panic!("no fault kind {name:?}"))
            })
            .collect(),
        Err(_) => KINDS.to_vec(),
    };
    let offset = rng.below(kinds.len() as u64) as usize;
    let mut schedule = 0;
    while schedule == 0 || started.elapsed() < Duration::from_secs(seconds) {
        // Every kind in turn from a random start, so that even a short run
        // meets most of them; the details of each are drawn.
        let kind = kinds[(offset + schedule) % kinds.len()];
        let line = chaos.run(kind, &mut rng, schedule);
        eprintln!("chaos: schedule {schedule} at {:?}: {line}", started.elapsed());
        *faults.entry(kind).or_default() += 1;
        schedule += 1;
    }
    sampler.stop();
    chaos.check();

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in &chaos.attempts {
        let key = match &attempt.outcome {
            Outcome::Committed { skipped, .. } if skipped.is_empty() => "committed".to_string(),
            Outcome::Committed { .. } => "committed, some skipped".to_string(),
            Outcome::Aborted { reasons } => format!("aborted {reasons:?}"),
            Outcome::Refused(code) => format!("refused {code}"),
            Outcome::NoAnswer(err) => format!("no answer ({err})"),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let longest = chaos.heals.iter().max_by_key(|(.., took)| *took);
    let (served, calls) = {
        let samples = samples.lock().unwrap();
        (samples.served.len(), samples.calls.len())
    };
    println!("chaos verdict (seed {seed}, {:?})", started.elapsed());
    println!("  schedules run: {schedule}");
    println!("  faults by kind: {faults:?}");
    println!("  reloads: {} — {outcomes:?}", chaos.attempts.len());
    println!("  samples: {served} status reads, {calls} calls");
    if let Some((index, kind, _, took)) = longest {
        println!("  longest convergence after a heal: {took:?} (schedule {index}, {kind:?})");
    }
    println!("  violations: {}", chaos.violations.len());
    for violation in &chaos.violations {
        println!("    - {violation}");
    }
    let unanswered: Vec<&Attempt> =
        chaos.attempts.iter().filter(|a| matches!(a.outcome, Outcome::NoAnswer(_))).collect();
    assert!(unanswered.is_empty(), "reloads without an answer: {unanswered:?}");
    assert!(chaos.violations.is_empty(), "{} violations: {:#?}", chaos.violations.len(), chaos.violations);
}
