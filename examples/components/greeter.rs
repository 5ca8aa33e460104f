//! A plugin in the guest SDK's component form: plain Rust functions, served
//! through `zest:guest/dynamic` by their names. The node makes this module a
//! component when it loads it (`docs/abi.md`, "Rust components").
//!
//! ```text
//! greet {"name": "ops"}                      →  {"greeting": "hello, ops"}
//! sum [1, 2, 3.5]                            →  6.5
//! relay {"module", "function", "args"}       →  {"relayed": <that function's answer>}
//! now                                        →  the host's clock, in ms
//! ```

use zest_guest::component;
use zest_guest::{Json, Level};

/// `{"name": "..."}` → `{"greeting": "hello, ..."}`.
fn greet(args: Json) -> Result<Json, String> {
    let name = args.get("name").and_then(Json::as_str).unwrap_or("world");
    component::log(Level::Info, &format!("greeting {}", name));
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

/// `{"module", "function", "args"}` → `{"relayed": ...}`: a call into another
/// module's current version, core module or component. Its failure comes back
/// as an `Err` worded as the node reports a failed call (`greeter.sum failed:
/// ...`), which this function passes on as its own.
fn relay(args: Json) -> Result<Json, String> {
    let module = args.get("module").and_then(Json::as_str).ok_or("relay needs `module`")?;
    let function = args.get("function").and_then(Json::as_str).ok_or("relay needs `function`")?;
    let inner = args.get("args").cloned().unwrap_or(Json::Null);
    let result = component::call(module, function, &inner)?;
    Ok(Json::object(vec![("relayed", result)]))
}

/// The host's wall clock, in milliseconds since the Unix epoch.
fn now(_args: Json) -> Result<Json, String> {
    Ok(Json::from(component::now_ms() as i64))
}


zest_guest::component! {
    vsn: "greeter-1",
    functions: [greet, sum, relay, now],
}
