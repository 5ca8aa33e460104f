//! Fixtures shared by the end-to-end tests and the cluster benchmark: a real
//! `zest serve` child ([`Served`]) and a real etcd ([`Etcd`]), each stopped by
//! pid when dropped, whatever happened, and every wait bounded.

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use proxy::{Link, Proxy};

pub const ZEST: &str = env!("CARGO_BIN_EXE_zest");

/// How long a `zest serve` may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `zest serve` child in its directory, killed when dropped.
pub struct Served {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub url: String,
    pub token: String,
    /// What it printed on stdout after `listening on`.
    printed: Arc<Mutex<String>>,
}

/// How a `zest serve` ended before it listened: its exit code and stderr.
#[derive(Debug)]
pub struct Refused {
    pub code: i32,
    pub stderr: String,
}

impl Served {
    /// `zest serve --listen 127.0.0.1:0 ARGS...` in a fresh directory prepared by `setup`.
    pub fn start(args: &[&str], setup: impl FnOnce(&Path)) -> Served {
        let temp = tempfile::tempdir().unwrap();
        setup(temp.path());
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let dir = temp.path().to_path_buf();
        Served::spawn(dir, Some(temp), &all, ".zest/admin.token")
    }

    /// `zest ARGS...` in `dir`, waiting for `listening on`; `token_file` (from
    /// `dir`) holds the admin token it uses. Panics if it does not listen.
    pub fn spawn(dir: PathBuf, temp: Option<tempfile::TempDir>, args: &[&str], token_file: &str) -> Served {
        match Served::try_spawn(dir, temp, args, token_file, &[]) {
            Ok(served) => served,
            Err(refused) => panic!("zest serve exited {} before listening:\n{}", refused.code, refused.stderr),
        }
    }

