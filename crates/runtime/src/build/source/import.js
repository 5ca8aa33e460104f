
// The extension's module, evaluated when the component is built.
import * as user from "./@MODULE@.js";

function module() {
  return user;
}

function file() {
  return "@MODULE@.js";
}

function ownVsn() {
  return "@VSN@";
}

// A stack frame's line as the user reads it.
function where(line) {
  return line;
}
