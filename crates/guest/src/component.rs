//! The component form of a module (CONTRACT.md §13): the same plain Rust
//! functions, served through the WIT package `zest:guest@1.0.0` instead of
//! the core ABI. The node makes the module a component when it loads it
//! (`wit-component`, in-process), so a `.rs` file built by Rust 1.63 — which
//! has no `wit-bindgen` — still becomes a component.
//!
//! This file is the canonical ABI of the `zest:guest` worlds, written by
//! hand: the imports of `zest:guest/host@1.0.0` ([`log`], [`now_ms`],
//! [`call`]), and the glue [`component!`](crate::component!) puts behind the
//! exports `vsn`, `zest:guest/process@1.0.0` (a [`Server`]) and
//! `zest:guest/dynamic@1.0.0` (functions served by name). A module is one
//! file like this:
//!
//! ```text
//! use zest_guest::component::{self, Server};
//! use zest_guest::{Change, Json};
//!
//! struct Tally { count: i64 }
//!
//! impl Server for Tally {
//!     fn init(args: Json) -> Result<Tally, String> { .. }
//!     fn handle(&mut self, message: Json) -> Result<Json, String> { .. }
//!     fn save_state(&self) -> Json { .. }
//!     fn code_change(change: Change) -> Result<Tally, String> { .. }
//! }
//!
//! fn greet(args: Json) -> Result<Json, String> { .. }
//!
//! zest_guest::component! {
//!     vsn: "tally-2",
//!     server: Tally,
//!     functions: [greet],
//! }
//! ```
//!
//! Every text crossing the interface is JSON, as in the core form, so a
//! process moves between the two forms in either direction with its state.
//!
//! How values cross (the canonical ABI, `docs/abi.md`): the host writes each
//! string argument into memory it asks [`realloc`] for, and the export takes
//! it over; an export returns a pointer to a return area (a string's pointer
//! and length; a `result`'s case byte at 0 and its string at 4 and 8), whose
//! buffers stay alive until the host's post-return call or the next export,
//! whichever comes first.

#![allow(unused_unsafe)] // Rust 1.63 calls an unsafe block in an unsafe fn unneeded

use std::alloc::Layout;
use std::cell::RefCell;

#[cfg(target_arch = "wasm32")]
use crate::Level;
use crate::{Change, Direction, Json};

/// What a long-lived process of the component form is: its state, built by
/// `init` (or by `code_change` when it comes from another build), asked to
/// `handle` one message at a time, saved for a migration by `save_state`.
pub trait Server: Sized {
    /// A process starts with `args`, the JSON its start was given.
    fn init(args: Json) -> Result<Self, String>;
    /// One message in, the reply out; an `Err` fails the message.
    fn handle(&mut self, message: Json) -> Result<Json, String>;
    /// The state a migration hands to the next build's `code_change` (or a
    /// core module's `zest_code_change`).
    fn save_state(&self) -> Json;
    /// This build takes over a process from another: `change.state` is what
    /// that build's `save_state` (or `zest_state_save`) returned.
    fn code_change(change: Change) -> Result<Self, String>;
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "zest:guest/host@1.0.0")]
    extern "C" {
        #[link_name = "log"]
        pub fn host_log(level: i32, ptr: *const u8, len: usize);
        #[link_name = "now-ms"]
        pub fn host_now_ms() -> i64;
        #[link_name = "call"]
        pub fn host_call(
            module_ptr: *const u8,
            module_len: usize,
            function_ptr: *const u8,
            function_len: usize,
            args_ptr: *const u8,
            args_len: usize,
            ret: *mut u8,
        );
    }
}

/// Logs `message` into the node's log, attributed to this module.
#[cfg(target_arch = "wasm32")]
pub fn log(level: Level, message: &str) {
    unsafe { host::host_log(level as i32, message.as_ptr(), message.len()) }
}

/// Wall-clock milliseconds since the Unix epoch.
#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> u64 {
    unsafe { host::host_now_ms() as u64 }
}

/// Calls `function` of `module`'s current version (a core module or a
/// component) with `args`. `Err` holds the callee's failure, as the caller's
/// own call would report it; this call goes on.
#[cfg(target_arch = "wasm32")]
pub fn call(module: &str, function: &str, args: &Json) -> Result<Json, String> {
    let args = args.to_json();
    // result<string, string>: the case byte at 0, the string at 4 and 8.
    let mut area = [0u32; 3];
    unsafe {
        host::host_call(
            module.as_ptr(),
            module.len(),
            function.as_ptr(),
            function.len(),
            args.as_ptr(),
            args.len(),
            area.as_mut_ptr() as *mut u8,
        );
    }
    let text = unsafe { take_string(area[1] as usize as *mut u8, area[2] as usize) };
    if area[0] & 0xff != 0 {
        return Err(text);
    }
    Json::parse(&text).map_err(|message| String::from("the host returned invalid JSON: ") + &message)
}

