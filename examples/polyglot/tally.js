// The `tally` process in JavaScript: built by componentize-qjs against the
// world `server` of zest:guest. Same messages, replies and state as `tally.rs`.
//
// Messages: {"add": N} adds N, anything else reads. Every reply is the state,
// {"count": N, "langs": [...]}: the languages the count has lived in.
import host from "zest:guest/host@1.0.0";

const LANG = "javascript";

// The process's state: one instance runs one process.
let state = { count: 0, langs: [] };

export function vsn() {
  return "tally-javascript";
}

export const process = {
  init(args) {
    const start = JSON.parse(args).start;
    state = { count: Number.isInteger(start) ? start : 0, langs: [LANG] };
  },
  handle(message) {
    const m = JSON.parse(message);
    if (m !== null && Number.isInteger(m.add)) state.count += m.add;
    return JSON.stringify(state);
  },
  saveState() {
    return JSON.stringify(state);
  },
  // Takes over the state another build saved, in whatever language.
  codeChange(oldVsn, direction, oldState, extra) {
    const old = JSON.parse(oldState);
    if (!Number.isInteger(old.count)) throw `the state has no count: ${oldState}`;
    state = { count: old.count, langs: [...(old.langs || []), LANG] };
    host.log(2, `tally in ${LANG} took over ${oldState} from ${oldVsn}`);
  },
};
