//! JSON-RPC 2.0 framing, checked before jsonrpsee sees a message (HTTP body or
//! WebSocket frame alike), so that every message gets an answer with
//! `data.code` — never silence, never `INTERNAL_ERROR` for a client's mistake:
//!
//! - not JSON (or not UTF-8, or nested deeper than 128) → `PARSE_ERROR`;
//! - JSON that is not a request (`{}`, `[]`, `3`, a wrong `jsonrpc`, a
//!   `method` that is not a string, `params` that are not an array or
//!   object, an `id` that is an object, array or boolean) → `INVALID_REQUEST`,
//!   per entry in a batch;
//! - an `id` jsonrpsee cannot hold (negative, fractional, beyond u64 — all
//!   valid JSON-RPC) is swapped for a placeholder on the way in and put back,
//!   byte for byte, on the way out; one beyond a double's range (`1e400`) is
//!   `INVALID_REQUEST`;
//! - the event subscription over HTTP, or inside a batch → `INVALID_REQUEST`
//!   (it needs a WebSocket of its own); over a WebSocket it is handed back to
//!   the caller ([`Vetted::Subscription`]);
//! - a batch of more than [`MAX_BATCH`] entries → `INVALID_REQUEST`.
//!
//! [`finish`] completes what jsonrpsee answered: placeholders back, the
//! batch's refused entries added, `data.code` on every error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::protocol::{SUBSCRIBE, UNSUBSCRIBE};
use crate::wire::Code;

/// The most requests one batch may hold.
pub const MAX_BATCH: usize = 1_000;

/// How a message came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

/// What to do with a message.
#[derive(Debug, PartialEq)]
pub enum Vetted {
    /// Answer this JSON text; nothing else runs.
    Answer(String),
    /// Hand `body` to jsonrpsee, then [`finish`] its answer with `fixes`.
    Pass { body: String, fixes: Fixes },
    /// A WebSocket's `system.subscribe_events` or `system.unsubscribe_events`
    /// (`id` as raw JSON, `params` absent as `null`).
    Subscription { method: String, id: String, params: Value },
}

/// What [`finish`] must do to jsonrpsee's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Fixes {
    /// (placeholder as a JSON string, the original id's raw JSON)
    ids: Vec<(String, String)>,
    /// Answers for a batch's entries refused here.
    refused: Vec<Value>,
    batch: bool,
    /// The method of a frame that is one call (not a batch, a notification or
    /// a call with id null).
    call: Option<String>,
}

impl Fixes {
    /// The method, when the frame is one call (not a batch, a notification or
    /// a call with id null).
    pub fn single_call(&self) -> Option<&str> {
        self.call.as_deref()
    }
}

/// An error answer with `id` (raw JSON).
pub fn error_answer(id: &str, code: Code, message: &str) -> String {
    let error = json!({"code": code.numeric(), "message": message, "data": {"code": code.as_str()}});
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#)
}

fn error_value(id: &str, code: Code, message: &str) -> Value {
    serde_json::from_str(&error_answer(id, code, message)).expect("error answers are JSON")
}

/// Checks `message` (see the module documentation).
pub fn vet(message: &[u8], transport: Transport) -> Vetted {
    let answer = |code: Code, text: &str| Vetted::Answer(error_answer("null", code, text));
    let top: Box<RawValue> = match serde_json::from_slice(message) {
        Ok(top) => top,
        Err(err) => return answer(Code::ParseError, &format!("Parse error: {err}")),
    };
    let text = top.get().trim_start();
    let mut fixes = Fixes::default();
    if text.starts_with('[') {
        let entries: Vec<Box<RawValue>> = serde_json::from_str(top.get()).expect("an array of JSON values");
        if entries.is_empty() {
            return answer(Code::InvalidRequest, "Invalid request: an empty batch");
        }
        if entries.len() > MAX_BATCH {
            return answer(
                Code::InvalidRequest,
                &format!("Invalid request: a batch of {} requests; at most {MAX_BATCH}", entries.len()),
            );
        }
        fixes.batch = true;
        let mut passed = Vec::new();
        for entry in &entries {
            match request(entry, transport, true, &mut fixes) {
                Ok(body) => passed.push(body),
                Err(refused) => fixes.refused.push(refused),
            }
        }
        if passed.is_empty() {
            return Vetted::Answer(Value::Array(fixes.refused).to_string());
        }
        return Vetted::Pass { body: format!("[{}]", passed.join(",")), fixes };
    }
    if !text.starts_with('{') {
        return answer(Code::InvalidRequest, "Invalid request: a request is a JSON object (or a batch of them)");
    }
    if let (Transport::WebSocket, Some(subscription)) = (transport, subscription(&top)) {
        return subscription;
    }
    match request(&top, transport, false, &mut fixes) {
        Ok(body) => Vetted::Pass { body, fixes },
        Err(refused) => Vetted::Answer(refused.to_string()),
    }
}

