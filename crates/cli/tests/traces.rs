//! Traces over OpenTelemetry (issue 28, `docs/control.md`, "Traces"): `zest
//! serve` with `[telemetry] otlp` exports its spans to a real OTLP/HTTP
//! receiver this test starts — a small hyper server that decodes what the
//! exporter sends with the official protobuf types (`opentelemetry-proto`) —
//! and stops when the test ends. A standalone reload is a span with its request
//! id, kind, target and status; a cluster reload across three members is one
//! trace, every member's phases children of the coordinator's; a collector
//! that never answers holds no reload up.

mod support;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use support::{demo_app, free_port, set_clock, Etcd, Fleet, Served, LEASE_TTL, PREPARE_TIMEOUT};

/// One span as the receiver got it, with the node (resource) that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    node: String,
    span: Span,
}

impl Received {
    fn name(&self) -> &str {
        &self.span.name
    }

    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        Any::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// An OTLP/HTTP receiver on a port of its own: `POST /v1/traces` with a
/// protobuf `ExportTraceServiceRequest`, answered as a collector answers.
/// Its runtime, and with it the server, stops when it is dropped.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (got, seen) = (Arc::clone(&spans), Arc::clone(&requests));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (got, seen) = (Arc::clone(&got), Arc::clone(&seen));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let (got, seen) = (Arc::clone(&got), Arc::clone(&seen));
                        async move {
                            let (head, body) = request.into_parts();
                            let kind = head.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                            seen.lock().unwrap().push(format!("{} {} {kind}", head.method, head.uri.path()));
                            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = match ExportTraceServiceRequest::decode(bytes) {
                                Ok(export) if head.uri.path() == "/v1/traces" => {
                                    got.lock().unwrap().extend(received(export));
                                    200
                                }
                                _ => 400,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(answer)))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Receiver { url, spans, requests, _runtime: runtime }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans carrying `zest.request_id` = `request_id`.
    fn of_request(&self, request_id: &str) -> Vec<Received> {
        self.spans().into_iter().filter(|s| s.attr("zest.request_id").as_deref() == Some(request_id)).collect()
    }
}

fn received(export: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
        let service = attr(&resource, "service.name").unwrap_or_default();
        let node = attr(&resource, "service.instance.id").unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received { service: service.clone(), node: node.clone(), span });
            }
        }
    }
    out
}

fn telemetry(url: &str) -> String {
    format!("[telemetry]\notlp = \"{url}\"\n")
}

/// The request id of the newest history entry of `module` on `node`.
fn newest_request(node: &Served, module: &str) -> String {
    let history = node.rpc("system.history", json!({"module": module, "limit": 1}));
    history["result"]["entries"][0]["request_id"].as_str().unwrap_or_else(|| panic!("no history: {history}")).into()
}

fn one<'a>(spans: &'a [Received], what: &str, pick: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: expected one span, found {}: {found:#?}", found.len());
    found[0]
}

#[test]
fn a_standalone_reload_is_a_span_with_its_request_kind_target_and_status() {
    let receiver = Receiver::start();
    let config = telemetry(&receiver.url);
    let node = Served::start(&["--config", "node.toml"], |dir| std::fs::write(dir.join("node.toml"), &config).unwrap());
    set_clock(&node.dir.join(".zest/demo"), "v2.00");
    let reloaded = node.reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(reloaded["status"], "ok", "{reloaded}");
    let module_request = newest_request(&node, "clock");
    let failed = node.reload(json!({"scope": "module", "module": "nope"}));
    assert_eq!(failed["status"], "error", "{failed}");
    set_clock(&node.dir.join(".zest/demo"), "v3.00");
    let all = node.reload(json!({"scope": "all"}));
    assert_eq!(all["status"], "ok", "{all}");
    let all_request = newest_request(&node, "clock");
    // SIGTERM flushes what is still queued.
    assert_eq!(node.stop(), 0);

    let spans = receiver.spans();
    assert!(!spans.is_empty(), "no span arrived; requests seen: {:?}", receiver.requests.lock().unwrap());
    let module = one(&spans, "the module reload", |s| s.attr("zest.request_id").as_deref() == Some(&module_request));
    assert_eq!(module.name(), "zest.reload");
    assert_eq!((module.service.as_str(), module.node.as_str()), ("zest", "127.0.0.1:0"), "{module:#?}");
    assert_eq!(module.attr("zest.kind").as_deref(), Some("module"));
    assert_eq!(module.attr("zest.target").as_deref(), Some("clock"));
    assert_eq!(module.attr("zest.role").as_deref(), Some("coordinator"));
    assert_eq!(module.attr("zest.status").as_deref(), Some("ok"));
    let ms: f64 = module.attr("zest.duration_ms").unwrap().parse().unwrap();
    let reported = reloaded["duration_ms"].as_f64().unwrap();
    assert!((ms - reported).abs() < 0.01, "span {ms} ms, result {reported} ms");
    assert!(module.parent().is_empty(), "a request's span is a trace's root: {module:#?}");
    assert!(module.span.end_time_unix_nano >= module.span.start_time_unix_nano);

    let error = one(&spans, "the failed reload", |s| s.attr("zest.target").as_deref() == Some("nope"));
    assert_eq!(error.attr("zest.status").as_deref(), Some("error"));
    assert_eq!(error.span.status.as_ref().map(|s| s.code), Some(2), "OTel status ERROR: {error:#?}");

    // Scope all: the request, and its app a child of it in the same trace.
    let all_spans = receiver.of_request(&all_request);
    let root = one(&all_spans, "scope all", |s| s.attr("zest.kind").as_deref() == Some("system"));
    let app = one(&all_spans, "its app", |s| s.attr("zest.kind").as_deref() == Some("app"));
    assert_eq!(app.attr("zest.target").as_deref(), Some("demo"));
    assert_eq!((app.trace_id(), app.parent()), (root.trace_id(), root.id()));
    assert_eq!(app.attr("zest.status").as_deref(), Some("ok"));
}

