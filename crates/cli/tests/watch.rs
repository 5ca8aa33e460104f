//! Watch mode and the event stream through a real `zest serve`: a saved file
//! reloads by itself and the node prints it; `zest events` shows it live.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use support::{eventually, module_vsn, Served, ZEST};

/// Rewrites the demo clock's five-character vsn.
fn set_clock(node: &Served, vsn: &str) {
    support::set_clock(&node.path(".zest/demo"), vsn);
}

#[test]
fn serve_watch_reloads_a_saved_module_and_prints_it() {
    let node = Served::start(&["--watch"], |_| {});
    set_clock(&node, "1.0.7");
    let served = eventually(Duration::from_secs(10), || (module_vsn(&node.status(), "clock") == "1.0.7").then_some(()));
    assert!(served.is_some(), "the new clock never served; printed:\n{}", node.printed());
    let printed = eventually(Duration::from_secs(5), || {
        let printed = node.printed();
        printed.contains("reloaded: clock (1.0.0 -> 1.0.7)").then_some(printed)
    })
    .unwrap_or_else(|| panic!("no reload printed:\n{}", node.printed()));
    assert!(printed.contains("watch: .zest/demo/clock.wat changed: reload module clock [watch-"), "{printed}");

    let history = node.rpc("system.history", json!({"module": "clock"}));
    let id = history["result"]["entries"][0]["request_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("watch-"), "{history}");

    // A broken save: printed with the compiler's words, the old code serves.
    std::fs::write(node.path(".zest/demo/clock.wat"), "(module (func").unwrap();
    let printed = eventually(Duration::from_secs(10), || {
        let printed = node.printed();
        printed.contains("error module clock").then_some(printed)
    })
    .unwrap_or_else(|| panic!("no failure printed:\n{}", node.printed()));
    assert!(printed.contains(".zest/demo/clock.wat:1:"), "the error names the file: {printed}");
    assert_eq!(module_vsn(&node.status(), "clock"), "1.0.7");
}

#[test]
fn watch_mode_is_refused_on_a_cluster_member() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.toml"), "[cluster]\nname = \"c\"\nnode = \"a\"\ntoken_file = \"t\"\n")
        .unwrap();
    let refused = Served::try_spawn(
        dir.path().to_path_buf(),
        None,
        &["serve", "--listen", "127.0.0.1:0", "--watch", "--config", "node.toml"],
        ".zest/admin.token",
        &[],
    )
    .err()
    .expect("refused");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--watch: watch mode reloads this node alone"), "{}", refused.stderr);
}

#[test]
fn zest_events_prints_a_line_per_event_as_it_happens() {
    let node = Served::start(&[], |_| {});
    let mut events = Command::new(ZEST)
        .args(["events", "--url", &node.url, "--token", &node.token])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    // Subscribed once it says so.
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("a first line");
    assert!(first.starts_with("subscribed to "), "{first}");
    set_clock(&node, "1.0.3");
    assert_eq!(node.reload(json!({"scope": "module", "module": "clock"}))["status"], "ok");
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        let done = line.contains("zest.reload.stop") && line.contains("module clock");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let start = seen.iter().find(|l| l.contains("zest.reload.start")).unwrap_or_else(|| panic!("{seen:?}"));
    assert!(start.contains("module clock"), "{start}");
    let stop = seen.last().unwrap();
    assert!(stop.contains("ok") && stop.contains(" ms"), "{stop}");
}
