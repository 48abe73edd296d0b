#!/usr/bin/env bash
# Switchyard on RabbitMQ + Redis vs the raw lapin ceiling on the same broker (issue #4,
# docs/benchmarks-amqp.md).
#
#   bench/run-amqp.sh                    # build (release), then every run below (~8 min)
#   ROUTERS=2 ONLY_SY_MAX=1 bench/run-amqp.sh   # two `switchyard router` processes, max rate only
#   ONLY_SY_MAX=1 WITH_SPREAD=1 bench/run-amqp.sh  # max rate with few and with many agents
#   ONLY_PROFILE=1 bench/run-amqp.sh     # only a max-rate run under `perf record -g`
#   PROFILE=1 bench/run-amqp.sh          # everything, then the profiled run
#   SY_WORKER_THREADS=1 ONLY_SY_MAX=1 bench/run-amqp.sh  # gateway and routers on 1 tokio worker
#   MESSAGES_PER_USER=10 bench/run-amqp.sh   # every Switchyard run: 10 messages per conversation
#
# Runs (each Switchyard run on a fresh vhost and Redis key prefix, so agents start empty and
# queues start drained):
#   1. amqp_ceiling (bench/src/bin/amqp_ceiling.rs) at max rate, then at half its own max rate,
#      in vhost <run>-ceiling
#   2. Switchyard: gateway + router(s) (`[bus] kind="amqp"`, `[store] kind="redis"`, one `api`
#      channel, `[log] level="warn"`), agents registered with capacity 1000 (the server's
#      maximum), an unmeasured warm-up (switchyard-bench --messages $WARMUP) drained from the
#      queues, then `amqp_ceiling watch` on switchyard.events (webhook received_at -> router
#      assigned_at, routed msg/s) and switchyard-bench --target:
#        sy-max (max rate), sy-max-spread (max rate, AGENT_SPREAD x more agents),
#        sy-half-ceiling (half the ceiling's max rate), sy-half-own (half Switchyard's max rate)
#   3. the ceiling again at sy-half-own's rate (p99s compared at the same rate), and at max rate
#      with 5 serial publishes per message in its router stage (Switchyard's event count)
#   4. per Switchyard run: CPU (utime+stime from /proc/<pid>/stat, before/after) of the gateway,
#      the router(s), RabbitMQ (beam.smp) and Redis; the share of the machine used by anything
#      else ("others", from /proc/stat); VmHWM/VmRSS of gateway and routers; Redis INFO
#      commandstats deltas (Redis is shared: other users' commands count); router outcome
#      counters from /metrics; conversations per agent at the end
#   5. PROFILE=1: a max-rate run with `perf record -e cpu-clock --call-graph dwarf` on the
#      gateway and the first router, summarized with `perf report --stdio` (self, children,
#      caller graph)
#   6. clean-up (trap): processes started here (by pid), the vhosts, the Redis keys of the
#      prefixes used (SCAN + UNLINK, never FLUSH)
#
# Results: $OUT (default bench/results/<run>/, git-ignored): JSON per run, summary.txt, log.txt,
# profiles. CARGO_TARGET_DIR is honoured (default: target). Needs rabbitmqctl, redis-cli, jq,
# curl, bc (and perf for profiling) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-50000}          # measured messages of every max-rate run
WARMUP=${WARMUP:-2000}               # unmeasured messages before each run
RATE_SECS=${RATE_SECS:-20}           # length of the fixed-rate runs
ROUTERS=${ROUTERS:-1}                # 1 or 2 router processes
CONNECTIONS=${CONNECTIONS:-64}       # HTTP connections (and the ceiling's publishes in flight)
AGENT_SPREAD=${AGENT_SPREAD:-10}     # the many-agents run registers this many times more agents
PROFILE=${PROFILE:-0}                # 1: also a max-rate run under perf record
ONLY_PROFILE=${ONLY_PROFILE:-0}      # 1: only the profiled run
ONLY_SY_MAX=${ONLY_SY_MAX:-0}        # 1: only Switchyard at max rate (e.g. with ROUTERS=2)
WITH_SPREAD=${WITH_SPREAD:-0}        # with ONLY_SY_MAX=1: also the many-agents run
SY_RATE=${SY_RATE:-}                 # with ONLY_SY_MAX=1: also a run at this fixed rate (msg/s)
MESSAGES_PER_USER=${MESSAGES_PER_USER:-1}  # Switchyard runs: messages per user (1: each opens a conversation)
PROFILE_MESSAGES=${PROFILE_MESSAGES:-30000}
PERF_FREQ=${PERF_FREQ:-199}
SY_WORKER_THREADS=${SY_WORKER_THREADS:-}  # tokio worker threads of gateway and routers (default: one per CPU)
SY_ENV=${SY_WORKER_THREADS:+env TOKIO_WORKER_THREADS=$SY_WORKER_THREADS}
SKIP_BUILD=${SKIP_BUILD:-0}
AMQP=${AMQP:-amqp://guest:guest@127.0.0.1:5672}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
REDIS_CLI=(redis-cli -h 127.0.0.1 -p 6379)
RUN=${RUN:-amqp$(date +%Y%m%d%H%M%S)-$$}
OUT=${OUT:-bench/results/$RUN}
BASE_PORT=${BASE_PORT:-$((20000 + (RANDOM % 20000)))}
SECRET="bench-secret-$RUN-0123456789"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release

mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

log() { echo "[$(date +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)] $*"; }

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries (CARGO_TARGET_DIR=$TARGET_DIR)"
  cargo build --release -p switchyard -p switchyard-bench
fi
for b in switchyard switchyard-bench amqp_ceiling; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------------
# Bookkeeping and clean-up

VHOSTS=()
PREFIXES=()
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
  for vh in "${VHOSTS[@]}"; do
    rabbitmqctl -q delete_vhost "$vh" >/dev/null 2>&1
  done
  for p in "${PREFIXES[@]}"; do
    "${REDIS_CLI[@]}" --scan --pattern "$p:*" | xargs -r -n 500 "${REDIS_CLI[@]}" unlink >/dev/null
  done
  log "cleaned up: ${#VHOSTS[@]} vhost(s), ${#PREFIXES[@]} Redis prefix(es), ${#PIDS[@]} process(es)"
}
trap cleanup EXIT