#[test]
fn a_collector_that_never_answers_holds_no_reload_up() {
    // Connections are accepted by the kernel and never read: every export
    // waits for its timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let config = telemetry(&url);
    let node = Served::start(&["--config", "node.toml"], |dir| std::fs::write(dir.join("node.toml"), &config).unwrap());
    let started = Instant::now();
    for n in 0..20 {
        set_clock(&node.dir.join(".zest/demo"), &format!("v{n:04}"));
        let reloaded = node.reload(json!({"scope": "module", "module": "clock"}));
        assert_eq!(reloaded["status"], "ok", "{reloaded}");
    }
    // Twenty reloads with a full second's export batches stuck: each took
    // milliseconds.
    assert!(started.elapsed() < Duration::from_secs(10), "reloads waited: {:?}", started.elapsed());
    let reloads = started.elapsed();
    let stopping = Instant::now();
    assert_eq!(node.stop(), 0);
    let stopped = stopping.elapsed();
    eprintln!("20 reloads against a silent collector: {reloads:?}; SIGTERM to exit: {stopped:?}");
    assert!(stopped < Duration::from_secs(12), "stopping waited {stopped:?}");

    // Nothing listening at all: the same.
    let config = telemetry(&format!("http://127.0.0.1:{}", free_port()));
    let node = Served::start(&["--config", "node.toml"], |dir| std::fs::write(dir.join("node.toml"), &config).unwrap());
    set_clock(&node.dir.join(".zest/demo"), "v9.99");
    let reloaded = node.reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(reloaded["status"], "ok", "{reloaded}");
    assert_eq!(node.stop(), 0);
    drop(silent);
}

#[test]
fn a_bad_otlp_url_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.toml"), "[telemetry]\notlp = \"localhost:4318\"\n").unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--config", "node.toml"];
    let refused = Served::try_spawn(dir.path().to_path_buf(), None, &args, ".zest/admin.token", &[])
        .map(Served::kill)
        .expect_err("a bad URL does not start");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("telemetry.otlp: \"localhost:4318\": an OTLP endpoint is http://HOST:PORT"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_cluster_reload_is_one_trace_across_its_members() {
    let receiver = Receiver::start();
    let ids = ["a", "b", "c"];
    let extra = telemetry(&receiver.url);
    let mut fleet = Fleet::start_configured(Etcd::start(), &ids, demo_app(), PREPARE_TIMEOUT, LEASE_TTL, &[], &extra);
    fleet.set_clock("a", "v2.00");
    let reloaded = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(reloaded["status"], "ok", "{reloaded}");
    assert_eq!(reloaded["metadata"]["cluster"]["phase"], "committed", "{reloaded}");
    for id in ids {
        assert_eq!(fleet.vsn(id, "clock"), "v2.00");
    }
    let request = newest_request(fleet.member("a"), "clock");
    for id in ids {
        assert_eq!(fleet.take(id).stop(), 0, "member {id} stops");
    }

    let spans = receiver.of_request(&request);
    let trace = spans.first().map(Received::trace_id).unwrap_or_else(|| panic!("no span of {request}"));
    for span in &spans {
        assert_eq!(span.trace_id(), trace, "one trace: {span:#?}");
        assert_eq!(span.service, "zest");
    }
    let on = |node: &'static str, name: &'static str, role: Option<&'static str>| {
        one(&spans, &format!("{name} on {node}"), move |s| {
            s.node == node && s.name() == name && (role.is_none() || s.attr("zest.role").as_deref() == role)
        })
    };
    let root = on("a", "zest.reload", Some("coordinator"));
    assert!(root.parent().is_empty(), "the coordinator's request is the root: {root:#?}");
    assert_eq!(root.attr("zest.kind").as_deref(), Some("module"));
    assert_eq!(root.attr("zest.target").as_deref(), Some("clock"));
    assert_eq!(root.attr("zest.status").as_deref(), Some("ok"));
    let prepare = on("a", "zest.cluster.prepare", None);
    let commit = on("a", "zest.cluster.commit", None);
    assert_eq!((prepare.parent(), commit.parent()), (root.id(), root.id()));
    assert_eq!(prepare.attr("zest.outcome").as_deref(), Some("prepared"));
    let revision = reloaded["metadata"]["cluster"]["revision"].to_string();
    assert_eq!(commit.attr("zest.revision"), Some(revision.clone()));
    for member in ["b", "c"] {
        let their_prepare = on(member, "zest.cluster.prepare", None);
        assert_eq!(their_prepare.parent(), prepare.id(), "{member}'s prepare is a child of a's");
        assert_eq!(their_prepare.attr("zest.node").as_deref(), Some(member));
        let their_commit = on(member, "zest.cluster.commit", None);
        assert_eq!(their_commit.parent(), commit.id(), "{member}'s commit is a child of a's");
        assert_eq!(their_commit.attr("zest.revision"), Some(revision.clone()));
        let part = on(member, "zest.reload", Some("member"));
        assert_eq!(part.parent(), their_prepare.id(), "{member}'s part starts in its prepare");
        assert_eq!(
            (part.attr("zest.kind").as_deref(), part.attr("zest.status").as_deref()),
            (Some("module"), Some("ok"))
        );
    }
}
