/**
 * EXPERIMENT, for measurement only (docs/benchmarks.md, "W4 memory"): with node's
 * `--expose-gc`, runs a full garbage collection every 50 ms inside smtpgate, to tell memory
 * that is still referenced from garbage V8 simply has not collected yet:
 *
 *   npm run bench -- --only W4 --peers smtpgate \
 *     --smtpgate-node-arg=--expose-gc --smtpgate-node-arg=--import=$PWD/bench/dist/experiments/frequent-gc.js
 *
 * It costs a lot of CPU; it is a diagnosis, never a setting.
 */
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('frequent-gc needs node --expose-gc');
setInterval(gc, 50).unref();