new_vhost() {
  local vh=$1
  rabbitmqctl -q add_vhost "$vh" >/dev/null
  VHOSTS+=("$vh")
  rabbitmqctl -q set_permissions -p "$vh" guest '.*' '.*' '.*' >/dev/null
}

forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Busy ticks of the whole machine (user nice system irq softirq steal, all CPUs).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pid_of_comm() {
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = "$1" ] && { basename "$d"; return; }
  done
}
BEAM=$(pid_of_comm beam.smp || true)
REDIS_PID=$(pid_of_comm redis-server || true)

# "calls usec" of EVALSHA+EVAL, and of every command, from INFO commandstats.
redis_stats() {
  "${REDIS_CLI[@]}" info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { c += $3; u += $5; if ($1 ~ /eval/) { ec += $3; eu += $5 } }
    END { printf "%d %d %d %d\n", ec, eu, c, u }'
}

# Per-command "name calls usec" (commands run inside scripts count too; usec is wall time).
redis_cmdstats() {
  "${REDIS_CLI[@]}" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {sub("cmdstat_", "", $1); print $1, $3, $5}'
}

# JSON {command: {per_msg, us_per_call}} of the difference between two redis_cmdstats files.
redis_cmd_diff() {
  awk -v n="$3" 'NR == FNR {c[$1] = $2; u[$1] = $3; next}
    { dc = $2 - c[$1]; du = $3 - u[$1]; if (dc > 0) printf "%s %d %d\n", $1, dc, du }' "$1" "$2" |
    sort -k2,2nr | jq -R -s --argjson n "$n" '
      split("\n") | map(select(. != "") | split(" ")) |
      map({key: .[0], value: {per_msg: ((.[1] | tonumber) / $n), us_per_call: ((.[2] | tonumber) / (.[1] | tonumber))}}) |
      from_entries'
}

queued_messages() {
  rabbitmqctl -q list_queues -p "$1" messages 2>/dev/null | awk '$1 ~ /^[0-9]+$/ {s += $1} END {print s + 0}'
}