/// One request object, as it goes on to jsonrpsee; `Err`: the answer that
/// refuses it. An invalid request gets one even without an id (with id
/// null): only a valid notification goes unanswered.
fn request(entry: &RawValue, transport: Transport, in_batch: bool, fixes: &mut Fixes) -> Result<String, Value> {
    let invalid = |id: &str, why: &str| error_value(id, Code::InvalidRequest, &format!("Invalid request: {why}"));
    let fixes_before = fixes.ids.len();
    let Ok(mut fields) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(entry.get()) else {
        return Err(invalid("null", "a request is a JSON object"));
    };
    // The id first: every other refusal names it.
    let id = match fields.get("id").map(|raw| raw.get().trim().to_string()) {
        None => None,
        Some(raw) => match id_kind(&raw) {
            IdKind::Plain => Some(raw),
            IdKind::Replace => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let placeholder = format!("\u{1}zest-id-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let encoded = serde_json::to_string(&placeholder).expect("strings serialise");
                fields.insert("id".into(), RawValue::from_string(encoded.clone()).expect("a JSON string"));
                fixes.ids.push((encoded, raw.clone()));
                Some(raw)
            }
            IdKind::Invalid => return Err(invalid("null", "an id is a (valid) string, a number or null")),
        },
    };
    let shown = id.unwrap_or_else(|| "null".into());
    let refuse = |why: &str| Err(invalid(&shown, why));
    if fields.get("jsonrpc").map(|raw| raw.get().trim()) != Some("\"2.0\"") {
        return refuse("\"jsonrpc\": \"2.0\" is required");
    }
    let method = match fields.get("method").map(|raw| serde_json::from_str::<String>(raw.get())) {
        Some(Ok(method)) => method,
        _ => return refuse("\"method\" is required, a string"),
    };
    if let Some(params) = fields.get("params") {
        let text = params.get().trim_start();
        if !(text.starts_with('[') || text.starts_with('{') || text == "null") {
            return refuse("\"params\" is an array or an object");
        }
    }
    if method == SUBSCRIBE || method == UNSUBSCRIBE {
        let why = match (transport, in_batch) {
            (Transport::Http, _) => format!("{method} needs a WebSocket connection (events are pushed over it)"),
            _ => format!("{method} goes alone, not in a batch"),
        };
        return refuse(&why);
    }
    if !in_batch && shown != "null" {
        fixes.call = Some(method);
    }
    if fixes_before == fixes.ids.len() {
        // Nothing changed: the request goes on as it came.
        return Ok(entry.get().to_string());
    }
    Ok(serde_json::to_string(&fields).expect("raw values serialise"))
}

/// A WebSocket's subscribe or unsubscribe request, when `top` is one.
fn subscription(top: &RawValue) -> Option<Vetted> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        jsonrpc: &'a str,
        method: String,
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        params: Option<Value>,
    }
    let shape: Shape<'_> = serde_json::from_str(top.get()).ok()?;
    if shape.jsonrpc != "2.0" || (shape.method != SUBSCRIBE && shape.method != UNSUBSCRIBE) {
        return None;
    }
    let id = shape.id.map(|raw| raw.get().trim().to_string())?;
    if id_kind(&id) == IdKind::Invalid {
        return None;
    }
    Some(Vetted::Subscription { method: shape.method, id, params: shape.params.unwrap_or(Value::Null) })
}

#[derive(Debug, PartialEq, Eq)]
enum IdKind {
    /// A string, null, or an integer jsonrpsee holds (0..=u64::MAX).
    Plain,
    /// A number jsonrpsee cannot hold.
    Replace,
    /// Not an id at all.
    Invalid,
}

fn id_kind(raw: &str) -> IdKind {
    match raw.as_bytes().first() {
        // serde_json's raw values skip over escapes: a lone surrogate
        // (`"\ud800"`) would pass, then fail in every answer that names it.
        Some(b'"') if !raw.contains('\\') || serde_json::from_str::<String>(raw).is_ok() => IdKind::Plain,
        Some(b'n') => IdKind::Plain,
        Some(b'-' | b'0'..=b'9') if raw.parse::<u64>().is_ok() => IdKind::Plain,
        // A number too large for any double (1e400) is refused: few clients
        // could read it back.
        Some(b'-' | b'0'..=b'9') if raw.parse::<f64>().is_ok_and(f64::is_finite) => IdKind::Replace,
        _ => IdKind::Invalid,
    }
}

