//! Integration tests at the `Node` API, one binary so wasmtime links once.

mod node {
    pub mod support;

    mod apps;
    mod code_server;
    mod compile_cache;
    mod components;
    mod extensions;
    mod guest_sdk;
    mod polyglot;
    mod processes;
    mod quick_plans;
    mod rollout;
    mod rust_components;
    mod sandbox;
    mod split_builds;
    mod unload;
    mod watch;
}