wait_drained() {
  local vh=$1 n
  for _ in $(seq 600); do
    n=$(queued_messages "$vh")
    [ "$n" = 0 ] && return 0
    sleep 1
  done
  log "warning: $vh still holds $n messages"
}

# ---------------------------------------------------------------------------------------------
# The raw ceiling

CEIL_VHOST="$RUN-ceiling"
new_vhost "$CEIL_VHOST"

ceiling() {
  local label=$1; shift
  log "ceiling $label: $*"
  "$BIN/amqp_ceiling" run --url "$AMQP/$CEIL_VHOST" --inflight "$CONNECTIONS" \
    --warmup "$WARMUP" --label "$label" --json-out "$OUT/$label.json" "$@" >/dev/null
  jq -r '"  -> \(.delivered_per_s|floor) msg/s delivered, e2e p50 \(.e2e.p50_ms) ms p99 \(.e2e.p99_ms) ms, \(.cpu.process_us_per_msg|floor) µs CPU/msg (client), broker \(.cpu.broker_us_per_msg|floor) µs/msg; others \(.cpu.others_share * 100 | floor)% of the machine; load \(.loadavg_before) -> \(.loadavg_after)"' "$OUT/$label.json"
}

# ---------------------------------------------------------------------------------------------
# Switchyard

GW_PID=""
ROUTER_PIDS=()
SY_VHOST=""
GW_URL=""
PORT_SEQ=0

sy_start() {
  local label=$1
  PORT_SEQ=$((PORT_SEQ + 10))
  local port=$((BASE_PORT + PORT_SEQ))
  SY_VHOST="$RUN-$label"
  local prefix="bench-$RUN-$label"
  new_vhost "$SY_VHOST"
  PREFIXES+=("$prefix")
  local cfg="$OUT/$label.toml"
  cat >"$cfg" <<EOF
[server]
listen = "127.0.0.1:$port"

[bus]
kind = "amqp"
url = "$AMQP/$SY_VHOST"

[store]
kind = "redis"
url = "$REDIS_URL"
key_prefix = "$prefix"

[log]
level = "warn"

[[channels]]
id = "bench"
kind = "api"
secret = "$SECRET"
callback_url = "http://127.0.0.1:9/unused"
EOF
  GW_URL="http://127.0.0.1:$port"
  # shellcheck disable=SC2086 # $SY_ENV is empty or "env TOKIO_WORKER_THREADS=N"
  $SY_ENV "$BIN/switchyard" gateway --config "$cfg" >"$OUT/$label-gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  ROUTER_PIDS=()
  local i
  # Two routers split the shards only if the build knows router.instance/instances (each shard
  # has a single active consumer: without them the second router is a pure standby).
  local share=0
  if [ "$ROUTERS" -gt 1 ] && SWITCHYARD__ROUTER__INSTANCES=$ROUTERS SWITCHYARD__ROUTER__INSTANCE=0 \
    "$BIN/switchyard" check-config "$cfg" >/dev/null 2>&1; then
    share=1
  fi
  for i in $(seq "$ROUTERS"); do
    if [ "$share" = 1 ]; then
      export SWITCHYARD__ROUTER__INSTANCES=$ROUTERS SWITCHYARD__ROUTER__INSTANCE=$((i - 1))
    fi
    # shellcheck disable=SC2086
    $SY_ENV "$BIN/switchyard" router --config "$cfg" --listen "127.0.0.1:$((port + i))" \
      >"$OUT/$label-router$i.log" 2>&1 &
    ROUTER_PIDS+=($!)
    PIDS+=($!)
    unset SWITCHYARD__ROUTER__INSTANCES SWITCHYARD__ROUTER__INSTANCE
  done
  [ "$ROUTERS" -gt 1 ] && log "$ROUTERS routers, shards split between them: $([ "$share" = 1 ] && echo yes || echo 'no (standby)')"
  for _ in $(seq 300); do
    if curl -fsS "$GW_URL/readyz" >/dev/null 2>&1; then
      local ok=1
      for i in $(seq "$ROUTERS"); do
        curl -fsS "http://127.0.0.1:$((port + i))/readyz" >/dev/null 2>&1 || ok=0
      done
      [ "$ok" = 1 ] && return 0
    fi
    sleep 0.2
  done
  echo "Switchyard did not become ready; see $OUT/$label-*.log" >&2
  exit 1
}

