//! A process written with the zest guest SDK: a tally that keeps its count
//! across upgrades and rollbacks. Start it from an app manifest:
//!
//! ```toml
//! [[processes]]
//! name = "tally"
//! module = "tally"
//! init = { start = 0 }
//! ```
//!
//! Messages: `{"add": N}` adds N, anything else reads. Every reply is
//! `{"count": N, "moves": [..]}`, `moves` listing the code changes it went
//! through (`"up from <vsn>"`, `"down from <vsn>"`).

use std::cell::RefCell;

use zest_guest::{process, vsn, Change, Direction, Json};

vsn!("tally-1");

thread_local! {
    static COUNT: RefCell<i64> = RefCell::new(0);
    static MOVES: RefCell<Vec<Json>> = RefCell::new(Vec::new());
}

fn reply() -> Json {
    let count = COUNT.with(|count| *count.borrow());
    let moves = MOVES.with(|moves| moves.borrow().clone());
    Json::object(vec![("count", Json::from(count)), ("moves", Json::Array(moves))])
}

fn init(args: Json) -> Result<(), String> {
    let start = args.get("start").and_then(Json::as_i64).unwrap_or(0);
    COUNT.with(|count| *count.borrow_mut() = start);
    Ok(())
}

fn handle(message: Json) -> Result<Json, String> {
    if let Some(add) = message.get("add").and_then(Json::as_i64) {
        COUNT.with(|count| *count.borrow_mut() += add);
    }
    Ok(reply())
}

fn state_save() -> Json {
    reply()
}

fn code_change(change: Change) -> Result<(), String> {
    let count = change.state.get("count").and_then(Json::as_i64).ok_or("the state has no count")?;
    let mut moves = change.state.get("moves").and_then(Json::as_array).map(<[Json]>::to_vec).unwrap_or_default();
    let way = if change.direction == Direction::Down { "down from " } else { "up from " };
    moves.push(Json::from(String::from(way) + &change.old_vsn));
    COUNT.with(|c| *c.borrow_mut() = count);
    MOVES.with(|m| *m.borrow_mut() = moves);
    Ok(())
}

process!(init, handle, state_save, code_change);
