//! A module written with the zest guest SDK: one file, built by a plain `rustc`
//! (see `docs/abi.md`). Load it with the runtime, then call `greet`:
//!
//! ```text
//! greet {"name": "ops"}  →  {"greeting": "hello, ops"}
//! ```

use zest_guest::{export, log, vsn, Json, Level};

vsn!("hello-1.0.0");

/// `{"name": "..."}` → `{"greeting": "hello, ..."}`.
fn greet(args: Json) -> Result<Json, String> {
    let name = args.get("name").and_then(Json::as_str).unwrap_or("world");
    log(Level::Info, &format!("greeting {}", name));
    Ok(Json::object(vec![("greeting", Json::from(format!("hello, {}", name)))]))
}

/// `[1, 2, 3.5]` → `6.5`; anything but an array of numbers fails the call.
fn sum(args: Json) -> Result<Json, String> {
    let items = args.as_array().ok_or("sum takes an array of numbers")?;
    let mut total = 0.0;
    for item in items {
        total += item.as_f64().ok_or_else(|| format!("not a number: {}", item))?;
    }
    Ok(Json::from(total))
}

/// `{"module", "function", "args"}` → `{"relayed": <what that function returned>}`:
/// a call into another module's current version.
fn relay(args: Json) -> Result<Json, String> {
    let module = args.get("module").and_then(Json::as_str).ok_or("relay needs `module`")?;
    let function = args.get("function").and_then(Json::as_str).ok_or("relay needs `function`")?;
    let inner = args.get("args").cloned().unwrap_or(Json::Null);
    let result = zest_guest::call(module, function, &inner);
    Ok(Json::object(vec![("relayed", result)]))
}

/// The host's wall clock, in milliseconds since the Unix epoch.
fn now(_args: Json) -> Result<Json, String> {
    Ok(Json::from(zest_guest::now_ms()))
}

export!(greet, sum, relay, now);
