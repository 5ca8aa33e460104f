//! Metrics as an operator reads them (issue 28): `promtool check metrics` on
//! a node's `/metrics` after traffic, and a real Prometheus (Debian's
//! `prometheus`, installed by `scripts/test.sh`) scraping a three-member
//! cluster every second through calls, cluster reloads, a failing build, a
//! member that stops answering and a rollback, asked the queries
//! `docs/control.md` documents over its HTTP API.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, free_port, set_clock, Fleet, Served, READER};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn installed(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's `prometheus` package (scripts/test.sh does)"
    );
}

/// `promtool check metrics` on `text`: its exit code and what it printed.
fn promtool(text: &str) -> (i32, String) {
    installed(PROMTOOL);
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), printed)
}

fn assert_promtool_passes(who: &str, text: &str) {
    let (code, printed) = promtool(text);
    assert_eq!((code, printed.trim()), (0, ""), "promtool on {who}'s /metrics:\n{text}");
}

fn call(node: &Served, module: &str, function: &str) {
    let answer = node.rpc("module.call", json!({"module": module, "function": function}));
    assert!(answer.get("result").is_some(), "{answer}");
}

#[test]
fn promtool_passes_on_a_nodes_metrics_after_traffic_with_every_series_there_from_the_start() {
    let node = Served::start(&[], |_| {});
    let (_, fresh) = node.get("/metrics", Some(&node.token.clone()));
    assert_promtool_passes("a fresh node", &fresh);
    // Known series exist at 0 before their first event.
    for line in [
        r#"zest_reloads_total{kind="module",status="error",role="coordinator"} 0"#,
        r#"zest_reload_reverts_total{kind="module"} 0"#,
        r#"zest_reload_duration_seconds_count{kind="module",role="coordinator"} 0"#,
        r#"zest_calls_total{module="clock",version="canary",outcome="failed"} 0"#,
    ] {
        assert!(fresh.lines().any(|l| l == line), "{line} missing:\n{fresh}");
    }
    assert!(!fresh.contains("role=\"member\""), "a standalone node has no member series:\n{fresh}");

    for _ in 0..5 {
        call(&node, "front", "time");
    }
    let clock = node.path(".zest/demo/clock.wat");
    set_clock(clock.parent().unwrap(), "1.0.1");
    let reloaded = node.reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(reloaded["status"], "ok", "{reloaded}");
    set_clock(clock.parent().unwrap(), "1.0.2");
    let canary = node.reload(json!({"scope": "module", "module": "clock", "canary": {"percent": 50}}));
    assert_eq!(canary["status"], "ok", "{canary}");
    let wat = std::fs::read_to_string(&clock).unwrap();
    std::fs::write(&clock, "(module (func $broken").unwrap();
    let failed = node.reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(failed["status"], "error", "{failed}");
    std::fs::write(&clock, wat).unwrap();
    let dry = node.reload(json!({"scope": "app", "app": "demo", "dry_run": true, "force": true}));
    assert!(dry["metadata"]["dry_run"] == true, "{dry}");
    for _ in 0..6 {
        call(&node, "front", "time");
    }

    let (_, metrics) = node.get("/metrics", Some(&node.token.clone()));
    assert_promtool_passes("a node after traffic", &metrics);
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(r#"zest_reloads_total{kind="module",status="error",role="coordinator"} "#), 1.0);
    // Every call counted once per module called (front calls clock), over
    // three builds of clock, none lost.
    let calls = |module: &str| -> f64 {
        ["current", "canary", "old"]
            .iter()
            .map(|place| value(&format!("zest_calls_total{{module=\"{module}\",version=\"{place}\",outcome=\"ok\"}} ")))
            .sum()
    };
    assert_eq!((calls("front"), calls("clock")), (11.0, 11.0), "{metrics}");
    assert!(value(r#"zest_calls_total{module="clock",version="canary",outcome="ok"} "#) >= 1.0, "{metrics}");
    // The canary and the current build, each by its vsn; nothing of the dry run.
    let info: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("zest_module_version_info{module=\"clock\"")).collect();
    assert!(info.iter().any(|l| l.contains(r#"version="canary",vsn="1.0.2""#)), "{info:?}");
    assert!(info.iter().any(|l| l.contains(r#"version="current",vsn="1.0.1""#)), "{info:?}");
    let front = metrics.lines().filter(|l| l.starts_with("zest_module_version_info{module=\"front\"")).count();
    assert_eq!(front, 1, "a dry run's build has no series:\n{metrics}");
}

/// A Prometheus server in a temporary directory, killed (by its pid) and
/// reaped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (host:port) every second with the read token.
    fn start(targets: &[String]) -> Prometheus {
        installed(PROMETHEUS);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("read.token"), READER).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: zest\n    \
             authorization:\n      credentials_file: {token}\n    static_configs:\n      - targets: {targets}\n",
            token = dir.path().join("read.token").display(),
            targets = serde_json::to_string(targets).unwrap(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let ready = eventually(Duration::from_secs(20), || {
            let answer = ureq::get(&format!("{}/-/ready", prometheus.url)).call().ok()?;
            (answer.status() == 200).then_some(())
        });
        assert!(ready.is_some(), "prometheus did not get ready:\n{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's vector: each sample's labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let text = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .unwrap_or_else(|err| panic!("{promql}: {err}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{promql}: {err}: {text}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {answer}"))
            .iter()
            .map(|sample| (sample["metric"].clone(), sample["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// A query whose answer is one number (none: 0).
    fn scalar(&self, promql: &str) -> f64 {
        let samples = self.query(promql);
        assert!(samples.len() <= 1, "{promql}: {samples:?}");
        samples.first().map_or(0.0, |(_, value)| *value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

fn clock_wat(fleet: &Fleet, id: &str) -> PathBuf {
    fleet.member_dir(id).join("app").join("clock.wat")
}

/// `increase()` over a window longer than the run counts each event once,
/// up to extrapolation to the query's time (at most one scrape interval of
/// the run's length, a few percent).
fn about(value: f64, expected: f64) -> bool {
    value >= expected - 0.01 && value <= expected * 1.1 + 0.5
}

#[test]
fn a_real_prometheus_scraping_three_members_answers_the_documented_queries() {
    let began = Instant::now();
    let fleet = Fleet::start(&["a", "b", "c"]);
    let targets: Vec<String> = ["a", "b", "c"].iter().map(|id| host_port(&fleet.member(id).url)).collect();
    let prometheus = Prometheus::start(&targets);
    let up = eventually(Duration::from_secs(15), || (prometheus.scalar("sum(up)") == 3.0).then_some(()));
    assert!(up.is_some(), "three targets up: {:?}\n{}", prometheus.query("up"), prometheus.log());
    // Every member's cluster series are there at 0 before any reload.
    let zero = prometheus.query("zest_cluster_aborts_total{reason=\"build_failed\"}");
    assert_eq!(zero.len(), 6, "three members, two roles: {zero:?}");

    let mut calls = 0.0;
    let mut traffic = |fleet: &Fleet, n: usize| {
        for i in 0..n {
            call(fleet.member(["a", "b", "c"][i % 3]), "front", "time");
            calls += 1.0;
        }
    };
    let mut durations = Vec::new();
    let mut coordinated = |node: &Served, method: &str, params: Value| -> Value {
        let result = node.reload_like(method, params);
        durations.push(result["duration_ms"].as_f64().unwrap_or_else(|| panic!("{result}")));
        result
    };

    traffic(&fleet, 12);
    fleet.set_clock("a", "1.0.1");
    let first = coordinated(fleet.member("a"), "system.reload", json!({"scope": "module", "module": "clock"}));
    assert_eq!(first["metadata"]["cluster"]["phase"], "committed", "{first}");
    traffic(&fleet, 12);
    fleet.set_clock("b", "1.0.2");
    let second = coordinated(fleet.member("b"), "system.reload", json!({"scope": "module", "module": "clock"}));
    assert_eq!(second["metadata"]["cluster"]["phase"], "committed", "{second}");
    traffic(&fleet, 12);
    // A build that fails on the coordinator: nothing to prepare.
    let wat = std::fs::read_to_string(clock_wat(&fleet, "a")).unwrap();
    std::fs::write(clock_wat(&fleet, "a"), "(module (func $broken").unwrap();
    let broken = coordinated(fleet.member("a"), "system.reload", json!({"scope": "module", "module": "clock"}));
    assert_eq!(
        (broken["status"].as_str(), broken["metadata"]["cluster"]["phase"].as_str()),
        (Some("error"), Some("aborted"))
    );
    std::fs::write(clock_wat(&fleet, "a"), wat).unwrap();
    // A member that does not answer its prepare: aborted everywhere.
    fleet.member("c").signal(libc::SIGSTOP);
    fleet.set_clock("a", "1.0.3");
    let stalled = coordinated(fleet.member("a"), "system.reload", json!({"scope": "module", "module": "clock"}));
    fleet.member("c").signal(libc::SIGCONT);
    assert_eq!(stalled["metadata"]["cluster"]["phase"], "aborted", "{stalled}");
    traffic(&fleet, 12);
    // Back to the build before 1.0.2, on every member.
    let rollback = coordinated(fleet.member("a"), "system.rollback", json!({"module": "clock"}));
    assert_eq!(rollback["metadata"]["cluster"]["phase"], "committed", "{rollback}");
    assert_eq!(fleet.vsn("c", "clock"), "1.0.1");
    traffic(&fleet, 12);

    // Once every member scraped after the last event: the phases add up, on
    // each member and for each role.
    let settled = eventually(Duration::from_secs(15), || {
        let prepares = prometheus.scalar("sum(zest_cluster_prepares_total)");
        let balance = prometheus.scalar(
            "sum(zest_cluster_prepares_total) - sum(zest_cluster_commits_total) - sum(zest_cluster_aborts_total)",
        );
        let seen = prometheus.scalar("sum(zest_calls_total{module=\"front\"})");
        // a, b: prepares of their own requests; each target of the four that got past staging.
        (prepares >= 5.0 + 6.0 && balance == 0.0 && seen == calls).then_some(())
    });
    let by_member = prometheus.query(
        "sum by (instance, role) (zest_cluster_prepares_total) - sum by (instance, role) (zest_cluster_commits_total) \
         - sum by (instance, role) (zest_cluster_aborts_total)",
    );
    assert!(
        settled.is_some(),
        "prepares = commits + aborts: {by_member:?}\nprepares {:?}\ncommits {:?}\naborts {:?}",
        prometheus.query("zest_cluster_prepares_total"),
        prometheus.query("zest_cluster_commits_total"),
        prometheus.query("zest_cluster_aborts_total > 0"),
    );
    assert!(by_member.iter().all(|(_, value)| *value == 0.0), "{by_member:?}");
    let aborts = prometheus.query("sum by (reason, role) (zest_cluster_aborts_total) > 0");
    let reason = |reason: &str, role: &str| {
        aborts.iter().find(|(labels, _)| labels["reason"] == reason && labels["role"] == role).map(|(_, v)| *v)
    };
    assert_eq!(reason("build_failed", "coordinator"), Some(1.0), "{aborts:?}");
    assert_eq!(reason("node_unreachable", "coordinator"), Some(1.0), "{aborts:?}");
    // b prepared, then dropped it (and c too, when its prepare ran once it
    // was resumed and the abort came).
    let dropped = reason("node_unreachable", "member").unwrap_or(0.0);
    assert!((1.0..=2.0).contains(&dropped), "{aborts:?}");

    // Reloads by kind and status (the requests, once each).
    let reloads =
        prometheus.query("sum by (kind, status) (increase(zest_reloads_total{role=\"coordinator\"}[15m])) > 0");
    let count = |kind: &str, status: &str| {
        reloads.iter().find(|(labels, _)| labels["kind"] == kind && labels["status"] == status).map(|(_, v)| *v)
    };
    let (ok, error) = (count("module", "ok").unwrap_or(0.0), count("module", "error").unwrap_or(0.0));
    assert!(about(ok, 3.0) && about(error, 2.0), "3 committed, 2 aborted: {reloads:?}");
    assert_eq!(reloads.len(), 2, "nothing else: {reloads:?}");

    // The histogram holds exactly what the results said (duration_ms).
    let sum = prometheus.scalar("sum(zest_reload_duration_seconds_sum{role=\"coordinator\",kind=\"module\"})");
    let reported: f64 = durations.iter().sum::<f64>() / 1e3;
    assert!((sum - reported).abs() < 1e-5 * durations.len() as f64, "histogram {sum} s, results {reported} s");
    // p99 falls in the bucket of the slowest reload (the stalled one).
    let p99 = prometheus.scalar(
        "histogram_quantile(0.99, sum by (le) (rate(zest_reload_duration_seconds_bucket{role=\"coordinator\"}[15m])))",
    );
    let (_, text) = fleet.member("a").get("/metrics", Some(READER));
    let bounds: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("zest_reload_duration_seconds_bucket{kind=\"module\",role=\"coordinator\""))
        .filter_map(|l| l.split(",le=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect();
    let slowest = durations.iter().cloned().fold(0.0, f64::max) / 1e3;
    let upper = bounds.iter().cloned().find(|b| *b >= slowest);
    let upper = upper.unwrap_or_else(|| panic!("no bucket holds {slowest} s: {bounds:?}\n{text}"));
    let lower = bounds.iter().cloned().filter(|b| *b < slowest).fold(0.0, f64::max);
    assert!(p99 > lower && p99 <= upper, "p99 {p99} s; slowest {slowest} s in ({lower}, {upper}]; {durations:?}");
    let cluster_p99 = prometheus
        .scalar("histogram_quantile(0.99, sum by (le) (rate(zest_cluster_reload_duration_seconds_bucket[15m])))");
    assert!(cluster_p99 > lower && cluster_p99 <= upper, "cluster p99 {cluster_p99} s, slowest {slowest} s");

    // Calls per module: none lost across five builds of clock, each call
    // once per module called (front calls clock). Every counter began at 0
    // with its member, so the last value of each series, summed, is exact;
    // `increase` extrapolates to the window's ends from samples a second
    // apart (up to about 1.6 intervals more over a run of ten or so), so it
    // is only ever at least the count, and not far above.
    let exact = prometheus.query("sum by (module) (max_over_time(zest_calls_total[15m]))");
    let module = |name: &str| exact.iter().find(|(l, _)| l["module"] == name).map_or(0.0, |(_, v)| *v);
    assert!(module("front") == calls && module("clock") == calls, "{calls} calls: {exact:?}");
    let increase = prometheus.query("sum by (module) (increase(zest_calls_total[15m]))");
    let module = |name: &str| increase.iter().find(|(l, _)| l["module"] == name).map_or(0.0, |(_, v)| *v);
    for name in ["front", "clock"] {
        assert!(module(name) >= calls - 0.01 && module(name) <= calls * 1.25 + 0.5, "{calls} calls: {increase:?}");
    }
    let rate = prometheus.scalar("sum(rate(zest_calls_total{module=\"front\"}[5m]))");
    assert!(rate > 0.0, "calls per module, as a rate: {rate}");
    let current = prometheus.query("zest_module_version_info{module=\"clock\",version=\"current\"}");
    assert_eq!(current.len(), 3, "{current:?}");
    assert!(current.iter().all(|(labels, _)| labels["vsn"] == "1.0.1"), "{current:?}");

    for id in ["a", "b", "c"] {
        let (_, text) = fleet.member(id).get("/metrics", Some(READER));
        assert_promtool_passes(id, &text);
    }
    // The dashboard's queries are the documented ones, and Prometheus runs each.
    let dashboard: Value = serde_json::from_str(include_str!("../../../docs/grafana.json")).unwrap();
    let docs = include_str!("../../../docs/control.md");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    for panel in panels {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        assert!(docs.contains(&format!("`{}`", expr.replace('|', "\\|"))), "docs/control.md lists {expr}");
        let answer = prometheus.query(expr);
        assert!(!answer.is_empty(), "{expr} answers something after the scenario");
    }
    eprintln!("reload durations (ms): {durations:?}; p99 {p99} s; the test took {:?}", began.elapsed());
}
