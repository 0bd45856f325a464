#!/usr/bin/env bash
# EXPERIMENT, for measurement only: what the mail log costs W1 (issue 18: at most 5% CPU per
# message), measured in ONE gate under ONE continuous load whose log.level is switched between
# two levels by SIGHUP every few seconds. Two gates side by side (paired-cpu.sh) compete for the
# 2 cores with each other and with four load processes, and how the scheduler shares them out
# changes how many messages each gate handles per wake-up: an A/A pair's ratio spread 0.78-1.21
# on 2026-12-07. Here both levels run in the same process, with the same JIT state, the same
# heap and the same load, a few seconds apart, so whatever the machine does lands on both.
#
#   bench/experiments/level-toggle.sh [--windows N] [--seconds S] [--sessions N] DIST LEVEL_A LEVEL_B
#
# DIST is a repository root with a build (`npm run build`: its dist/cli/main.js). The load is
# W1's (`smtp-source -d -s 200`, 4 KiB messages) against smtp-sink, without a pause; after 20 s
# of warm-up, windows alternate A B B A ... (each pair's order swapped, so a drift favours
# neither). Before each window the config is rewritten with the window's level and the gate sent
# SIGHUP; after a second for the reload, the window counts smtpgate's CPU (utime+stime from
# /proc/PID/stat) and the messages it relayed (smtpgate_messages_total from its metrics) over
# S seconds. Prints each window, then CPU per message of A and B over all their windows and
# A ÷ B, and the median of the A ÷ B ratios of each adjacent pair of windows.
# NODE_OPTIONS is deploy/'s (--max-semi-space-size=64) unless set. Needs postfix's smtp-sink and
# smtp-source.
#
# The mail log's cost, at info against warn:
#   bench/experiments/level-toggle.sh . info warn
# The instrument's own bias (should read 1.00):
#   bench/experiments/level-toggle.sh . info info
set -euo pipefail

windows=40
seconds=3
sessions=200
while [ $# -gt 0 ]; do
  case $1 in
    --windows) windows=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -eq 3 ] || { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
dist=$(cd "$1" && pwd); level_a=$2; level_b=$3
export NODE_OPTIONS=${NODE_OPTIONS---max-semi-space-size=64}
work=$(mktemp -d)
cleanup() { [ -f "$work/pids" ] && kill $(cat "$work/pids") 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

. "$(dirname "$0")/w1-gate.sh"
port=$(free_port); sink=$(free_port); metrics=$(free_port)

/usr/sbin/smtp-sink -u nobody -c -m 1000 "127.0.0.1:$sink" 4096 >/dev/null 2>&1 &
echo $! >>"$work/pids"
w1_gate_config "$port" "$sink" "127.0.0.1:$metrics" "$level_a" >"$work/gate.yaml"
node "$dist/dist/cli/main.js" run --config "$work/gate.yaml" >"$work/gate.log" 2>&1 &
gate=$!
echo "$gate" >>"$work/pids"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# Far more messages than the run needs: the load never stops during a window.
/usr/sbin/smtp-source -d -s "$sessions" -m 100000000 -l 4096 -f sender@corp.test -t rcpt@corp.test "127.0.0.1:$port" >/dev/null 2>&1 &
echo $! >>"$work/pids"

sleep 20
# The windows, driven from one node process: a window's edge reads the CPU right after the
# message count (a node started per reading took 0.2-2 s on a busy machine, and its jitter
# landed in the window's count).
node - "$gate" "$work/gate.yaml" "$metrics" "$windows" "$seconds" "$level_a" "$level_b" <<'EOF'
const { readFileSync, writeFileSync, renameSync } = require('node:fs');
const [gate, config, metrics, windows, seconds, levelA, levelB] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// utime + stime, in clock ticks (1/100 s).
const cpu = () => {
  const f = readFileSync(`/proc/${gate}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]);
};
async function edge() {
  const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
  const ticks = cpu();
  let relayed = 0;
  for (const l of text.split('\n')) if (l.startsWith('smtpgate_messages_total{') && l.includes('result="relayed"')) relayed += Number(l.split(' ').pop());
  return { ticks, relayed };
}
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  const n = v.length;
  return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
};
(async () => {
  const sum = { a: { ticks: 0, msgs: 0 }, b: { ticks: 0, msgs: 0 } };
  const ratios = [];
  let first;
  for (let i = 0; i < Number(windows); i++) {
    // A B, B A, A B, ...: each pair of windows in the other order from the last.
    const side = (Math.floor(i / 2) + (i % 2)) % 2 === 0 ? 'a' : 'b';
    const level = side === 'a' ? levelA : levelB;
    writeFileSync(`${config}.new`, readFileSync(config, 'utf8').replace(/log: \{ level: \w+ \}/, `log: { level: ${level} }`));
    renameSync(`${config}.new`, config);
    process.kill(Number(gate), 'SIGHUP');
    await sleep(1000);
    const s = await edge();
    await sleep(Number(seconds) * 1000);
    const e = await edge();
    const ticks = e.ticks - s.ticks;
    const msgs = e.relayed - s.relayed;
    sum[side].ticks += ticks;
    sum[side].msgs += msgs;
    const us = (ticks * 10000) / msgs;
    console.log(`window ${String(i).padStart(3)}  ${side} ${level.padEnd(5)}  ${String(msgs).padStart(6)} msgs  ${us.toFixed(1)} µs/msg`);
    if (i % 2 === 0) first = { side, us };
    else ratios.push(first.side === 'a' ? first.us / us : us / first.us);
  }
  const ua = (sum.a.ticks * 10000) / sum.a.msgs;
  const ub = (sum.b.ticks * 10000) / sum.b.msgs;
  console.log(`A (${levelA}) ${ua.toFixed(1)} µs/msg over ${sum.a.msgs} msgs, B (${levelB}) ${ub.toFixed(1)} µs/msg over ${sum.b.msgs} msgs, A÷B ${(ua / ub).toFixed(3)}`);
  console.log(`median of the pairs' A÷B ${median(ratios).toFixed(3)} (${ratios.map((r) => r.toFixed(3)).join(' ')})`);
})();
EOF
