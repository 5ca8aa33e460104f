
const NAMES = Object.keys(user).filter((name) => typeof user[name] === "function" && name !== "vsn").sort();

export const dynamic = {
  functions() {
    return NAMES;
  },
  invoke(fn, args) {
    if (!NAMES.includes(fn)) throw `${FILE} has no function ${fn}`;
    let value;
    try {
      value = JSON.parse(args);
    } catch (err) {
      throw `the arguments are not JSON (${err.message})`;
    }
    let result;
    try {
      result = apply(user[fn], value);
    } catch (err) {
      throw failure(err);
    }
    return jsonOut(fn, result);
  },
};
