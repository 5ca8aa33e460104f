//! The `tally` process in Rust (guest SDK, component form). `tally.py` and
//! `tally.js` are the same process in Python and JavaScript: the same
//! messages, replies and state, so a running tally moves between them.
//!
//! Messages: `{"add": N}` adds N, anything else reads. Every reply is the
//! state, `{"count": N, "langs": [...]}`: `langs` lists the languages the
//! count has lived in, this one last.

use zest_guest::component::{self, Server};
use zest_guest::{Change, Json, Level};

const LANG: &str = "rust";

struct Tally {
    count: i64,
    langs: Vec<Json>,
}

impl Server for Tally {
    fn init(args: Json) -> Result<Tally, String> {
        let count = args.get("start").and_then(Json::as_i64).unwrap_or(0);
        Ok(Tally { count, langs: vec![Json::from(LANG)] })
    }

    fn handle(&mut self, message: Json) -> Result<Json, String> {
        if let Some(add) = message.get("add").and_then(Json::as_i64) {
            self.count += add;
        }
        Ok(self.save_state())
    }

    fn save_state(&self) -> Json {
        Json::object(vec![("count", Json::from(self.count)), ("langs", Json::Array(self.langs.clone()))])
    }

    /// Takes over the state another build saved, in whatever language.
    fn code_change(change: Change) -> Result<Tally, String> {
        let count = change.state.get("count").and_then(Json::as_i64).ok_or("the state has no count")?;
        let mut langs = change.state.get("langs").and_then(Json::as_array).map(<[Json]>::to_vec).unwrap_or_default();
        langs.push(Json::from(LANG));
        component::log(Level::Info, &format!("tally in {} took over {} from {}", LANG, change.state, change.old_vsn));
        Ok(Tally { count, langs })
    }
}

zest_guest::component! {
    vsn: "tally-rust",
    server: Tally,
}
