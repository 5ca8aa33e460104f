//! zest-guest: the Rust SDK for writing zest modules (guest ABI version 1,
//! `docs/abi.md`).
//!
//! It builds for `wasm32-unknown-unknown` with Rust 1.63 and no dependencies, so a
//! module can be one `.rs` file compiled by a plain `rustc`. It provides:
//!
//! - `zest_alloc`, exported for you;
//! - [`export!`], which turns `fn(Json) -> Result<Json, String>` functions into
//!   callable exports (JSON in, JSON out; an `Err` fails the call with its message);
//! - [`vsn!`], which exports `zest_vsn`;
//! - [`process!`], which exports a process's `zest_init`, `zest_handle`,
//!   `zest_state_save` and `zest_code_change`, and [`Change`], what a code change
//!   receives (its [`Direction`]: `Up`, or `Down` when a rollback moves the
//!   process back to an earlier build);
//! - the host imports: [`error`], [`log`], [`call`], [`now_ms`];
//! - [`Json`], a small JSON value with a parser and a serialiser;
//! - the component form ([`component`](mod@component), [`component!`]): the same
//!   functions, and a process as a [`component::Server`], served through the
//!   WIT package `zest:guest@1.0.0`; the node makes the module a component
//!   when it loads it.
//!
//! A module is one file like this (`examples/guests/hello.rs` is a complete one,
//! built and loaded by the runtime's tests):
//!
//! ```text
//! use zest_guest::{export, Json};
//!
//! fn greet(args: Json) -> Result<Json, String> {
//!     let name = args.get("name").and_then(Json::as_str).unwrap_or("world");
//!     Ok(Json::object(vec![("greeting", Json::from(format!("hello, {}", name)))]))
//! }
//! export!(greet);
//! ```

pub mod component;
mod json;

pub use json::Json;

/// Log levels of the `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "zest")]
    extern "C" {
        pub fn error(ptr: *const u8, len: usize);
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn call(
            mod_ptr: *const u8,
            mod_len: usize,
            fn_ptr: *const u8,
            fn_len: usize,
            args_ptr: *const u8,
            args_len: usize,
        ) -> i64;
        pub fn now_ms() -> i64;
    }
}

/// Fails the current call with `message`; never returns.
#[cfg(target_arch = "wasm32")]
pub fn error(message: &str) -> ! {
    unsafe {
        imports::error(message.as_ptr(), message.len());
        core::arch::wasm32::unreachable()
    }
}

/// Logs `message` into the node's tracing, attributed to this module.
#[cfg(target_arch = "wasm32")]
pub fn log(level: Level, message: &str) {
    unsafe { imports::log(level as i32, message.as_ptr(), message.len()) }
}

/// Calls `function` of `module`'s current version. If the callee fails, this call
/// fails with the callee's error (the host unwinds it), so this never returns one.
#[cfg(target_arch = "wasm32")]
pub fn call(module: &str, function: &str, args: &Json) -> Json {
    let args = args.to_json();
    let packed = unsafe {
        imports::call(module.as_ptr(), module.len(), function.as_ptr(), function.len(), args.as_ptr(), args.len())
    };
    let bytes = unsafe { take_packed(packed) };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => error("the host returned output that is not UTF-8"),
    };
    match Json::parse(&text) {
        Ok(value) => value,
        Err(message) => error(&(String::from("the host returned invalid JSON: ") + &message)),
    }
}

/// Wall-clock milliseconds since the Unix epoch.
#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> i64 {
    unsafe { imports::now_ms() }
}

/// `zest_alloc(len)`: `len` writable bytes for the host's input. Ownership passes to
/// the function the host calls next, which frees them (see [`dispatch`]).
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn zest_alloc(len: i32) -> i32 {
    let mut buffer: Vec<u8> = Vec::with_capacity(len.max(0) as usize);
    let ptr = buffer.as_mut_ptr();
    core::mem::forget(buffer);
    ptr as i32
}

/// Takes back a buffer made by `zest_alloc` and filled by the host.
///
/// # Safety
/// `ptr` and `len` must come from one `zest_alloc(len)` call, filled by the host.
#[cfg(target_arch = "wasm32")]
unsafe fn take_input(ptr: i32, len: i32) -> Vec<u8> {
    let len = len.max(0) as usize;
    Vec::from_raw_parts(ptr as *mut u8, len, len)
}

/// Takes back a packed `(ptr << 32) | len` buffer the host wrote through `zest_alloc`.
///
/// # Safety
/// `packed` must describe a buffer made by `zest_alloc` and filled by the host.
#[cfg(target_arch = "wasm32")]
unsafe fn take_packed(packed: i64) -> Vec<u8> {
    let ptr = ((packed as u64) >> 32) as i32;
    let len = (packed as u64 & 0xffff_ffff) as i32;
    take_input(ptr, len)
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// The last output handed to the host; kept alive until the next call replaces it.
    static OUTPUT: core::cell::RefCell<Vec<u8>> = core::cell::RefCell::new(Vec::new());
}

