
let NAMES = null;

// The module's exported functions, listed at the first call.
function names() {
  if (NAMES === null) {
    const user = module();
    NAMES = Object.keys(user).filter((name) => typeof user[name] === "function" && name !== "vsn").sort();
  }
  return NAMES;
}

export const dynamic = {
  functions() {
    return names();
  },
  invoke(fn, args) {
    if (!names().includes(fn)) throw `${file()} has no function ${fn}`;
    let value;
    try {
      value = JSON.parse(args);
    } catch (err) {
      throw `the arguments are not JSON (${err.message})`;
    }
    let result;
    try {
      result = apply(module()[fn], value);
    } catch (err) {
      throw failure(err);
    }
    return jsonOut(fn, result);
  },
};
