//! What a cluster member asks before it stages or commits a plan on an async
//! runtime's thread instead of the blocking pool: `Node::stages_at_once`,
//! `Plan::commits_at_once` and `Plan::settles_at_once` must say "no" whenever
//! the work would compile, fetch, run guest code or wait for calls.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zest_runtime::{Blueprint, BlueprintUnit, BuildRef, Kind, Status};

use super::support::{counter, versioned, Fixture};

/// A blueprint that swaps module `name` to the build of `bytes` (`file` its source).
fn blueprint_of(fx: &Fixture, name: &str, file: &str, bytes: &[u8]) -> Blueprint {
    let build = BuildRef {
        module: name.to_string(),
        sha256: hex::encode(Sha256::digest(bytes)),
        vsn: String::new(),
        source: fx.path(file),
    };
    Blueprint {
        kind: Kind::Module,
        target: name.to_string(),
        units: vec![BlueprintUnit {
            kind: Kind::Module,
            target: name.to_string(),
            builds: vec![build],
            app: None,
            extension: None,
            unloads: Vec::new(),
        }],
        code_change: Vec::new(),
        force: false,
        atomic: false,
        allow_breaking: false,
    }
}

fn session(fx: &Fixture) -> zest_runtime::Session {
    fx.node.session(Duration::from_secs(5), None).expect("the reload lock is free")
}

#[test]
fn a_blueprint_stages_at_once_only_once_its_builds_are_held_and_compiled_in_memory() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    let (v1, v2) = (versioned(1, 0), versioned(2, 0));
    let to_v1 = blueprint_of(&fx, "clock", "clock.wat", v1.as_bytes());
    let to_v2 = blueprint_of(&fx, "clock", "clock.wat", v2.as_bytes());
    assert!(fx.node.stages_at_once(&to_v1), "the module runs that build already");
    assert!(!fx.node.stages_at_once(&to_v2), "a build the node does not hold must be fetched first");

    fx.node.add_build(Arc::from(v2.as_bytes()));
    assert!(!fx.node.stages_at_once(&to_v2), "a build held but never compiled compiles when staged");
    // Staged and dropped: its code is not kept (only a committed build's is).
    let mut plan = session(&fx).plan_blueprint(&to_v2);
    assert_eq!(plan.staging_failures(), None);
    plan.abort("only staged");
    plan.finish();
    assert!(!fx.node.stages_at_once(&to_v2));

    let mut plan = session(&fx).plan_blueprint(&to_v2);
    plan.commit();
    plan.settle(None);
    assert_eq!(plan.finish().status(), Status::Ok);
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":2}"#);
    assert!(fx.node.stages_at_once(&to_v1), "the build it replaced is held and compiled in memory");
    let forced = Blueprint { force: true, ..to_v2 };
    assert!(fx.node.stages_at_once(&forced), "forced, the running build stages again, from memory");
}

#[test]
fn a_commit_settles_at_once_only_when_no_call_runs_on_the_build_it_replaced() {
    let fx = Arc::new(Fixture::new());
    fx.load("clock", &versioned(1, 200_000_000));
    let v2 = versioned(2, 0);
    fx.node.add_build(Arc::from(v2.as_bytes()));
    let blueprint = blueprint_of(&fx, "clock", "clock.wat", v2.as_bytes());

    let slow = {
        let fx = Arc::clone(&fx);
        thread::spawn(move || fx.node.call("clock", "slow_get", "null"))
    };
    thread::sleep(Duration::from_millis(30));
    let mut plan = session(&fx).plan_blueprint(&blueprint);
    assert!(plan.commits_at_once(), "a module without processes commits without guest code");
    plan.commit();
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":2}"#, "the next call gets the new build");
    assert!(!plan.settles_at_once(), "a call still runs on the replaced build: settling would wait for it");

    assert_eq!(slow.join().unwrap().unwrap(), r#"{"v":1}"#);
    assert!(plan.settles_at_once(), "the last call on the replaced build is over");
    let started = Instant::now();
    plan.settle(None);
    assert!(started.elapsed() < Duration::from_millis(100), "settling waited {:?}", started.elapsed());
    let result = plan.finish();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert!(fx.node.status().modules[0].old.is_empty(), "the replaced build is purged");
}

#[test]
fn an_atomic_plan_or_one_that_moves_a_process_never_commits_at_once() {
    let fx = Fixture::new();
    fx.load("counter", &counter('1'));
    let v2 = counter('2');
    fx.node.add_build(Arc::from(v2.as_bytes()));
    let blueprint = blueprint_of(&fx, "counter", "counter.wat", v2.as_bytes());

    let mut plan = session(&fx).plan_blueprint(&blueprint);
    assert!(plan.commits_at_once(), "no process runs on `counter` yet");
    plan.abort("checked only");
    plan.finish();

    let atomic = Blueprint { atomic: true, ..blueprint.clone() };
    let mut plan = session(&fx).plan_blueprint(&atomic);
    assert!(!plan.commits_at_once(), "an atomic plan holds its processes until it settles");
    plan.abort("checked only");
    plan.finish();

    fx.node.start_process("c", "counter", r#"{"start":1}"#).unwrap();
    let mut plan = session(&fx).plan_blueprint(&blueprint);
    assert!(!plan.commits_at_once(), "migrating process `c` runs its code_change");
    plan.commit();
    plan.settle(None);
    assert_eq!(plan.finish().status(), Status::Ok);
    let reply: serde_json::Value = serde_json::from_str(&fx.node.call_process("c", r#""get""#).unwrap()).unwrap();
    assert_eq!(reply["count"], 1, "the state moved with it: {reply}");
}
