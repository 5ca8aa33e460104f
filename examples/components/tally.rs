//! The tally process of `examples/guests/tally.rs`, in the guest SDK's
//! component form: the same messages, replies and state, so a running tally
//! moves between the two builds — core module to component and back — with
//! its count (`README.md` walks through it).
//!
//! Messages: `{"add": N}` adds N, anything else reads. Every reply is
//! `{"count": N, "moves": [..]}`, `moves` listing the code changes it went
//! through (`"up from <vsn>"`, `"down from <vsn>"`).

use zest_guest::component::{self, Server};
use zest_guest::{Change, Direction, Json, Level};

/// The process's state: one value per instance, kept by the SDK.
struct Tally {
    count: i64,
    moves: Vec<Json>,
}

impl Server for Tally {
    fn init(args: Json) -> Result<Tally, String> {
        let start = args.get("start").and_then(Json::as_i64).unwrap_or(0);
        Ok(Tally { count: start, moves: Vec::new() })
    }

    fn handle(&mut self, message: Json) -> Result<Json, String> {
        if let Some(add) = message.get("add").and_then(Json::as_i64) {
            self.count += add;
        }
        Ok(self.save_state())
    }

    fn save_state(&self) -> Json {
        Json::object(vec![("count", Json::from(self.count)), ("moves", Json::Array(self.moves.clone()))])
    }

    /// Takes over the state of the core build (`zest_state_save`'s JSON) or
    /// of another component build.
    fn code_change(change: Change) -> Result<Tally, String> {
        let count = change.state.get("count").and_then(Json::as_i64).ok_or("the state has no count")?;
        let mut moves = change.state.get("moves").and_then(Json::as_array).map(<[Json]>::to_vec).unwrap_or_default();
        let way = if change.direction == Direction::Down { "down from " } else { "up from " };
        moves.push(Json::from(String::from(way) + &change.old_vsn));
        component::log(Level::Info, &format!("tally taken over from {} at {}", change.old_vsn, count));
        Ok(Tally { count, moves })
    }
}

zest_guest::component! {
    vsn: "tally-component-1",
    server: Tally,
}
