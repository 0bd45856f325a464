#!/usr/bin/env bash
# EXPERIMENT, for measurement only: two smtpgate builds or settings loaded AT THE SAME TIME, each
# with its own smtp-sink and smtp-source, and their CPU per message compared. Run one after the
# other (as the bench's W1 and W1-quiet are), a single ratio on this shared 2-core machine
# wanders by ±15% from run to run; loaded side by side, both sides share whatever the machine
# does, and an A/A pair reads 1.01 (docs/benchmarks.md, "Session 9: paired measurements").
#
#   bench/experiments/paired-cpu.sh [--w2] [--pairs N] [--messages N] A_DIST A_LEVEL B_DIST B_LEVEL
#
# A_DIST and B_DIST are repository roots with a build (`npm run build`: their dist/cli/main.js);
# the levels are log.level (info, warn, ...). Each pair runs twice, A started (gate and load)
# first and then B, and prints smtpgate's utime+stime per message (from /proc/PID/stat) of both
# sides and A ÷ B; the last line is the median of the ratios. W1 (`smtp-source -d -s 200`, 4 KiB)
# by default, W2 (a connection per message) with --w2. NODE_OPTIONS is deploy/'s
# (--max-semi-space-size=64) unless set. Needs postfix's smtp-sink and smtp-source.
#
# The mail log's cost (issue 18), this build at info against itself at warn:
#   bench/experiments/paired-cpu.sh . info . warn
set -euo pipefail

load=(-d)
pairs=3
messages=16000
while [ $# -gt 0 ]; do
  case $1 in
    --w2) load=(); shift ;;
    --pairs) pairs=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -eq 4 ] || { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
a_dist=$(cd "$1" && pwd); a_level=$2; b_dist=$(cd "$3" && pwd); b_level=$4
export NODE_OPTIONS=${NODE_OPTIONS---max-semi-space-size=64}
work=$(mktemp -d)
# Every process started is listed here (start() runs in a subshell, so not in a variable).
cleanup() { [ -f "$work/pids" ] && kill $(cat "$work/pids") 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

. "$(dirname "$0")/w1-gate.sh"

# Starts a sink and a gate; prints "GATE_PID SINK_PID PORT".
start() {
  local dist=$1 level=$2 name=$3 port sink
  port=$(free_port); sink=$(free_port)
  /usr/sbin/smtp-sink -u nobody -c -m 1000 "127.0.0.1:$sink" 4096 >/dev/null 2>&1 &
  local sink_pid=$!
  echo "$sink_pid" >>"$work/pids"
  w1_gate_config "$port" "$sink" 127.0.0.1:0 "$level" >"$work/$name.yaml"
  node "$dist/dist/cli/main.js" run --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
  local gate=$!
  echo "$gate" >>"$work/pids"
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "$gate $sink_pid $port"
}

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Both loads at once; waits for the two smtp-source runs only.
both() {
  local m=$1 p1=$2 p2=$3 s1 s2
  /usr/sbin/smtp-source "${load[@]}" -s 200 -m "$m" -l 4096 -f sender@corp.test -t rcpt@corp.test "127.0.0.1:$p1" & s1=$!
  /usr/sbin/smtp-source "${load[@]}" -s 200 -m "$m" -l 4096 -f sender@corp.test -t rcpt@corp.test "127.0.0.1:$p2" & s2=$!
  wait "$s1" "$s2"
}

ratios=()
for _ in $(seq 1 "$pairs"); do
  for order in ab ba; do
    if [ $order = ab ]; then read -r ga sa pa < <(start "$a_dist" "$a_level" a); read -r gb sb pb < <(start "$b_dist" "$b_level" b)
    else read -r gb sb pb < <(start "$b_dist" "$b_level" b); read -r ga sa pa < <(start "$a_dist" "$a_level" a); fi
    # The side started first also gets its load first (session 10 saw the first load's gate
    # use up to 8% more CPU when it was always A's), so ab and ba cancel that out.
    if [ $order = ab ]; then first=$pa second=$pb; else first=$pb second=$pa; fi
    both $((messages / 4)) "$first" "$second"
    ca=$(cpu "$ga"); cb=$(cpu "$gb")
    both "$messages" "$first" "$second"
    ca=$(( $(cpu "$ga") - ca )); cb=$(( $(cpu "$gb") - cb ))
    kill "$ga" "$gb" "$sa" "$sb" 2>/dev/null || true
    # Not this shell's children (started in a subshell): wait until they are gone.
    while kill -0 "$ga" 2>/dev/null || kill -0 "$gb" 2>/dev/null; do sleep 0.1; done
    ua=$(( ca * 10000 / messages )); ub=$(( cb * 10000 / messages ))
    r=$(echo "scale=3; $ca / $cb" | bc)
    ratios+=("$r")
    printf '%s  A %s µs/msg  B %s µs/msg  A÷B %s\n' "$order" "$ua" "$ub" "$r"
  done
done
printf 'median A÷B %s (%s)\n' "$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')" "${ratios[*]}"
