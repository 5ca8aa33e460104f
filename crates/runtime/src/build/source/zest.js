// zest's host functions for a JavaScript extension (CONTRACT.md §13):
// `import { call, log, nowMs } from "./zest.js";`
import host from "zest:guest/host@1.0.0";

/// Calls `module.fn` on its current version with `args` (JSON values) and
/// returns its JSON result; throws an Error with the callee's failure.
export function call(module, fn, ...args) {
  let out;
  try {
    out = host.call(module, fn, JSON.stringify(args));
  } catch (err) {
    throw new Error(`${module}.${fn} failed: ${err && err.payload !== undefined ? err.payload : err}`);
  }
  return JSON.parse(out);
}

/// 0 trace, 1 debug, 2 info, 3 warn, 4 error: into the node's log.
export function log(level, message) {
  host.log(level, String(message));
}

/// Wall-clock milliseconds since the Unix epoch.
export function nowMs() {
  return Number(host.nowMs());
}
