// `fmt`, the JavaScript module of the polyglot app: built by componentize-qjs
// against the world `plugin` of zest:guest, so it serves its functions by
// name through `dynamic` (JSON text in, JSON text out).
//
//   report "Hot code, hot swap"  ->  "4 words, longest \"code\", mean length 3.5"
import host from "zest:guest/host@1.0.0";

// Another module's function, whatever its language: JSON values in and out;
// its failure is thrown as the node words it.
function call(module, fn, ...args) {
  let out;
  try {
    out = host.call(module, fn, JSON.stringify(args));
  } catch (err) {
    throw err && err.payload !== undefined ? err.payload : err;
  }
  return JSON.parse(out);
}

// A line about the text, from the numbers `stats` (Rust) counts.
function report(text) {
  const s = call("stats", "summary", text);
  return `${s.words} words, longest "${s.longest}", mean length ${s.mean_length.toFixed(1)}`;
}

const FUNCTIONS = { report };

export function vsn() {
  return "fmt-1";
}

export const dynamic = {
  functions() {
    return Object.keys(FUNCTIONS).sort();
  },
  invoke(fn, args) {
    if (!(fn in FUNCTIONS)) throw `fmt has no function ${fn}`;
    const value = JSON.parse(args);
    try {
      return JSON.stringify(Array.isArray(value) ? FUNCTIONS[fn](...value) : FUNCTIONS[fn](value));
    } catch (err) {
      throw typeof err === "string" ? err : `${err.name}: ${err.message}`;
    }
  },
};
