
function run(names, ...args) {
  const user = module();
  const f = names.map((name) => user[name]).find((f) => typeof f === "function");
  try {
    return f(...args);
  } catch (err) {
    throw failure(err);
  }
}

export const process = {
  init(args) {
    run(["init"], JSON.parse(args));
  },
  handle(message) {
    return jsonOut("handle", run(["handle"], JSON.parse(message)));
  },
  saveState() {
    return jsonOut("save_state", run(["save_state", "saveState"]));
  },
  codeChange(oldVsn, direction, state, extra) {
    run(["code_change", "codeChange"], oldVsn, direction, JSON.parse(state), JSON.parse(extra));
  },
};