/// jsonrpsee's answer (`""` when it answers nothing), completed.
pub fn finish(answer: &str, fixes: &Fixes) -> String {
    // The ids go back last: an answer parsed again below would turn an id
    // only a placeholder could carry (1e29) into a double.
    let mut text = completed(answer, fixes);
    for (placeholder, raw) in &fixes.ids {
        text = text.replace(placeholder.as_str(), raw);
    }
    text
}

/// jsonrpsee's answer with the codes and refused entries added.
fn completed(answer: &str, fixes: &Fixes) -> String {
    if answer.trim().is_empty() {
        return if fixes.refused.is_empty() { String::new() } else { Value::Array(fixes.refused.clone()).to_string() };
    }
    // Most answers hold no error and nothing to add: not parsed again.
    if fixes.refused.is_empty() && !answer.contains("\"error\"") {
        return answer.to_string();
    }
    let Ok(mut value) = serde_json::from_str::<Value>(answer) else { return answer.to_string() };
    match &mut value {
        Value::Array(items) => {
            items.iter_mut().for_each(|item| {
                add_code(item);
            });
            items.extend(fixes.refused.iter().cloned());
        }
        item => {
            add_code(item);
            if fixes.batch {
                value = Value::Array(std::iter::once(value).chain(fixes.refused.iter().cloned()).collect());
            }
        }
    }
    value.to_string()
}