/// `cabi_realloc`: where the host writes what it hands the module. Called
/// by the export [`component!`](crate::component!) defines.
///
/// # Safety
/// `old` and `old_len` describe a block this function returned with `align`
/// (or `old_len` is 0).
pub unsafe fn realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    // (No let-else: the SDK builds with Rust 1.63.)
    let layout = match Layout::from_size_align(new_len, align.max(1)) {
        Ok(layout) => layout,
        Err(_) => std::process::abort(),
    };
    if new_len == 0 {
        return layout.align() as *mut u8; // dangling and aligned: nothing to hold
    }
    let ptr = if old_len == 0 {
        unsafe { std::alloc::alloc(layout) }
    } else {
        match Layout::from_size_align(old_len, layout.align()) {
            Ok(old_layout) => unsafe { std::alloc::realloc(old, old_layout, new_len) },
            Err(_) => std::process::abort(),
        }
    };
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    ptr
}

/// Takes over a string the host wrote through [`realloc`] (alignment 1).
///
/// # Safety
/// `ptr` and `len` come from the host: a block of `len` bytes from [`realloc`].
unsafe fn take_string(ptr: *mut u8, len: usize) -> String {
    if len == 0 {
        return String::new();
    }
    let bytes = unsafe { Vec::from_raw_parts(ptr, len, len) };
    match String::from_utf8(bytes) {
        Ok(text) => text,
        // The canonical ABI hands over UTF-8 only; keep what can be read.
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// What the last export returned: its return area and the buffers the area
/// points to, alive until [`post_return`] or the next return.
struct Returned {
    area: [u32; 3],
    strings: Vec<String>,
    pairs: Vec<u32>,
}

thread_local! {
    static RETURNED: RefCell<Returned> =
        const { RefCell::new(Returned { area: [0; 3], strings: Vec::new(), pairs: Vec::new() }) };
}

/// Hands `text` to the host as the return area of a `string` result.
fn return_string(text: String) -> *mut u8 {
    RETURNED.with(|slot| {
        let mut slot = slot.borrow_mut();
        slot.strings.clear();
        slot.area = [text.as_ptr() as u32, text.len() as u32, 0];
        slot.strings.push(text);
        slot.area.as_mut_ptr() as *mut u8
    })
}

/// Hands a `result<string, string>` (or `result<_, string>`, with `Ok(None)`)
/// to the host as its return area.
fn return_result(result: Result<Option<String>, String>) -> *mut u8 {
    RETURNED.with(|slot| {
        let mut slot = slot.borrow_mut();
        slot.strings.clear();
        let (case, text) = match result {
            Ok(text) => (0, text),
            Err(message) => (1, Some(message)),
        };
        slot.area = [case, 0, 0];
        if let Some(text) = text {
            slot.area[1] = text.as_ptr() as u32;
            slot.area[2] = text.len() as u32;
            slot.strings.push(text);
        }
        slot.area.as_mut_ptr() as *mut u8
    })
}

/// Frees what the last export returned: the post-return of every export.
pub fn post_return() {
    RETURNED.with(|slot| {
        let mut slot = slot.borrow_mut();
        slot.strings = Vec::new();
        slot.pairs = Vec::new();
    })
}

/// Reads a JSON argument the host handed over; `what` names it in the error.
///
/// # Safety
/// As [`take_string`].
unsafe fn take_json(ptr: *mut u8, len: usize, what: &str) -> Result<Json, String> {
    let text = unsafe { take_string(ptr, len) };
    Json::parse(&text).map_err(|message| String::from(what) + " is not valid JSON: " + &message)
}

/// The export `vsn`.
pub fn export_vsn(vsn: &'static str) -> *mut u8 {
    return_string(String::from(vsn))
}

/// The message a process's functions fail with before `init` or
/// `code_change` made its state.
pub const NO_STATE: &str = "the process has no state: neither init nor code-change has run on this instance";

/// `zest:guest/process#init`: `start` builds and keeps the state.
///
/// # Safety
/// `ptr` and `len` are the host's argument ([`take_string`]).
pub unsafe fn export_init(ptr: *mut u8, len: usize, start: &mut dyn FnMut(Json) -> Result<(), String>) -> *mut u8 {
    let result = unsafe { take_json(ptr, len, "the init args") }.and_then(start);
    return_result(result.map(|()| None))
}

/// `zest:guest/process#handle`.
///
/// # Safety
/// `ptr` and `len` are the host's argument ([`take_string`]).
pub unsafe fn export_handle(ptr: *mut u8, len: usize, handle: &mut dyn FnMut(Json) -> Result<Json, String>) -> *mut u8 {
    let result = unsafe { take_json(ptr, len, "the message") }.and_then(handle);
    return_result(result.map(|reply| Some(reply.to_json())))
}

/// `zest:guest/process#save-state`: `null` when no state was made.
pub fn export_save_state(save: &mut dyn FnMut() -> Option<Json>) -> *mut u8 {
    return_string(save().unwrap_or(Json::Null).to_json())
}

/// `zest:guest/process#code-change(old-vsn, direction, state, extra)`:
/// `take_over` builds and keeps the state from `change`.
///
/// # Safety
/// Each `(ptr, len)` is a string argument of the host ([`take_string`]).
#[allow(clippy::too_many_arguments)]
pub unsafe fn export_code_change(
    old_vsn_ptr: *mut u8,
    old_vsn_len: usize,
    direction: u32,
    state_ptr: *mut u8,
    state_len: usize,
    extra_ptr: *mut u8,
    extra_len: usize,
    take_over: &mut dyn FnMut(Change) -> Result<(), String>,
) -> *mut u8 {
    let old_vsn = unsafe { take_string(old_vsn_ptr, old_vsn_len) };
    let state = unsafe { take_json(state_ptr, state_len, "the state") };
    let extra = unsafe { take_json(extra_ptr, extra_len, "the extra") };
    let direction = if direction == 1 { Direction::Down } else { Direction::Up };
    let result = match (state, extra) {
        (Ok(state), Ok(extra)) => take_over(Change { old_vsn, state, extra, direction }),
        (Err(message), _) | (_, Err(message)) => Err(message),
    };
    return_result(result.map(|()| None))
}

/// A function served by name: JSON in, JSON out.
pub type Function = fn(Json) -> Result<Json, String>;

/// `zest:guest/dynamic#functions`: the names of `table`.
pub fn export_functions(table: &[(&'static str, Function)]) -> *mut u8 {
    RETURNED.with(|slot| {
        let mut slot = slot.borrow_mut();
        slot.strings.clear();
        let mut pairs = Vec::with_capacity(table.len() * 2);
        for (name, _) in table {
            pairs.push(name.as_ptr() as u32);
            pairs.push(name.len() as u32);
        }
        slot.area = [pairs.as_ptr() as u32, table.len() as u32, 0];
        slot.pairs = pairs;
        slot.area.as_mut_ptr() as *mut u8
    })
}

/// `zest:guest/dynamic#invoke(function, args)`: the function of `table` so
/// named, with the args.
///
/// # Safety
/// Each `(ptr, len)` is a string argument of the host ([`take_string`]).
pub unsafe fn export_invoke(
    name_ptr: *mut u8,
    name_len: usize,
    args_ptr: *mut u8,
    args_len: usize,
    table: &[(&'static str, Function)],
) -> *mut u8 {
    let name = unsafe { take_string(name_ptr, name_len) };
    let args = unsafe { take_json(args_ptr, args_len, "the args") };
    let result = match table.iter().find(|(known, _)| *known == name) {
        Some((_, function)) => args.and_then(*function),
        None => {
            let mut message = String::from("this module serves no function `") + &name + "` (it serves:";
            for (known, _) in table {
                message.push(' ');
                message.push_str(known);
            }
            message.push(')');
            Err(message)
        }
    };
    return_result(result.map(|value| Some(value.to_json())))
}

/// Makes this module a component of the `zest:guest` worlds (CONTRACT.md
/// §13): one `component!` per module, with any of these keys, each once —
///
/// - `vsn: "text"`, the export `vsn` (the version status reports);
/// - `server: Type`, a process: `Type` implements [`Server`], and one value
///   of it per instance is the process's state;
/// - `functions: [name, ...]`, each `fn(Json) -> Result<Json, String>` served
///   by its name through `zest:guest/dynamic` (callable by `module.call`).
///
/// It also exports `cabi_realloc` and leaves the custom section
/// `zest:component-form`, which tells the node to make the module a
/// component when it loads it. Use [`log`], [`call`] and [`now_ms`] of this
/// module (not the core form's): a component imports only `zest:guest/host`.
#[macro_export]
macro_rules! component {
    ($($key:ident : $value:tt),+ $(,)?) => {
        #[link_section = "zest:component-form"]
        #[used]
        static __ZEST_COMPONENT_FORM: [u8; 16] = *b"zest:guest@1.0.0";

        #[no_mangle]
        pub unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
            unsafe { $crate::component::realloc(old, old_len, align, new_len) }
        }

        $( $crate::__component_part!($key $value); )+
    };
}

/// One key of [`component!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __component_part {
    (vsn $vsn:tt) => {
        const _: () = {
            #[export_name = "vsn"]
            extern "C" fn vsn() -> *mut u8 {
                $crate::component::export_vsn($vsn)
            }
            #[export_name = "cabi_post_vsn"]
            extern "C" fn vsn_post(_: *mut u8) {
                $crate::component::post_return()
            }
        };
    };
    (server $state:ty) => {
        const _: () = {
            thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$state>> =
                    ::core::cell::RefCell::new(::core::option::Option::None);
            }
            fn keep(state: $state) {
                STATE.with(|slot| *slot.borrow_mut() = ::core::option::Option::Some(state));
            }

            #[export_name = "zest:guest/process@1.0.0#init"]
            unsafe extern "C" fn init(ptr: *mut u8, len: usize) -> *mut u8 {
                unsafe {
                    $crate::component::export_init(ptr, len, &mut |args| {
                        <$state as $crate::component::Server>::init(args).map(keep)
                    })
                }
            }
            #[export_name = "zest:guest/process@1.0.0#handle"]
            unsafe extern "C" fn handle(ptr: *mut u8, len: usize) -> *mut u8 {
                unsafe {
                    $crate::component::export_handle(ptr, len, &mut |message| {
                        STATE.with(|slot| match slot.borrow_mut().as_mut() {
                            ::core::option::Option::Some(state) => {
                                $crate::component::Server::handle(state, message)
                            }
                            ::core::option::Option::None => {
                                ::core::result::Result::Err($crate::component::NO_STATE.into())
                            }
                        })
                    })
                }
            }
            #[export_name = "zest:guest/process@1.0.0#save-state"]
            extern "C" fn save_state() -> *mut u8 {
                $crate::component::export_save_state(&mut || {
                    STATE.with(|slot| slot.borrow().as_ref().map(|state| $crate::component::Server::save_state(state)))
                })
            }
            #[export_name = "zest:guest/process@1.0.0#code-change"]
            unsafe extern "C" fn code_change(
                old_vsn_ptr: *mut u8,
                old_vsn_len: usize,
                direction: u32,
                state_ptr: *mut u8,
                state_len: usize,
                extra_ptr: *mut u8,
                extra_len: usize,
            ) -> *mut u8 {
                unsafe {
                    $crate::component::export_code_change(
                        old_vsn_ptr,
                        old_vsn_len,
                        direction,
                        state_ptr,
                        state_len,
                        extra_ptr,
                        extra_len,
                        &mut |change| <$state as $crate::component::Server>::code_change(change).map(keep),
                    )
                }
            }
            #[export_name = "cabi_post_zest:guest/process@1.0.0#init"]
            extern "C" fn init_post(_: *mut u8) {
                $crate::component::post_return()
            }
            #[export_name = "cabi_post_zest:guest/process@1.0.0#handle"]
            extern "C" fn handle_post(_: *mut u8) {
                $crate::component::post_return()
            }
            #[export_name = "cabi_post_zest:guest/process@1.0.0#save-state"]
            extern "C" fn save_state_post(_: *mut u8) {
                $crate::component::post_return()
            }
            #[export_name = "cabi_post_zest:guest/process@1.0.0#code-change"]
            extern "C" fn code_change_post(_: *mut u8) {
                $crate::component::post_return()
            }
        };
    };
    (functions [$($function:ident),* $(,)?]) => {
        const _: () = {
            const TABLE: &[(&str, $crate::component::Function)] =
                &[$((stringify!($function), $function as $crate::component::Function)),*];

            #[export_name = "zest:guest/dynamic@1.0.0#functions"]
            extern "C" fn functions() -> *mut u8 {
                $crate::component::export_functions(TABLE)
            }
            #[export_name = "zest:guest/dynamic@1.0.0#invoke"]
            unsafe extern "C" fn invoke(name_ptr: *mut u8, name_len: usize, args_ptr: *mut u8, args_len: usize) -> *mut u8 {
                unsafe { $crate::component::export_invoke(name_ptr, name_len, args_ptr, args_len, TABLE) }
            }
            #[export_name = "cabi_post_zest:guest/dynamic@1.0.0#functions"]
            extern "C" fn functions_post(_: *mut u8) {
                $crate::component::post_return()
            }
            #[export_name = "cabi_post_zest:guest/dynamic@1.0.0#invoke"]
            extern "C" fn invoke_post(_: *mut u8) {
                $crate::component::post_return()
            }
        };
    };
    ($other:ident $value:tt) => {
        compile_error!(concat!(
            "zest_guest::component!: unknown key `",
            stringify!($other),
            "`; the keys are vsn, server and functions"
        ));
    };
}