/// Hands `bytes` to the host as a packed `(ptr << 32) | len`.
#[cfg(target_arch = "wasm32")]
pub fn output(bytes: Vec<u8>) -> i64 {
    OUTPUT.with(|slot| {
        let mut slot = slot.borrow_mut();
        *slot = bytes;
        (((slot.as_ptr() as u32 as u64) << 32) | slot.len() as u64) as i64
    })
}

/// The body of every exported function: reads the JSON input the host wrote at
/// `[ptr, ptr+len)`, runs `f`, and returns its output packed, or fails the call
/// with the `Err` message. Not generic, so each export costs its crate one
/// small shim.
#[cfg(target_arch = "wasm32")]
pub fn dispatch(ptr: i32, len: i32, f: fn(Json) -> Result<Json, String>) -> i64 {
    let input = unsafe { take_input(ptr, len) };
    let text = match core::str::from_utf8(&input) {
        Ok(text) => text,
        Err(_) => error("the input is not UTF-8"),
    };
    let args = if text.is_empty() {
        Json::Null
    } else {
        match Json::parse(text) {
            Ok(args) => args,
            Err(message) => error(&(String::from("the input is not valid JSON: ") + &message)),
        }
    };
    drop(input);
    match f(args) {
        Ok(value) => output(value.to_json().into_bytes()),
        Err(message) => error(&message),
    }
}

/// Exports each named `fn(Json) -> Result<Json, String>` as a callable function of
/// the same name.
#[macro_export]
macro_rules! export {
    ($($name:ident),+ $(,)?) => {
        $(
            const _: () = {
                #[export_name = stringify!($name)]
                extern "C" fn export(ptr: i32, len: i32) -> i64 {
                    $crate::dispatch(ptr, len, $name)
                }
            };
        )+
    };
}

/// Which way a code change migrates a process: `Down` when a rollback moves it
/// back to an earlier build (OTP's `{down, Vsn}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// What `zest_code_change` receives: the version the state comes from, the
/// state (as the old build's `zest_state_save` wrote it), the operator's
/// `extra`, and the direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub old_vsn: String,
    pub state: Json,
    pub extra: Json,
    pub direction: Direction,
}

impl Change {
    /// Reads the host's input; a missing `direction` is `Up` (hosts before
    /// rollbacks sent none).
    pub fn parse(input: &Json) -> Change {
        let direction = match input.get("direction").and_then(Json::as_str) {
            Some("down") => Direction::Down,
            _ => Direction::Up,
        };
        Change {
            old_vsn: input.get("old_vsn").and_then(Json::as_str).unwrap_or("").to_string(),
            state: input.get("state").cloned().unwrap_or(Json::Null),
            extra: input.get("extra").cloned().unwrap_or(Json::Null),
            direction,
        }
    }
}

/// Exports a process's four functions (CONTRACT.md §2):
///
/// - `init: fn(Json) -> Result<(), String>`, with the init args;
/// - `handle: fn(Json) -> Result<Json, String>`, one message in, the reply out;
/// - `state_save: fn() -> Json`, the state for a migration;
/// - `code_change: fn(Change) -> Result<(), String>`, the state of an older (or,
///   [`Direction::Down`], newer) build taken over by this one.
///
/// The state lives in the module (a `static`, say); the host calls these one at
/// a time.
#[macro_export]
macro_rules! process {
    ($init:ident, $handle:ident, $state_save:ident, $code_change:ident $(,)?) => {
        #[no_mangle]
        pub extern "C" fn zest_init(ptr: i32, len: i32) -> i64 {
            $crate::dispatch(ptr, len, |args| $init(args).map(|()| $crate::Json::Null))
        }
        #[no_mangle]
        pub extern "C" fn zest_handle(ptr: i32, len: i32) -> i64 {
            $crate::dispatch(ptr, len, $handle)
        }
        #[no_mangle]
        pub extern "C" fn zest_state_save() -> i64 {
            $crate::output($state_save().to_json().into_bytes())
        }
        #[no_mangle]
        pub extern "C" fn zest_code_change(ptr: i32, len: i32) -> i64 {
            $crate::dispatch(ptr, len, |input| $code_change($crate::Change::parse(&input)).map(|()| $crate::Json::Null))
        }
    };
}

/// Exports `zest_vsn`, the version string status reports for this build.
#[macro_export]
macro_rules! vsn {
    ($vsn:expr) => {
        #[no_mangle]
        pub extern "C" fn zest_vsn() -> i64 {
            let vsn: &'static str = $vsn;
            (((vsn.as_ptr() as u32 as u64) << 32) | vsn.len() as u64) as i64
        }
    };
}
