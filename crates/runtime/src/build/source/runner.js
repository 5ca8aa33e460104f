
// A runner: the extension's source is not built in but handed over as data.
// The node writes it into SLOT's bytes in the component (after the marker:
// eight decimal digits of length, a JSON header line, then the module turned
// into a script, crates/runtime/src/build/source/script.rs), and the first
// call of an instance evaluates it. A source the node cannot turn into a
// script, or whose script fails to evaluate, is built whole by the tool.
import * as zest from "./zest.js";

const MARK = @MARK@.map((byte) => byte ^ 0x2a);
// Made in place: no temporary array holding the marker and the empty slot is
// left in the snapshot for the node to mistake for the slot.
const SLOT = new Uint8Array(MARK.length + 8 + @SLOT@);
SLOT.fill(35, MARK.length);
SLOT.fill(48, MARK.length, MARK.length + 8);
SLOT.set(MARK, 0);
let loaded = null;
let meta = { module: "extension", vsn: "" };

// The UTF-8 text of SLOT's bytes from..to.
function text(from, to) {
  let latin1 = "";
  for (let at = from; at < to; at += 8192) {
    latin1 += String.fromCharCode.apply(null, SLOT.subarray(at, Math.min(at + 8192, to)));
  }
  return decodeURIComponent(escape(latin1));
}

function module() {
  if (loaded === null) {
    const start = MARK.length;
    const size = Number(text(start, start + 8));
    const payload = text(start + 8, start + 8 + size);
    const newline = payload.indexOf("\n");
    meta = JSON.parse(payload.slice(0, newline));
    const exports = (0, eval)(payload.slice(newline + 1))(zest);
    // An export named but never declared fails here, as it fails a module.
    for (const name of Object.keys(exports)) void exports[name];
    loaded = exports;
  }
  return loaded;
}

function file() {
  return meta.module + ".js";
}

function ownVsn() {
  module();
  return meta.vsn;
}

// A stack frame's line as the user reads it: QuickJS names evaluated code
// `<input>`, and the script keeps the file's lines.
function where(line) {
  return line.split("<input>:").join(file() + ":");
}