/// Adds `data.code` to an error answer that lacks one; true if it did.
pub fn add_code(response: &mut Value) -> bool {
    let Some(error) = response.get_mut("error").and_then(Value::as_object_mut) else {
        return false;
    };
    if error.get("data").and_then(|d| d.get("code")).is_some() {
        return false;
    }
    let code = Code::of_numeric(error.get("code").and_then(Value::as_i64).unwrap_or(-32603)).as_str();
    match error.get_mut("data") {
        Some(Value::Object(data)) => {
            data.insert("code".into(), json!(code));
        }
        Some(other) => {
            let detail = other.take();
            error.insert("data".into(), json!({"code": code, "detail": detail}));
        }
        None => {
            error.insert("data".into(), json!({"code": code}));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(message: &str, transport: Transport) -> Value {
        match vet(message.as_bytes(), transport) {
            Vetted::Answer(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("{message}: {other:?}"),
        }
    }

    fn code_of(answer: &Value) -> &str {
        answer["error"]["data"]["code"].as_str().unwrap_or_else(|| panic!("{answer}"))
    }

    #[test]
    fn what_is_not_a_request_is_answered_with_its_code() {
        for (message, code) in [
            ("", "PARSE_ERROR"),
            ("{", "PARSE_ERROR"),
            ("\u{fffd}", "PARSE_ERROR"),
            ("{}", "INVALID_REQUEST"),
            ("[]", "INVALID_REQUEST"),
            ("3", "INVALID_REQUEST"),
            ("\"x\"", "INVALID_REQUEST"),
            (r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":[],"method":"m"}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":1e400,"method":"m"}"#, "INVALID_REQUEST"),
            // A lone surrogate (found by the rpc_frame fuzz target).
            (r#"{"jsonrpc":"2.0","id":"\ud800sub","method":"m"}"#, "INVALID_REQUEST"),
            (r#"{"jsonrpc":"2.0","id":"\ud800","method":"system.subscribe_events"}"#, "INVALID_REQUEST"),
        ] {
            assert_eq!(code_of(&answered(message, Transport::Http)), code, "{message}");
        }
        // Deep nesting is refused, never a stack overflow.
        for depth in [200, 1_000_000] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let answer = answered(&deep, Transport::Http);
            let answer = if answer.is_array() { answer[0].clone() } else { answer };
            assert!(["PARSE_ERROR", "INVALID_REQUEST"].contains(&code_of(&answer)), "{depth}: {answer}");
        }
        // Invalid UTF-8 inside a string.
        let Vetted::Answer(text) = vet(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}", Transport::Http) else {
            panic!()
        };
        assert!(text.contains("PARSE_ERROR"), "{text}");
        // The id of a refused request is named in its answer.
        let answer = answered(r#"{"jsonrpc":"2.0","id":"a","method":5}"#, Transport::Http);
        assert_eq!(answer["id"], "a");
    }

    #[test]
    fn ids_jsonrpsee_cannot_hold_go_through_a_placeholder_and_come_back_as_sent() {
        for id in ["-1", "1.5", "123456789012345678901234567890", "1e3", "-0"] {
            let message = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"system.status"}}"#);
            let Vetted::Pass { body, fixes } = vet(message.as_bytes(), Transport::Http) else { panic!("{id}") };
            let sent: Value = serde_json::from_str(&body).unwrap();
            let placeholder = sent["id"].as_str().unwrap().to_string();
            let jsonrpsee = json!({"jsonrpc": "2.0", "id": placeholder, "result": 1}).to_string();
            let finished = finish(&jsonrpsee, &fixes);
            assert!(finished.contains(&format!(r#""id":{id}"#)), "{id}: {finished}");
            // An answer that names an error (parsed again for its code), or
            // a result that holds the word (status with a tool missing).
            let error = json!({"jsonrpc": "2.0", "id": placeholder, "error": {"code": -32601, "message": "no"}});
            let result = json!({"jsonrpc": "2.0", "id": placeholder, "result": {"error": "a tool is missing"}});
            for jsonrpsee in [error, result] {
                let finished = finish(&jsonrpsee.to_string(), &fixes);
                assert!(finished.contains(&format!(r#""id":{id}"#)), "{id}: {finished}");
            }
        }
        for id in ["7", "\"seven\"", "null", "18446744073709551615"] {
            let message = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"system.status"}}"#);
            let Vetted::Pass { fixes, .. } = vet(message.as_bytes(), Transport::Http) else { panic!("{id}") };
            assert!(fixes.ids.is_empty() && fixes.refused.is_empty(), "{id} passes as it is: {fixes:?}");
        }
    }

    #[test]
    fn a_batch_passes_its_good_entries_and_answers_for_the_rest() {
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"system.status"}, 5, {"jsonrpc":"2.0","method":"x"},
                        {"jsonrpc":"2.0","id":2,"method":"system.subscribe_events"}]"#;
        let Vetted::Pass { body, fixes } = vet(batch.as_bytes(), Transport::WebSocket) else { panic!() };
        assert_eq!(serde_json::from_str::<Vec<Value>>(&body).unwrap().len(), 2, "{body}");
        let jsonrpsee = r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#;
        let finished: Vec<Value> = serde_json::from_str(&finish(jsonrpsee, &fixes)).unwrap();
        assert_eq!(finished.len(), 3, "{finished:?}");
        assert_eq!(code_of(&finished[1]), "INVALID_REQUEST");
        assert_eq!((finished[2]["id"].as_i64(), code_of(&finished[2])), (Some(2), "INVALID_REQUEST"));
        let too_many = format!("[{}]", vec![r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#; MAX_BATCH + 1].join(","));
        assert_eq!(code_of(&answered(&too_many, Transport::Http)), "INVALID_REQUEST");
        // An invalid request without an id still gets an answer, id null.
        let refused = answered(r#"[{"jsonrpc":"2.0","method":5}]"#, Transport::Http);
        assert_eq!((refused[0]["id"].clone(), code_of(&refused[0])), (Value::Null, "INVALID_REQUEST"));
    }

    #[test]
    fn only_a_lone_call_with_an_id_is_a_single_call() {
        let method = |message: &str| match vet(message.as_bytes(), Transport::WebSocket) {
            Vetted::Pass { fixes, .. } => fixes.single_call().map(str::to_string),
            other => panic!("{message}: {other:?}"),
        };
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":1,"method":"module.call"}"#).as_deref(), Some("module.call"));
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":-1,"method":"status"}"#).as_deref(), Some("status"));
        assert_eq!(method(r#"{"jsonrpc":"2.0","method":"module.call"}"#), None, "a notification");
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":null,"method":"module.call"}"#), None, "id null");
        assert_eq!(method(r#"[{"jsonrpc":"2.0","id":1,"method":"module.call"}]"#), None, "a batch");
    }

    #[test]
    fn subscriptions_need_a_websocket_of_their_own() {
        let subscribe = r#"{"jsonrpc":"2.0","id":-4,"method":"system.subscribe_events","params":[]}"#;
        let answer = answered(subscribe, Transport::Http);
        assert_eq!((code_of(&answer), answer["id"].as_i64()), ("INVALID_REQUEST", Some(-4)));
        assert!(answer["error"]["message"].as_str().unwrap().contains("needs a WebSocket"));
        let Vetted::Subscription { method, id, params } = vet(subscribe.as_bytes(), Transport::WebSocket) else {
            panic!()
        };
        assert_eq!((method.as_str(), id.as_str(), params), (SUBSCRIBE, "-4", json!([])));
    }

    #[test]
    fn errors_without_a_code_get_one() {
        let jsonrpsee = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}"#;
        let finished: Value = serde_json::from_str(&finish(jsonrpsee, &Fixes::default())).unwrap();
        assert_eq!(finished["error"]["data"]["code"], "METHOD_NOT_FOUND");
    }
}