sy_stop() {
  local pid
  for pid in "${ROUTER_PIDS[@]}"; do stop_pid "$pid"; done
  stop_pid "$GW_PID"
}

register_agents() {
  local n=$1 i
  for i in $(seq 0 $((n - 1))); do
    curl -fsS -X PUT "$GW_URL/v1/agents/amqp-bench-$i" -H 'content-type: application/json' \
      -d "{\"name\":\"Bench agent $i\",\"pools\":[\"default\"],\"capacity\":1000,\"status\":\"online\"}" >/dev/null
  done
}

bench() {
  "$BIN/switchyard-bench" --target "$GW_URL" --secret "$SECRET" --channel bench \
    --server-pid "$GW_PID" --connections "$CONNECTIONS" --messages-per-user "$MESSAGES_PER_USER" \
    --skip-agents --quiet "$@"
}

# sy_run LABEL RATE(max|n) [perf] [agent multiplier]
sy_run() {
  local label=$1 rate=$2 perf=${3:-} spread=${4:-1}
  local expect args
  if [ "$rate" = max ]; then
    expect=$MESSAGES
    args=(--rate max --messages "$MESSAGES")
  else
    expect=$(awk -v r="$rate" -v d="$RATE_SECS" 'BEGIN {x = r * d; print (x == int(x)) ? x : int(x) + 1}')
    args=(--rate "$rate" --duration "$RATE_SECS")
  fi
  [ -n "$perf" ] && { expect=$PROFILE_MESSAGES; args=(--rate max --messages "$PROFILE_MESSAGES"); }
  sy_start "$label"
  local agents=$((((expect + WARMUP) / 1000 + 2) * spread))
  register_agents "$agents"
  log "switchyard $label: warm-up $WARMUP"
  bench --rate max --messages "$WARMUP" --warmup 0 --label "$label-warmup" \
    --json-out "$OUT/$label-warmup.json" >/dev/null
  wait_drained "$SY_VHOST"
  local watch_extra=()
  [ -n "$perf" ] && watch_extra=(--also-bind '#')
  rm -f "$OUT/$label.ready"
  local expect_assigned=$(((expect + MESSAGES_PER_USER - 1) / MESSAGES_PER_USER))
  "$BIN/amqp_ceiling" watch --url "$AMQP/$SY_VHOST" --expect "$expect_assigned" \
    --expect-messages "$expect" --idle-secs 20 \
    --ready-file "$OUT/$label.ready" --json-out "$OUT/$label-watch.json" "${watch_extra[@]}" \
    >/dev/null 2>"$OUT/$label-watch.err" &
  local watch_pid=$!
  PIDS+=("$watch_pid")
  for _ in $(seq 100); do [ -f "$OUT/$label.ready" ] && break; sleep 0.1; done

  local perf_pids=() p
  if [ -n "$perf" ]; then
    perf record -e cpu-clock -F "$PERF_FREQ" --call-graph dwarf,16384 -p "$GW_PID" \
      -o "$OUT/perf-gateway.data" >/dev/null 2>"$OUT/perf-gateway.err" &
    perf_pids+=($!)
    perf record -e cpu-clock -F "$PERF_FREQ" --call-graph dwarf,16384 -p "${ROUTER_PIDS[0]}" \
      -o "$OUT/perf-router.data" >/dev/null 2>"$OUT/perf-router.err" &
    perf_pids+=($!)
    PIDS+=("${perf_pids[@]}")
    sleep 1
  fi

  local load_before gw0 beam0 redis0 rs0 r0=()
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  gw0=$(ticks "$GW_PID"); beam0=$(ticks "$BEAM"); redis0=$(ticks "$REDIS_PID"); rs0=$(redis_stats)
  local m0; m0=$(machine_ticks)
  redis_cmdstats >"$OUT/$label-redis0.txt"
  for p in "${ROUTER_PIDS[@]}"; do r0+=("$(ticks "$p")"); done
  local t0; t0=$(date +%s.%N)
  log "switchyard $label: rate $rate, expecting $expect messages, $expect_assigned assignments"
  bench "${args[@]}" --warmup 0 --label "$label" --json-out "$OUT/$label-bench.json" >/dev/null
  wait "$watch_pid" || true
  forget_pid "$watch_pid"
  local t1; t1=$(date +%s.%N)
  local gw1 beam1 redis1 rs1 r1=()
  gw1=$(ticks "$GW_PID"); beam1=$(ticks "$BEAM"); redis1=$(ticks "$REDIS_PID"); rs1=$(redis_stats)
  local m1; m1=$(machine_ticks)
  redis_cmdstats >"$OUT/$label-redis1.txt"
  for p in "${ROUTER_PIDS[@]}"; do r1+=("$(ticks "$p")"); done
  local load_after; load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${perf_pids[@]}"; do wait "$p" 2>/dev/null || true; forget_pid "$p"; done

  local router_ticks=0 router_hwm="" router_rss="" i
  for i in "${!ROUTER_PIDS[@]}"; do
    router_ticks=$((router_ticks + r1[i] - r0[i]))
    router_hwm+="$(hwm_kib "${ROUTER_PIDS[$i]}") "
    router_rss+="$(rss_kib "${ROUTER_PIDS[$i]}") "
  done
  local n; n=$(jq -r '.received' "$OUT/$label-watch.json")   # messages routed
  redis_cmd_diff "$OUT/$label-redis0.txt" "$OUT/$label-redis1.txt" "$((n > 0 ? n : 1))" >"$OUT/$label-redis-commands.json"
  read -r ec0 eu0 c0 u0 <<<"$rs0"
  read -r ec1 eu1 c1 u1 <<<"$rs1"
  jq -n --arg lbl "$label" --arg rate "$rate" --argjson routers "$ROUTERS" \
    --argjson n "$n" --arg lb "$load_before" --arg la "$load_after" \
    --argjson window "$(echo "$t1 - $t0" | bc)" \
    --argjson gw "$((gw1 - gw0))" --argjson rt "$router_ticks" \
    --argjson beam "$((beam1 - beam0))" --argjson redis "$((redis1 - redis0))" \
    --argjson machine "$((m1 - m0))" --argjson ncpu "$(nproc)" \
    --argjson gwhwm "$(hwm_kib "$GW_PID")" --argjson gwrss "$(rss_kib "$GW_PID")" \
    --arg rhwm "$router_hwm" --arg rrss "$router_rss" \
    --argjson evals "$((ec1 - ec0))" --argjson evalus "$((eu1 - eu0))" \
    --argjson cmds "$((c1 - c0))" --argjson cmdus "$((u1 - u0))" \
    --slurpfile watch "$OUT/$label-watch.json" --slurpfile bench "$OUT/$label-bench.json" \
    --slurpfile rcmd "$OUT/$label-redis-commands.json" '
    def per(t): if $n > 0 then t * 10000 / $n else null end;   # ticks (10 ms) -> µs per message
    {"label": $lbl, rate: $rate, routers: $routers, loadavg_before: $lb, loadavg_after: $la,
     window_s: $window, messages: $n, assigned: $watch[0].assigned,
     messages_per_user: $bench[0].config.messages_per_user,
     http_accepted_per_s: $bench[0].http.accepted_per_s,
     http_latency: $bench[0].http.latency, http_errors: $bench[0].http.errors,
     http_unsent: $bench[0].http.unsent,
     routed_per_s: $watch[0].messages_per_s, assigned_per_s: $watch[0].assigned_per_s,
     received_to_assigned: $watch[0].received_to_assigned,
     received_to_observed: $watch[0].received_to_observed,
     event_types_seen: $watch[0].event_types_seen,
     others_share: ((($machine - $gw - $rt - $beam - $redis) / 100
                     - $bench[0].cpu.process_s - $watch[0].cpu_s) / ($window * $ncpu)
                    | if . < 0 then 0 else . end),
     cpu_us_per_msg: {gateway: per($gw), routers: per($rt), rabbitmq: per($beam), redis: per($redis),
                      load_generator: $bench[0].cpu.process_us_per_msg},
     memory_kib: {gateway_hwm: $gwhwm, gateway_rss: $gwrss,
                  routers_hwm: ($rhwm | split(" ") | map(select(. != "") | tonumber)),
                  routers_rss: ($rrss | split(" ") | map(select(. != "") | tonumber))},
     redis: {evalsha_per_msg: (if $n > 0 then $evals / $n else null end),
             evalsha_us_per_call: (if $evals > 0 then $evalus / $evals else null end),
             commands_per_msg: (if $n > 0 then $cmds / $n else null end),
             server_us_per_msg: (if $n > 0 then $cmdus / $n else null end),
             commands: $rcmd[0]}}' \
    >"$OUT/$label.json"
  # Router outcomes (retried = transient failures retried in place) and the agents' load.
  local i2 port_r
  for i2 in "${!ROUTER_PIDS[@]}"; do
    port_r=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$OUT/$label.toml")
    curl -fsS "http://127.0.0.1:$((port_r + i2 + 1))/metrics" >"$OUT/$label-router$((i2 + 1)).metrics" 2>/dev/null || true
  done
  curl -fsS "$GW_URL/metrics" >"$OUT/$label-gateway.metrics" 2>/dev/null || true
  local prefix="bench-$RUN-$label" convs=0 a
  for a in $(seq 0 $((agents - 1))); do
    convs=$((convs + $("${REDIS_CLI[@]}" llen "$prefix:agent-convs:amqp-bench-$a")))
  done
  local outcomes
  outcomes=$(cat "$OUT/$label"-router*.metrics 2>/dev/null | awk '/^switchyard_router_messages_total\{/ {
      match($0, /outcome="[a-z_]*"/); o = substr($0, RSTART + 9, RLENGTH - 10); v[o] += $NF }
    END { printf "{"; sep = ""; for (o in v) { printf "%s\"%s\": %d", sep, o, v[o]; sep = ", " } printf "}" }')
  jq --argjson agents "$agents" --argjson convs "$convs" --argjson outcomes "$outcomes" \
    '. + {agents: $agents, conversations_per_agent_at_end: ($convs / $agents), router_outcomes: $outcomes}' \
    "$OUT/$label.json" >"$OUT/$label.json.tmp" && mv "$OUT/$label.json.tmp" "$OUT/$label.json"
  jq -r '"  -> \(.routed_per_s|floor) msg/s routed (\(.assigned_per_s|floor) assigned/s) end to end (HTTP \(.http_accepted_per_s|floor) accepted/s), received->assigned p50 \(.received_to_assigned.p50_ms) ms p99 \(.received_to_assigned.p99_ms) ms, HTTP p99 \(.http_latency.p99_ms) ms; CPU µs/msg gw \(.cpu_us_per_msg.gateway|floor) router \(.cpu_us_per_msg.routers|floor) rabbit \(.cpu_us_per_msg.rabbitmq|floor) redis \(.cpu_us_per_msg.redis|floor); others \(.others_share * 100 | floor)% of the machine; load \(.loadavg_before) -> \(.loadavg_after)"' "$OUT/$label.json"
  sy_stop
}

