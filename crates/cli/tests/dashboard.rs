//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! driven through `chromedriver`) against a real `zest serve`. Sign in (a
//! refused token shows nothing), see the modules, change a file and reload it
//! from the page, see the result, the new vsn and the events, roll back, ride
//! out a node restart, and never put the token in a URL; unload an extension
//! and an app, each only once confirmed.
//!
//! `./scripts/test.sh` installs `chromium` and `chromium-driver` when missing;
//! without them this test fails and says so. `ZEST_UI_SCREENSHOTS=DIR` saves
//! screenshots of the page (the README's come from here).

mod support;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{free_port, Served};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long anything on the page may take to appear.
const WAIT: Duration = Duration::from_secs(15);

/// `chromedriver` on a free port, in a process group of its own with the
/// browser it starts: dropping it kills that group (by chromedriver's pid),
/// so a failed test leaves no browser behind.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (./scripts/test.sh does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created (its id is
        // chromedriver's pid); no memory is involved.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,960", "--no-first-run", "--disable-extensions"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.expect("a browser session")
}

/// Polls `check` until it gives `Some`, or fails naming `what`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` selects; found again if the page redrew it
/// between finding and clicking.
async fn click(client: &Client, css: &str) {
    for _ in 0..20 {
        let Ok(element) = client.find(Locator::Css(css)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match element.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(err) => panic!("cannot click {css}: {err}"),
        }
    }
    panic!("{css} never stayed on the page long enough to be clicked");
}

async fn text_of(client: &Client, css: &str) -> Option<String> {
    client.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn script(client: &Client, js: &str) -> Value {
    client.execute(js, vec![]).await.expect("the script runs")
}

async fn sign_in(client: &Client, token: &str) {
    let form = client.form(Locator::Css("form#login")).await.expect("the login form");
    form.set_by_name("token", token).await.unwrap();
    form.submit().await.unwrap();
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("ZEST_UI_SCREENSHOTS") {
        let png = client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(name), png).unwrap();
    }
}

/// Rewrites the demo clock's five-character vsn.
fn set_clock(dir: &Path, vsn: &str) {
    support::set_clock(&dir.join(".zest/demo"), vsn);
}

const CLOCK_VSN: &str = r#"[data-module="clock"] [data-field="vsn"]"#;