    /// As [`Served::spawn`], with extra environment; a child that exits before
    /// it listens is returned as [`Refused`].
    pub fn try_spawn(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        args: &[&str],
        token_file: &str,
        env: &[(&str, &str)],
    ) -> Result<Served, Refused> {
        let mut child = Command::new(ZEST)
            .args(args)
            .current_dir(&dir)
            // `ZEST_TEST_LOG` (a `RUST_LOG` filter) makes every node a test
            // starts say more: `ZEST_TEST_LOG=warn,zest_control=debug`.
            .env("RUST_LOG", std::env::var("ZEST_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zest serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (lines, first) = mpsc::channel();
        let printed = Arc::new(Mutex::new(String::new()));
        let rest = Arc::clone(&printed);
        std::thread::spawn(move || {
            // The first line, then everything else (so the pipe never fills).
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = lines.send(line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                rest.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (errs, captured) = mpsc::channel();
        // Each line of its log names the node's directory (a cluster member's id).
        let label = dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        std::thread::spawn(move || {
            // Forward the child's log to ours (the test harness captures it),
            // keeping a copy for a child that exits early.
            let mut all = String::new();
            let mut reader = BufReader::new(&mut stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                eprint!("[{label}] {text}");
                all.push_str(&text);
                line.clear();
            }
            let _ = errs.send(all);
        });
        let line = first.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening on ").map(str::to_string) else {
            let deadline = Instant::now() + Duration::from_secs(10);
            let code = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status.code().unwrap_or(-1);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break -1;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let stderr = captured.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            return Err(Refused { code, stderr });
        };
        let token = std::fs::read_to_string(dir.join(token_file)).unwrap_or_default().trim().to_string();
        Ok(Served { dir, _temp: temp, child: Some(child), url, token, printed })
    }

    /// What the node printed on stdout since `listening on`.
    pub fn printed(&self) -> String {
        self.printed.lock().unwrap().clone()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// One POST with `token` (`None`: no Authorization header); status and JSON body.
    pub fn post_as(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut request = agent.post(&self.url).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.send(body).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    pub fn rpc_as(&self, token: Option<&str>, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.post_as(token, &body.to_string()).1
    }

    pub fn rpc(&self, method: &str, params: Value) -> Value {
        self.rpc_as(Some(&self.token.clone()), method, params)
    }

    /// `system.reload` with `params`: its result (panics on a JSON-RPC error).
    pub fn reload(&self, params: Value) -> Value {
        self.reload_like("system.reload", params)
    }

    /// A method that answers a reload result (`system.rollback`, …).
    pub fn reload_like(&self, method: &str, params: Value) -> Value {
        let response = self.rpc(method, params);
        response.get("result").cloned().unwrap_or_else(|| panic!("{method} failed: {response}"))
    }

    pub fn status(&self) -> Value {
        self.rpc("system.status", json!(null))["result"].clone()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let (status, body) = self.get_bytes(path, token);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub fn get_bytes(&self, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.get(&format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_vec().unwrap())
    }

    /// The CLI as a subprocess, in this node's directory; exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(ZEST)
            .args(args)
            .args(["--url", &self.url])
            .current_dir(&self.dir)
            .env_remove("ZEST_TOKEN")
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Stops the node with SIGTERM and returns its exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        wait_exit(&mut child, Duration::from_secs(20)).expect("zest serve did not stop on SIGTERM")
    }

    /// SIGKILL, wait for the process to be gone, and hand over its directory
    /// (to start a node there again).
    pub fn kill_keeping_dir(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (self.dir.clone(), self._temp.take())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A SIGSTOPped child would never die of SIGTERM; SIGKILL works on it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `within` passes.
pub fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real etcd (`/usr/bin/etcd`, Debian's `etcd-server`) on free loopback
/// ports with its own data directory — one member, or a raft cluster of
/// several ([`Etcd::start_cluster`]), each an `etcd` process. Members can be
/// stopped and started again on the same ports and data. Every one is killed
/// when dropped.
pub struct Etcd {
    /// The first member's client URL.
    pub client: String,
    members: Vec<EtcdMember>,
    data: tempfile::TempDir,
}

struct EtcdMember {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

pub const ETCD: &str = "/usr/bin/etcd";

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_cluster(1)
    }

    /// `size` etcd members forming one cluster, each healthy (a leader elected).
    pub fn start_cluster(size: usize) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (./scripts/test.sh does) to run the cluster tests"
        );
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let client = members[0].client.clone();
        let mut etcd = Etcd { client, members, data: tempfile::tempdir().unwrap() };
        for index in 0..size {
            etcd.spawn(index);
        }
        for index in 0..size {
            etcd.wait_healthy(index);
        }
        etcd
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(|c| c.id() as i32)).collect()
    }

    /// The pid of member `index`, while it runs.
    pub fn pid_of(&self, index: usize) -> Option<i32> {
        self.members[index].child.as_ref().map(|c| c.id() as i32)
    }

    /// How many members there are (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    fn spawn(&mut self, index: usize) {
        let cluster: Vec<String> = self.members.iter().map(|m| format!("{}={}", m.name, m.peer)).collect();
        let data = self.data.path().join(&self.members[index].name);
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "etcd {} is already running", member.name);
        let child = Command::new(ETCD)
            .args(["--name", &member.name, "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &member.client, "--advertise-client-urls", &member.client])
            .args(["--listen-peer-urls", &member.peer, "--initial-advertise-peer-urls", &member.peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("zest-test-{}", std::process::id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        member.child = Some(child);
    }

    fn wait_healthy(&self, index: usize) {
        let health = format!("{}/health", self.members[index].client);
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(500))).build().into();
        let up = eventually(Duration::from_secs(20), || {
            let mut response = agent.get(&health).call().ok()?;
            let body = response.body_mut().read_to_string().ok()?;
            body.contains("true").then_some(())
        });
        assert!(up.is_some(), "etcd did not become healthy at {}", self.members[index].client);
    }

    /// Starts every stopped member again (after [`Etcd::stop`]) and waits
    /// until they answer.
    pub fn resume(&mut self) {
        let stopped: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].child.is_none()).collect();
        assert!(!stopped.is_empty(), "etcd is already running");
        for &index in &stopped {
            self.spawn(index);
        }
        for index in stopped {
            self.wait_healthy(index);
        }
    }

    /// Kills every member (the data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        for index in 0..self.members.len() {
            self.kill_member(index);
        }
    }

    /// Kills member `index` with SIGKILL.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Puts the current leader first (its endpoint first in [`Etcd::endpoints`],
    /// so that a client starts with it); its index is then 0.
    pub fn lead_first(&mut self) {
        let leader = eventually(Duration::from_secs(10), || self.leader()).expect("etcd elects a leader");
        self.members.swap(0, leader);
        self.client = self.members[0].client.clone();
    }

    /// Puts a member that is not the leader first; its index is then 0.
    pub fn follower_first(&mut self) {
        let leader = eventually(Duration::from_secs(10), || self.leader()).expect("etcd elects a leader");
        let follower = (0..self.members.len()).find(|&i| i != leader).expect("more than one member");
        self.members.swap(0, follower);
        self.client = self.members[0].client.clone();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to member `index`.
    pub fn signal_member(&self, index: usize, signal: i32) {
        let child = self.members[index].child.as_ref().expect("etcd member running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// The index of the member the others follow, as a live member says
    /// (`None` while none answers with a leader).
    pub fn leader(&self) -> Option<usize> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(500))).build().into();
        let mut ids = Vec::new();
        let mut leader = None;
        for member in &self.members {
            if member.child.is_none() {
                ids.push(None);
                continue;
            }
            let status = agent.post(&format!("{}/v3/maintenance/status", member.client)).send("{}").ok().and_then(
                |mut response| serde_json::from_str::<Value>(&response.body_mut().read_to_string().ok()?).ok(),
            );
            let id = status.as_ref().and_then(|s| s["header"]["member_id"].as_str().map(str::to_string));
            if let Some(said) = status.as_ref().and_then(|s| s["leader"].as_str()) {
                if said != "0" {
                    leader = Some(said.to_string());
                }
            }
            ids.push(id);
        }
        let leader = leader?;
        ids.iter().position(|id| id.as_deref() == Some(leader.as_str()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The lease of every member of a [`Fleet`].
pub const LEASE_TTL: Duration = Duration::from_millis(2000);
pub const PREPARE_TIMEOUT: Duration = Duration::from_millis(3000);

pub const ADMIN: &str = "admin-secret";
pub const READER: &str = "reader-secret";
pub const PEER: &str = "cluster-secret";

/// etcd and cluster members, each in `<dir>/<id>` with its own copy of an app
/// (the demo's, unless told otherwise).
pub struct Fleet {
    pub etcd: Etcd,
    pub dir: tempfile::TempDir,
    pub name: String,
    members: Vec<(String, Option<Served>)>,
    /// The files of each member's own copy of the app (`app/`).
    app: Vec<(String, String)>,
    /// Every member's `lease_ttl_ms`.
    ttl: Duration,
    /// Each member's links through fault proxies ([`Fleet::start_proxied`]).
    links: Vec<(String, Links)>,
    /// Appended to every member's `node.toml` (more sections).
    extra: String,
}

/// A member's links, each through a [`Proxy`] the test controls: one to each
/// etcd endpoint (its `etcd` list), and the one its peers reach it through
/// (its `advertise`, relayed to its fixed `listen` port).
pub struct Links {
    pub etcd: Vec<Proxy>,
    pub peers: Proxy,
    pub listen: u16,
}

impl Links {
    /// Sets every etcd link of the member.
    pub fn set_etcd(&self, link: Link) {
        for proxy in &self.etcd {
            proxy.set(link);
        }
    }

    pub fn set_all(&self, link: Link) {
        self.set_etcd(link);
        self.peers.set(link);
    }
}

/// How a fleet's members are set up beyond their ids: links through fault
/// proxies, and TOML appended to each `node.toml`.
struct Wiring<'a> {
    proxied: bool,
    extra: &'a str,
}

impl Drop for Fleet {
    /// Members first: etcd and their directories (the fields, dropped after
    /// this) must outlive them, or a member still at work writes into a
    /// removed directory and logs it.
    fn drop(&mut self) {
        self.members.clear();
    }
}

impl Fleet {
    pub fn start(ids: &[&str]) -> Fleet {
        Fleet::start_with(ids, demo_app(), PREPARE_TIMEOUT, &[])
    }

    /// Members `ids`, each with its own copy of `app` (file name, text), the
    /// cluster's `prepare_timeout_ms`, and `env` for every child.
    pub fn start_with(ids: &[&str], app: Vec<(String, String)>, prepare: Duration, env: &[(&str, &str)]) -> Fleet {
        Fleet::start_on(Etcd::start(), ids, app, prepare, env)
    }

    /// As [`Fleet::start_with`], on `etcd` (every member is given all its
    /// endpoints, in its order).
    pub fn start_on(
        etcd: Etcd,
        ids: &[&str],
        app: Vec<(String, String)>,
        prepare: Duration,
        env: &[(&str, &str)],
    ) -> Fleet {
        Fleet::start_leased(etcd, ids, app, prepare, LEASE_TTL, env)
    }

    /// As [`Fleet::start_on`], with the cluster's `lease_ttl_ms`.
    pub fn start_leased(
        etcd: Etcd,
        ids: &[&str],
        app: Vec<(String, String)>,
        prepare: Duration,
        ttl: Duration,
        env: &[(&str, &str)],
    ) -> Fleet {
        Fleet::build(etcd, ids, app, (prepare, ttl), env, Wiring { proxied: false, extra: "" })
    }

    /// As [`Fleet::start_leased`], with `extra` (TOML sections) at the end
    /// of every member's `node.toml`.
    pub fn start_configured(
        etcd: Etcd,
        ids: &[&str],
        app: Vec<(String, String)>,
        prepare: Duration,
        ttl: Duration,
        env: &[(&str, &str)],
        extra: &str,
    ) -> Fleet {
        Fleet::build(etcd, ids, app, (prepare, ttl), env, Wiring { proxied: false, extra })
    }

    /// As [`Fleet::start_leased`], with every member's links to etcd and to
    /// its peers through fault proxies ([`Fleet::links`]).
    pub fn start_proxied(
        etcd: Etcd,
        ids: &[&str],
        app: Vec<(String, String)>,
        prepare: Duration,
        ttl: Duration,
        env: &[(&str, &str)],
    ) -> Fleet {
        Fleet::build(etcd, ids, app, (prepare, ttl), env, Wiring { proxied: true, extra: "" })
    }

    fn build(
        etcd: Etcd,
        ids: &[&str],
        app: Vec<(String, String)>,
        (prepare, ttl): (Duration, Duration),
        env: &[(&str, &str)],
        Wiring { proxied, extra }: Wiring<'_>,
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        for (file, token) in [("admin.token", ADMIN), ("read.token", READER), ("cluster.token", PEER)] {
            std::fs::write(dir.path().join(file), format!("{token}\n")).unwrap();
        }
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let name = format!("t{}x{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut fleet =
            Fleet { etcd, dir, name, members: Vec::new(), app, ttl, links: Vec::new(), extra: extra.to_string() };
        fleet.add_members(ids, prepare, env, proxied);
        fleet
    }

    /// Member `id`'s proxied links (panics for a fleet without proxies).
    pub fn links(&self, id: &str) -> &Links {
        self.links.iter().find(|(member, _)| member == id).map(|(_, links)| links).expect("a proxied member")
    }

    fn add_members(&mut self, ids: &[&str], prepare: Duration, env: &[(&str, &str)], proxied: bool) {
        for id in ids {
            if proxied {
                let etcd =
                    self.etcd.endpoints().iter().map(|url| Proxy::start(url.trim_start_matches("http://"))).collect();
                let listen = free_port();
                let peers = Proxy::start(&format!("127.0.0.1:{listen}"));
                self.links.push((id.to_string(), Links { etcd, peers, listen }));
            }
            self.write_member(id, prepare);
            self.members.push((id.to_string(), None));
        }
        // One after the other, so that members list in a known order.
        for id in ids {
            self.spawn(id, env);
        }
        // Each member learns of the others through an etcd watch: wait until
        // every one lists them all.
        let mut all: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        all.sort();
        for id in ids {
            let member = self.member(id);
            let listed = eventually(START_TIMEOUT, || {
                let status = member.status();
                let mut members: Vec<String> = status["cluster"]["members"]
                    .as_array()?
                    .iter()
                    .filter_map(|m| m["node"].as_str().map(str::to_string))
                    .collect();
                members.sort();
                (members == all).then_some(())
            });
            assert!(listed.is_some(), "member {id} never listed {all:?}");
        }
    }

    pub fn member_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    fn write_member(&self, id: &str, prepare: Duration) {
        let dir = self.member_dir(id);
        let app = dir.join("app");
        std::fs::create_dir_all(&app).unwrap();
        for (file, text) in &self.app {
            std::fs::write(app.join(file), text).unwrap();
        }
        let links = self.links.iter().find(|(member, _)| member == id).map(|(_, links)| links);
        let (listen, etcd, advertise) = match links {
            Some(links) => (
                format!("127.0.0.1:{}", links.listen),
                links.etcd.iter().map(Proxy::url).collect(),
                format!("advertise = \"{}\"\n", links.peers.url()),
            ),
            None => ("127.0.0.1:0".to_string(), self.etcd.endpoints(), String::new()),
        };
        let config = format!(
            r#"[node]
data_dir = "data"
[control]
listen = "{listen}"
[[control.tokens]]
token_file = "../admin.token"
scopes = ["admin"]
[[control.tokens]]
token_file = "../read.token"
scopes = ["read"]
[[apps]]
dir = "app"
[cluster]
name = "{name}"
node = "{id}"
etcd = {etcd}
token_file = "../cluster.token"
lease_ttl_ms = {ttl}
prepare_timeout_ms = {prepare}
{advertise}"#,
            name = self.name,
            etcd = serde_json::to_string(&etcd).unwrap(),
            ttl = self.ttl.as_millis(),
            prepare = prepare.as_millis(),
        );
        std::fs::write(dir.join("node.toml"), config + &self.extra).unwrap();
    }

    /// Starts member `id` (again).
    pub fn spawn(&mut self, id: &str, env: &[(&str, &str)]) {
        let served = self.try_spawn(id, env).unwrap_or_else(|refused| panic!("member {id}: {refused:?}"));
        self.slot(id).1 = Some(served);
    }

    pub fn try_spawn(&self, id: &str, env: &[(&str, &str)]) -> Result<Served, Refused> {
        let mut served = Served::try_spawn(self.member_dir(id), None, &["serve", "--config", "node.toml"], "", env)?;
        served.token = ADMIN.to_string();
        Ok(served)
    }

    /// Member ids, in the order they started.
    pub fn ids(&self) -> Vec<String> {
        self.members.iter().map(|(id, _)| id.clone()).collect()
    }

    fn slot(&mut self, id: &str) -> &mut (String, Option<Served>) {
        self.members.iter_mut().find(|(member, _)| member == id).expect("a member of the fleet")
    }

    pub fn member(&self, id: &str) -> &Served {
        self.members.iter().find(|(member, _)| member == id).and_then(|(_, s)| s.as_ref()).expect("running")
    }

    pub fn take(&mut self, id: &str) -> Served {
        self.slot(id).1.take().expect("running")
    }

    /// Rewrites the version string of member `id`'s own clock (five
    /// characters, as the demo's `zest_vsn` returns five bytes).
    pub fn set_clock(&self, id: &str, vsn: &str) {
        set_clock(&self.member_dir(id).join("app"), vsn);
    }

    pub fn vsn(&self, id: &str, module: &str) -> String {
        module_vsn(&self.member(id).status(), module)
    }
}

/// The current vsn of `module` in a `system.status` answer.
pub fn module_vsn(status: &Value, module: &str) -> String {
    let modules = status["modules"].as_array().unwrap_or_else(|| panic!("no modules in {status}"));
    let found = modules.iter().find(|m| m["name"] == module).unwrap_or_else(|| panic!("no {module} in {status}"));
    found["current"]["vsn"].as_str().unwrap().to_string()
}

/// The bundled demo app's files.
pub fn demo_app() -> Vec<(String, String)> {
    [
        ("zest.toml", include_str!("../../../../examples/demo/zest.toml")),
        ("clock.wat", include_str!("../../../../examples/demo/clock.wat")),
        ("front.wat", include_str!("../../../../examples/demo/front.wat")),
        ("counter.wat", include_str!("../../../../examples/demo/counter.wat")),
    ]
    .into_iter()
    .map(|(file, text)| (file.to_string(), text.to_string()))
    .collect()
}

/// The string at `(data (i32.const OFFSET) "…")` of a WAT file.
pub fn data(path: &Path, offset: u32) -> String {
    let wat = std::fs::read_to_string(path).unwrap();
    let (start, end) = data_span(&wat, offset, path);
    wat[start..end].to_string()
}

/// Rewrites the string at `(data (i32.const OFFSET) "…")` of a WAT file with
/// one of the same length (a demo vsn, say).
pub fn set_data(path: &Path, offset: u32, value: &str) {
    let wat = std::fs::read_to_string(path).unwrap();
    let (start, end) = data_span(&wat, offset, path);
    assert_eq!(end - start, value.len(), "{value:?} must keep the length of {:?}", &wat[start..end]);
    std::fs::write(path, format!("{}{value}{}", &wat[..start], &wat[end..])).unwrap();
}

fn data_span(wat: &str, offset: u32, path: &Path) -> (usize, usize) {
    let marker = format!("(data (i32.const {offset}) \"");
    let start =
        wat.find(&marker).unwrap_or_else(|| panic!("{} has no data at {offset}; update the test", path.display()))
            + marker.len();
    (start, start + wat[start..].find('"').unwrap())
}

/// Rewrites the five-character vsn of the demo clock in `app_dir`.
pub fn set_clock(app_dir: &Path, vsn: &str) {
    set_data(&app_dir.join("clock.wat"), 512, vsn);
}