# ---------------------------------------------------------------------------------------------
# The runs

log "source: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- core router connectors src 2>/dev/null || echo ' (+ uncommitted changes in core/router/connectors/src)')"
log "run $RUN: $MESSAGES messages per max-rate run, $RATE_SECS s fixed-rate runs, $ROUTERS router(s), $(nproc) CPUs"
if [ "$ONLY_PROFILE" = 1 ]; then
  PROFILE=1
elif [ "$ONLY_SY_MAX" = 1 ]; then
  sy_run sy-max max
  [ "$WITH_SPREAD" = 1 ] && sy_run sy-max-spread max "" "$AGENT_SPREAD"
  [ -n "$SY_RATE" ] && sy_run sy-rate "$SY_RATE"
else
  ceiling ceiling-max --rate max --messages "$MESSAGES"
  CEIL_MAX=$(jq -r '.delivered_per_s | floor' "$OUT/ceiling-max.json")
  HALF_CEIL=$((CEIL_MAX / 2))
  ceiling ceiling-half --rate "$HALF_CEIL" --duration "$RATE_SECS"

  sy_run sy-max max
  SY_MAX=$(jq -r '.routed_per_s | floor' "$OUT/sy-max.json")
  HALF_SY=$((SY_MAX / 2))
  sy_run sy-max-spread max "" "$AGENT_SPREAD"
  sy_run sy-half-ceiling "$HALF_CEIL"
  sy_run sy-half-own "$HALF_SY"
  ceiling ceiling-at-sy-half --rate "$HALF_SY" --duration "$RATE_SECS"
  # The ceiling with Switchyard's count of broker round trips in the router stage (5 event
  # publishes, each confirm awaited before the next), still without application work.
  ceiling ceiling-max-5pub --rate max --messages "$MESSAGES" --serial-publishes 5