#[test]
fn the_dashboard_signs_in_shows_reloads_rolls_back_and_reconnects_in_a_real_browser() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let node = Served::spawn(dir, Some(temp), &["serve", "--listen", &listen], ".zest/admin.token");
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver).await;
        let page = format!("{}/ui", node.url);
        client.goto(&page).await.unwrap();

        // A refused token: the page says so, and shows nothing of the node.
        sign_in(&client, "not-the-token").await;
        let refused = until("the refusal", || async {
            let text = text_of(&client, "#login-error").await?;
            (!text.is_empty()).then_some(text)
        })
        .await;
        assert_eq!(refused, "The node refused this token.");
        assert_eq!(script(&client, "return document.querySelectorAll('[data-module]').length").await, json!(0));
        assert_eq!(script(&client, "return document.querySelector('#app-view').hidden").await, json!(true));
        screenshot(&client, "refused.png").await;

        // The right one: the modules, with their versions.
        sign_in(&client, &node.token).await;
        let vsn =
            until("the clock's row", || async { text_of(&client, CLOCK_VSN).await.filter(|t| !t.is_empty()) }).await;
        assert_eq!(vsn, "1.0.0");
        for module in ["front", "counter"] {
            let css = format!(r#"[data-module="{module}"]"#);
            assert!(client.find(Locator::Css(&css)).await.is_ok(), "no row for {module}");
        }
        assert_eq!(text_of(&client, r#"[data-process="counter"] td:nth-child(4)"#).await.as_deref(), Some("running"));

        // Change the file, reload from the page: the result, the new vsn, events.
        set_clock(&node.dir, "1.0.5");
        click(&client, r#"[data-module="clock"] [data-action="reload"]"#).await;
        let result = until("the reload's result", || async {
            let text = text_of(&client, "#result").await?;
            text.contains("module clock").then_some(text)
        })
        .await;
        assert!(result.contains("ok") && result.contains("clock 1.0.0 → 1.0.5"), "{result}");
        until("the new vsn", || async { (text_of(&client, CLOCK_VSN).await? == "1.0.5").then_some(()) }).await;
        let events = until("the reload's events", || async {
            let text = text_of(&client, "#events").await?;
            (text.contains("zest.reload.start") && text.contains("zest.reload.stop")).then_some(text)
        })
        .await;
        assert!(events.contains("module clock"), "{events}");
        screenshot(&client, "dashboard.png").await;

        // A history row, and a rollback that puts 1.0.0 back.
        let history = text_of(&client, "#history").await.unwrap();
        assert!(history.contains("reload") && history.contains("1.0.5"), "{history}");
        click(&client, r#"[data-module="clock"] [data-action="rollback"]"#).await;
        until("the rollback", || async { (text_of(&client, CLOCK_VSN).await? == "1.0.0").then_some(()) }).await;
        let result = text_of(&client, "#result").await.unwrap();
        assert!(result.contains("rolled back") && result.contains("clock 1.0.5 → 1.0.0"), "{result}");
        let promote_disabled =
            r#"return document.querySelector('[data-module="clock"] [data-action="promote"]').disabled"#;
        assert_eq!(script(&client, promote_disabled).await, json!(true), "no canary: nothing to promote");

        // A canary started elsewhere shows up; promote it from the page.
        set_clock(&node.dir, "1.0.7");
        let started = node.reload(json!({"scope": "module", "module": "clock", "canary": {"percent": 25}}));
        assert_eq!(started["status"], "ok", "{started}");
        let canary = until("the canary", || async {
            text_of(&client, r#"[data-module="clock"]"#).await.filter(|t| t.contains("canary 1.0.7 · 25%"))
        })
        .await;
        assert!(canary.contains("1.0.0"), "the current build still serves the rest: {canary}");
        // Calls split between the builds; the page's next poll shows them.
        for _ in 0..40 {
            let answer = node.rpc("module.call", json!({"module": "front", "function": "time"}));
            assert!(answer["result"]["now_ms"].is_number(), "{answer}");
        }
        let status = node.rpc("system.status", json!({}));
        let modules = status["result"]["modules"].as_array().unwrap_or_else(|| panic!("{status}"));
        let clock = modules.iter().find(|m| m["name"] == "clock").unwrap_or_else(|| panic!("{status}"));
        let canary_calls = clock["canary"]["calls"].as_u64().unwrap_or_else(|| panic!("{clock}"));
        assert!(canary_calls > 0, "a 25 % canary got none of 40 calls: {clock}");
        let shown = format!("{canary_calls} calls, 0 failed");
        let canary_counts = r#"[data-module="clock"] td:nth-child(5) div.sub"#;
        until("the canary's calls", || async { (text_of(&client, canary_counts).await? == shown).then_some(()) }).await;
        screenshot(&client, "canary.png").await;
        click(&client, r#"[data-module="clock"] [data-action="promote"]"#).await;
        until("the promotion", || async { (text_of(&client, CLOCK_VSN).await? == "1.0.7").then_some(()) }).await;

        // The token is in no URL: not the page's, not any resource's.
        let url = client.current_url().await.unwrap();
        assert!(!url.as_str().contains(&node.token), "{url}");
        let resources = script(&client, "return performance.getEntriesByType('resource').map(e => e.name)").await;
        for name in resources.as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(name.starts_with(&node.url), "a resource from elsewhere: {name}");
            assert!(!name.contains(&node.token), "the token in a URL: {name}");
        }

        // The node goes away and comes back: the page reconnects by itself.
        let (dir, temp) = node.kill_keeping_dir();
        until("the page to notice", || async {
            text_of(&client, "#link").await.filter(|t| t.contains("reconnecting"))
        })
        .await;
        let node = Served::spawn(dir, temp, &["serve", "--listen", &listen], ".zest/admin.token");
        until("live again", || async { text_of(&client, "#link").await.filter(|t| t == "live") }).await;
        set_clock(&node.dir, "1.0.6");
        click(&client, r#"[data-module="clock"] [data-action="reload"]"#).await;
        until("a reload after reconnecting", || async {
            (text_of(&client, CLOCK_VSN).await? == "1.0.6").then_some(())
        })
        .await;

        // Signing out forgets the token.
        click(&client, "#sign-out").await;
        assert_eq!(script(&client, "return sessionStorage.getItem('zest.token')").await, Value::Null);
        assert_eq!(script(&client, "return document.querySelectorAll('[data-module]').length").await, json!(0));
        client.close().await.unwrap();
    });
}

/// Whether the confirmation dialog is open.
async fn confirming(client: &Client) -> bool {
    script(client, "return document.querySelector('#confirm').open").await == json!(true)
}

#[test]
fn the_dashboard_unloads_an_extension_and_an_app_only_once_confirmed() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("extensions")).unwrap();
    std::fs::write(
        dir.join("extensions/plugin.wat"),
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{\"p\":1}")
  (func (export "get") (param i32 i32) (result i64) i64.const 0x0000001000000007))"#,
    )
    .unwrap();
    let node = Served::spawn(dir, Some(temp), &["serve", "--listen", "127.0.0.1:0"], ".zest/admin.token");
    let loaded = node.reload(json!({"scope": "extension", "path": "extensions/plugin.wat"}));
    assert_eq!(loaded["status"], "ok", "{loaded}");
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver).await;
        client.goto(&format!("{}/ui", node.url)).await.unwrap();
        sign_in(&client, &node.token).await;
        const PLUGIN: &str = r#"[data-extension="plugin"]"#;
        until("the extension's row", || async { text_of(&client, PLUGIN).await.filter(|t| t.contains("loaded")) })
            .await;
        let demo = until("the app's row", || async { text_of(&client, r#"[data-app="demo"]"#).await }).await;
        assert!(demo.contains("clock") && demo.contains("counter") && demo.contains("front"), "{demo}");

        // Unload asks first; cancelled, nothing happens.
        click(&client, r#"[data-extension="plugin"] [data-action="unload"]"#).await;
        until("the confirmation", || async { confirming(&client).await.then_some(()) }).await;
        let asked = text_of(&client, "#confirm").await.unwrap();
        assert!(asked.contains("Unload extension plugin?"), "{asked}");
        screenshot(&client, "unload-confirm.png").await;
        click(&client, r#"#confirm [data-action="cancel"]"#).await;
        until("the dialog to close", || async { (!confirming(&client).await).then_some(()) }).await;
        let called = node.rpc("module.call", json!({"module": "plugin", "function": "get"}));
        assert_eq!(called["result"], json!({"p": 1}), "cancelled: still loaded: {called}");

        // Confirmed: the result says so, and the rows go.
        click(&client, r#"[data-extension="plugin"] [data-action="unload"]"#).await;
        until("the confirmation", || async { confirming(&client).await.then_some(()) }).await;
        click(&client, r#"#confirm [data-action="confirm"]"#).await;
        let result = until("the unload's result", || async {
            text_of(&client, "#result").await.filter(|t| t.contains("unloaded"))
        })
        .await;
        assert!(result.contains("extension") && result.contains("plugin"), "{result}");
        until("the rows to go", || async {
            let left = script(
                &client,
                r#"return document.querySelectorAll('[data-extension="plugin"], [data-module="plugin"]').length"#,
            )
            .await;
            (left == json!(0)).then_some(())
        })
        .await;
        let called = node.rpc("module.call", json!({"module": "plugin", "function": "get"}));
        assert_eq!(called["error"]["data"]["code"], "NOT_FOUND", "{called}");
        let history = until("the history's unload row", || async {
            text_of(&client, "#history").await.filter(|t| t.contains("unload") && t.contains("unloaded"))
        })
        .await;
        assert!(history.contains("plugin"), "{history}");

        // The app: confirmed, its modules and process go.
        click(&client, r#"[data-app="demo"] [data-action="unload"]"#).await;
        until("the confirmation", || async { confirming(&client).await.then_some(()) }).await;
        assert!(text_of(&client, "#confirm").await.unwrap().contains("Unload app demo?"));
        click(&client, r#"#confirm [data-action="confirm"]"#).await;
        until("the app's modules to go", || async {
            let left =
                script(&client, "return document.querySelectorAll('[data-module], [data-app], [data-process]').length")
                    .await;
            (left == json!(0)).then_some(())
        })
        .await;
        let result = text_of(&client, "#result").await.unwrap();
        assert!(result.contains("app demo") && result.contains("unloaded"), "{result}");
        let status = node.status();
        assert!(status["apps"].as_array().unwrap().is_empty() && status["modules"].as_array().unwrap().is_empty());
        client.close().await.unwrap();
    });
}
