//! The embedding example over HTTP: its handlers change while requests keep
//! flowing, no request fails, and a broken handler leaves the old one serving.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The service, killed (by its pid) when dropped.
struct Service {
    child: Child,
    url: String,
    printed: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(handlers: &Path, data: &Path) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_embed"))
            .args(["--listen", "127.0.0.1:0", "--debounce-ms", "50"])
            .arg("--handlers")
            .arg(handlers)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the service starts");
        let stdout = child.stdout.take().unwrap();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let (send, listening) = mpsc::channel();
        let lines = Arc::clone(&printed);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = send.send(url.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = listening.recv_timeout(Duration::from_secs(30)).expect("the service listens");
        Service { child, url, printed }
    }

    fn printed(&self) -> Vec<String> {
        self.printed.lock().unwrap().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(url).call().expect("the service answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// A copy of the example's handlers in `dir`; where.
fn copy_handlers(dir: &Path) -> std::path::PathBuf {
    let handlers = dir.join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("handlers");
    for file in ["zest.toml", "hello.wat", "echo.wat", "notes.wat"] {
        std::fs::copy(source.join(file), handlers.join(file)).unwrap();
    }
    handlers
}

/// Two threads getting `url` until `stop`, each with every answer it got.
fn getting(url: &str, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<(u16, String)>>> {
    (0..2)
        .map(|_| {
            let (url, stop) = (url.to_string(), Arc::clone(stop));
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(get(&url));
                }
                answers
            })
        })
        .collect()
}

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_handler_edited_while_requests_flow_answers_with_the_new_code_and_none_fails() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = copy_handlers(dir.path());
    let service = Service::start(&handlers, &dir.path().join("data"));
    let hello = format!("{}/hello", service.url);
    assert_eq!(get(&hello), (200, r#"{"message":"Hello from a zest module!","version":1}"#.to_string()));

    // Requests on two threads, all through the edit.
    let stop = Arc::new(AtomicBool::new(false));
    let callers = getting(&hello, &stop);
    std::thread::sleep(Duration::from_millis(100));
    let wat = std::fs::read_to_string(handlers.join("hello.wat")).unwrap();
    let edited = wat.replace("Hello from a zest module!", "Hello from the new code").replace(":1}", ":2}");
    std::fs::write(handlers.join("hello.wat"), edited).unwrap();
    let new = r#"{"message":"Hello from the new code","version":2}"#;
    eventually("the new handler", || get(&hello).1 == new);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<(u16, String)> = callers.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let old = r#"{"message":"Hello from a zest module!","version":1}"#;
    assert!(answers.iter().all(|(status, body)| *status == 200 && (body == old || body == new)), "a request failed");
    assert!(answers.iter().any(|(_, body)| body == new), "the new code answered the callers too");
    eventually("the reload printed", || service.printed().iter().any(|l| l.starts_with("reloaded module hello")));

    // A broken save: the old handler keeps answering, the service says why.
    std::fs::write(handlers.join("hello.wat"), "(module (func").unwrap();
    eventually("the failure printed", || service.printed().iter().any(|l| l.contains("the old code keeps serving")));
    assert_eq!(get(&hello), (200, new.to_string()));

    // The request reaches the handler; an unknown handler is a 404.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut echoed = agent.post(&format!("{}/echo?x=1", service.url)).send("ping").unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&echoed.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(echoed, serde_json::json!({"method": "POST", "path": "/echo", "query": "x=1", "body": "ping"}));
    let (status, body) = get(&format!("{}/nope", service.url));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("module `nope` is not loaded"), "{body}");
}

fn post(url: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.post(url).send(body).expect("the service answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

#[test]
fn a_component_handler_keeps_its_notes_in_the_services_store_across_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = copy_handlers(dir.path());
    let service = Service::start(&handlers, &dir.path().join("data"));
    let notes = format!("{}/notes", service.url);
    assert_eq!(get(&notes), (200, r#""(nothing noted yet)""#.to_string()));
    assert_eq!(post(&notes, "buy milk"), (200, r#""buy milk""#.to_string()));

    // Readers on two threads while the handler is edited twice.
    let stop = Arc::new(AtomicBool::new(false));
    let readers = getting(&notes, &stop);
    let wat = std::fs::read_to_string(handlers.join("notes.wat")).unwrap();
    for (round, fallback) in ["(nothing noted, v2)", "(nothing noted, v3)"].iter().enumerate() {
        // The same length, so the store's answer and the handler's code are
        // all that differ between versions.
        let edited = wat.replace("(nothing noted yet)", fallback);
        std::fs::write(handlers.join("notes.wat"), edited).unwrap();
        let printed = round + 1;
        eventually("the new handler", || {
            service.printed().iter().filter(|l| l.starts_with("reloaded module notes")).count() >= printed
        });
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<(u16, String)> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|answer| answer == &(200, r#""buy milk""#.to_string())),
        "every request answered, with the note: {:?}",
        answers.iter().find(|answer| answer != &&(200, r#""buy milk""#.to_string()))
    );
    assert_eq!(get(&notes), (200, r#""buy milk""#.to_string()), "the note outlived two versions of its handler");
}