fi

if [ "$PROFILE" = 1 ]; then
  sy_run sy-profile max perf
  for who in gateway router; do
    perf report -i "$OUT/perf-$who.data" --no-inline --stdio --no-children --sort dso,symbol -g none \
      --percent-limit 0.3 2>/dev/null | grep -v '^$' >"$OUT/profile-$who-self.txt" || true
    perf report -i "$OUT/perf-$who.data" --no-inline --stdio --children --sort symbol -g none \
      --percent-limit 1 2>/dev/null | grep -v '^$' >"$OUT/profile-$who-children.txt" || true
    perf report -i "$OUT/perf-$who.data" --no-inline --stdio --no-children --sort symbol \
      -g caller,0.5,callee,function,percent --percent-limit 1.5 2>/dev/null \
      >"$OUT/profile-$who-graph.txt" || true
  done
fi

# ---------------------------------------------------------------------------------------------
# Summary

if [ "$ONLY_PROFILE" = 1 ] || [ "$ONLY_SY_MAX" = 1 ]; then
  log "results in $OUT"
  exit 0
fi
{
  echo "run $RUN — $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $ROUTERS router(s), $MESSAGES_PER_USER message(s) per user"
  printf '%-20s %-6s %9s %10s %10s  %s\n' run rate "msg/s" "p50 ms" "p99 ms" "others% | load before -> after"
  for f in ceiling-max ceiling-half ceiling-at-sy-half ceiling-max-5pub; do
    jq -r --arg f "$f" '[$f, .rate, (.delivered_per_s|floor), .e2e.p50_ms, .e2e.p99_ms, "\(.cpu.others_share * 100 | floor)% | \(.loadavg_before) -> \(.loadavg_after)"] | @tsv' "$OUT/$f.json"
  done | while IFS=$'\t' read -r a b c d e f; do printf '%-20s %-6s %9s %10s %10s  %s\n' "$a" "$b" "$c" "$d" "$e" "$f"; done
  for f in sy-max sy-max-spread sy-half-ceiling sy-half-own; do
    jq -r --arg f "$f" '[$f, .rate, (.routed_per_s|floor), .received_to_assigned.p50_ms, .received_to_assigned.p99_ms, "\(.others_share * 100 | floor)% | \(.loadavg_before) -> \(.loadavg_after)"] | @tsv' "$OUT/$f.json"
  done | while IFS=$'\t' read -r a b c d e f; do printf '%-20s %-6s %9s %10s %10s  %s\n' "$a" "$b" "$c" "$d" "$e" "$f"; done
  echo "(ceiling: scheduled publish -> final consume; Switchyard: gateway received_at -> router assigned_at)"
  echo "ratio Switchyard/ceiling at max rate: $(awk -v a="$SY_MAX" -v b="$CEIL_MAX" 'BEGIN {printf "%.1f %%", 100 * a / b}')"
  for f in sy-max sy-max-spread sy-half-ceiling sy-half-own; do
    jq -r --arg f "$f" '"\($f): CPU µs/msg \(.cpu_us_per_msg | to_entries | map("\(.key) \(.value // 0 | floor)") | join(", ")); VmHWM KiB gateway \(.memory_kib.gateway_hwm) routers \(.memory_kib.routers_hwm); Redis \(.redis.evalsha_per_msg) EVALSHA/msg"' "$OUT/$f.json"
  done
} | tee "$OUT/summary.txt"
log "results in $OUT"
