#!/usr/bin/env bash
# sealpipe against stunnel, spiped, ssh -L, socat and raw loopback TCP, on the same loads.
#
# For each tunnel: iperf3 throughput (1, 4, 16 streams) with the CPU of both tunnel ends, the
# connection-rate / time-to-first-echo load (sequential and concurrent) of `sealpipe bench
# --target`, and the memory (PSS) per idle established connection. Loopback only; every
# process is started here and stopped by its own pid; the temp dir is removed at exit.
# With --rtt D (e.g. 20ms), a WAN relay (`sealpipe bench --relay`, bench/README.md) of that
# round-trip time sits between each tunnel's two ends (raw: between the client and the target)
# and only the connection-rate and small-exchange loads run.
# See bench/README.md. Not part of CI (minutes long).
#
# Usage: bench/compare.sh [--duration S] [--repeats N] [--streams "1 4 16"]
#                         [--connections N] [--concurrency N] [--idle N] [--exchanges N]
#                         [--rtt D]
#                         [--tunnels "raw socat stunnel-aes stunnel-chacha ssh-aes ssh-chacha spiped sealpipe sealpipe-full"]
# (sealpipe-full: sealpipe with `resumption = false`, every connection a full RSA handshake;
#  sealpipe-nopool: its connector with `pool_min = 0`, `pool_max = 0` (no warm sessions);
#  sealpipe-noreuse: its connector with `session_reuse = false`; for these three only the
#  connection-rate and small-exchange loads run, and the last two are skipped by a sealpipe
#  whose `check` refuses those keys. Default with --rtt: raw stunnel-chacha ssh-chacha sealpipe
#  sealpipe-full sealpipe-nopool sealpipe-noreuse)
#                         [--port-base P] [--out DIR] [--no-install] [--no-build]
set -euo pipefail

DURATION=4
REPEATS=3
STREAMS="1 4 16"
CONNECTIONS=500
CONCURRENCY=50
IDLE=1000
EXCHANGES=5000
RTT=""
TUNNELS=""
PORT_BASE=29100
OUT=""
INSTALL=1
BUILD=1

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --streams) STREAMS=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --exchanges) EXCHANGES=$2; shift 2 ;;
        --rtt) RTT=$2; shift 2 ;;
        --tunnels) TUNNELS=$2; shift 2 ;;
        --port-base) PORT_BASE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$TUNNELS" ]; then
    if [ -n "$RTT" ]; then
        TUNNELS="raw stunnel-chacha ssh-chacha sealpipe sealpipe-full sealpipe-nopool sealpipe-noreuse"
    else
        TUNNELS="raw socat stunnel-aes stunnel-chacha ssh-aes ssh-chacha spiped sealpipe sealpipe-full"
    fi
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "compare.sh: $*" >&2; }

# --- peers from Debian packages -------------------------------------------------------------
need_install=()
for pair in stunnel4:stunnel4:stunnel spiped:spiped:spiped sshd:openssh-server:ssh \
            ssh:openssh-client:ssh socat:socat:socat iperf3:iperf3: python3:python3: \
            openssl:openssl:stunnel; do
    cmd=${pair%%:*}; rest=${pair#*:}; pkg=${rest%%:*}; for_tunnel=${rest#*:}
    # Only what the tunnels asked for need be there.
    if [ -n "$for_tunnel" ] && [ "${TUNNELS#*"$for_tunnel"}" = "$TUNNELS" ]; then continue; fi
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        need_install+=("$pkg")
    fi
done
if [ ${#need_install[@]} -gt 0 ]; then
    if [ "$INSTALL" = 1 ]; then
        log "installing ${need_install[*]}"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_install[@]}" >/dev/null
    else
        log "missing: ${need_install[*]} (run without --no-install)"; exit 1
    fi
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

# --- sealpipe, release build -----------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet)
fi
SEALPIPE=$TARGET_DIR/release/sealpipe
[ -x "$SEALPIPE" ] || { log "no $SEALPIPE (build it, or drop --no-build)"; exit 1; }

# --- processes and cleanup -------------------------------------------------------------------
TMP=$(mktemp -d -t sealpipe-compare.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logging to $TMP/NAME.log; sets LAST_PID.
start() {
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

port_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
# any TCP socket on that local port, in any state (a connected one would block a bind)
port_in_use() { ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() {
    local port=$1 i
    for i in $(seq 1 200); do
        port_listening "$port" && return 0
        sleep 0.05
    done
    log "nothing listens on port $port; logs:"; tail -n 5 "$TMP"/*.log >&2; exit 1
}

NEXT_PORT=$PORT_BASE
# port: the next port of our range, checked free.
port() {
    while port_in_use "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

CLK_TCK=$(getconf CLK_TCK)
# pid and every descendant
tree() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree "$c"; done
}
# ticks PID...: utime+stime+cutime+cstime of the processes and their descendants
ticks() {
    local total=0 p f
    for p in $(for q in "$@"; do tree "$q"; done); do
        # fields after the ")" of comm: state is $1, utime $12, stime $13, cutime $14, cstime $15
        f=$(sed 's/.*) //' /proc/"$p"/stat 2>/dev/null) || continue
        set -- $f
        total=$((total + ${12} + ${13} + ${14} + ${15}))
    done
    echo "$total"
}
# pss PID...: summed PSS (KiB) of the processes and their descendants
pss() {
    local total=0 p v
    for p in $(for q in "$@"; do tree "$q"; done); do
        v=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# via PORT: sets VIA to the port a tunnel's client end connects to for the echo path: PORT
# itself, or with --rtt a WAN relay in front of it (stopped at teardown).
RELAY_PIDS=""
via() {
    if [ -z "$RTT" ]; then VIA=$1; return; fi
    port; VIA=$PORT
    start "relay-$VIA" "$SEALPIPE" bench --relay "127.0.0.1:$VIA" --relay-to "127.0.0.1:$1" --rtt "$RTT"
    RELAY_PIDS="$RELAY_PIDS $LAST_PID"
    wait_port "$VIA"
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

# --- targets ---------------------------------------------------------------------------------
port; IPERF_PORT=$PORT
start iperf3-server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
port; ECHO_PORT=$PORT
start bench-target "$SEALPIPE" bench --serve "127.0.0.1:$ECHO_PORT"
wait_port "$IPERF_PORT"; wait_port "$ECHO_PORT"

# --- the tunnels: each sets ENTRY_IPERF, ENTRY_ECHO and TUNNEL_PIDS (both ends) ---------------
setup_raw() {
    via "$ECHO_PORT"
    ENTRY_IPERF=$IPERF_PORT; ENTRY_ECHO=$VIA; TUNNEL_PIDS=""
}

setup_socat() {
    port; ENTRY_IPERF=$PORT; port; ENTRY_ECHO=$PORT
    start socat-iperf socat TCP-LISTEN:"$ENTRY_IPERF",bind=127.0.0.1,fork,reuseaddr,nodelay TCP:127.0.0.1:"$IPERF_PORT",nodelay
    local a=$LAST_PID
    start socat-echo socat TCP-LISTEN:"$ENTRY_ECHO",bind=127.0.0.1,fork,reuseaddr,backlog=1024,nodelay TCP:127.0.0.1:"$ECHO_PORT",nodelay
    TUNNEL_PIDS="$a $LAST_PID"
    wait_port "$ENTRY_IPERF"; wait_port "$ENTRY_ECHO"
}

STUNNEL_CERT_DONE=0
stunnel_cert() {
    [ "$STUNNEL_CERT_DONE" = 1 ] && return
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
        -keyout "$TMP/stunnel.key" -out "$TMP/stunnel.crt" >/dev/null 2>&1
    STUNNEL_CERT_DONE=1
}
# setup_stunnel NAME SUITE
setup_stunnel() {
    local name=$1 suite=$2
    stunnel_cert
    port; ENTRY_IPERF=$PORT; port; ENTRY_ECHO=$PORT
    local s_iperf s_echo; port; s_iperf=$PORT; port; s_echo=$PORT
    via "$s_echo"; local s_echo_via=$VIA
    local common="foreground = yes
pid =
debug = 4
sslVersionMin = TLSv1.3
sslVersionMax = TLSv1.3
ciphersuites = $suite
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1"
    cat >"$TMP/$name-server.conf" <<EOF
$common
cert = $TMP/stunnel.crt
key = $TMP/stunnel.key
[iperf]
accept = 127.0.0.1:$s_iperf
connect = 127.0.0.1:$IPERF_PORT
[echo]
accept = 127.0.0.1:$s_echo
connect = 127.0.0.1:$ECHO_PORT
EOF
    cat >"$TMP/$name-client.conf" <<EOF
$common
client = yes
verifyPeer = yes
CAfile = $TMP/stunnel.crt
[iperf]
accept = 127.0.0.1:$ENTRY_IPERF
connect = 127.0.0.1:$s_iperf
[echo]
accept = 127.0.0.1:$ENTRY_ECHO
connect = 127.0.0.1:$s_echo_via
EOF
    start "$name-server" stunnel4 "$TMP/$name-server.conf"
    local a=$LAST_PID
    start "$name-client" stunnel4 "$TMP/$name-client.conf"
    TUNNEL_PIDS="$a $LAST_PID"
    wait_port "$s_iperf"; wait_port "$ENTRY_IPERF"; wait_port "$s_echo"; wait_port "$ENTRY_ECHO"
}

setup_spiped() {
    head -c 32 /dev/urandom >"$TMP/spiped.key"
    port; ENTRY_IPERF=$PORT; port; ENTRY_ECHO=$PORT
    local s_iperf s_echo pids=""; port; s_iperf=$PORT; port; s_echo=$PORT
    local n=$((IDLE + CONCURRENCY + 100))
    start spiped-d-iperf spiped -d -F -n "$n" -s "[127.0.0.1]:$s_iperf" -t "[127.0.0.1]:$IPERF_PORT" -k "$TMP/spiped.key"
    pids="$LAST_PID"
    start spiped-e-iperf spiped -e -F -n "$n" -s "[127.0.0.1]:$ENTRY_IPERF" -t "[127.0.0.1]:$s_iperf" -k "$TMP/spiped.key"
    pids="$pids $LAST_PID"
    start spiped-d-echo spiped -d -F -n "$n" -s "[127.0.0.1]:$s_echo" -t "[127.0.0.1]:$ECHO_PORT" -k "$TMP/spiped.key"
    pids="$pids $LAST_PID"
    via "$s_echo"
    start spiped-e-echo spiped -e -F -n "$n" -s "[127.0.0.1]:$ENTRY_ECHO" -t "[127.0.0.1]:$VIA" -k "$TMP/spiped.key"
    TUNNEL_PIDS="$pids $LAST_PID"
    wait_port "$ENTRY_IPERF"; wait_port "$ENTRY_ECHO"
}

SSHD_PID=""
SSHD_PORT=""
start_sshd() {
    [ -n "$SSHD_PID" ] && return
    mkdir -p /run/sshd 2>/dev/null || true
    ssh-keygen -q -t ed25519 -N "" -f "$TMP/ssh_host_key"
    ssh-keygen -q -t ed25519 -N "" -f "$TMP/ssh_user_key"
    cp "$TMP/ssh_user_key.pub" "$TMP/authorized_keys"
    chmod 600 "$TMP/authorized_keys"
    port; SSHD_PORT=$PORT
    cat >"$TMP/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $TMP/ssh_host_key
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $TMP/authorized_keys
AllowTcpForwarding yes
MaxStartups 100
MaxSessions 100
EOF
    start sshd "$SSHD" -D -e -f "$TMP/sshd_config"
    SSHD_PID=$LAST_PID
    wait_port "$SSHD_PORT"
}
# setup_ssh NAME CIPHER
setup_ssh() {
    local name=$1 cipher=$2
    start_sshd
    port; ENTRY_IPERF=$PORT; port; ENTRY_ECHO=$PORT
    # With --rtt the whole ssh session (both forwards) crosses the relay.
    via "$SSHD_PORT"
    start "$name" ssh -N -F /dev/null -c "$cipher" -i "$TMP/ssh_user_key" -p "$VIA" \
        -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
        -L "127.0.0.1:$ENTRY_IPERF:127.0.0.1:$IPERF_PORT" \
        -L "127.0.0.1:$ENTRY_ECHO:127.0.0.1:$ECHO_PORT" \
        "$(id -un)@127.0.0.1"
    # The sshd side is the session process(es) sshd forked for this ssh: descendants of sshd.
    TUNNEL_PIDS="$LAST_PID $SSHD_PID"
    wait_port "$ENTRY_IPERF"; wait_port "$ENTRY_ECHO"
}

SEALPIPE_KEYS_DONE=0
sealpipe_keys() {
    if [ "$SEALPIPE_KEYS_DONE" = 0 ]; then
        L_FP=$("$SEALPIPE" keygen --bits 2048 --out "$TMP/listener.pem" | tail -n 1)
        C_FP=$("$SEALPIPE" keygen --bits 2048 --out "$TMP/connector.pem" | tail -n 1)
        SEALPIPE_KEYS_DONE=1
    fi
}
# sealpipe_accepts LINES: whether this sealpipe's `check` takes LINES in a [[connector]]
# (keys a later sealpipe has and an earlier one refuses).
sealpipe_accepts() {
    sealpipe_keys
    cat >"$TMP/probe.toml" <<EOF
[identity]
private_key = "$TMP/connector.pem"

[[connector]]
name = "probe"
listen = "127.0.0.1:1"
connect = "127.0.0.1:2"
peer = "$L_FP"
$1
EOF
    "$SEALPIPE" check --no-bind --config "$TMP/probe.toml" >/dev/null 2>&1
}
# SEALPIPE_EXTRA_DEFAULTS: lines for both configs' [defaults]; SEALPIPE_EXTRA_CONNECTOR: lines
# for the connectors' [[connector]] sections.
setup_sealpipe() {
    sealpipe_keys
    port; ENTRY_IPERF=$PORT; port; ENTRY_ECHO=$PORT
    local s_iperf s_echo; port; s_iperf=$PORT; port; s_echo=$PORT
    via "$s_echo"
    local defaults="max_connections = $((IDLE + CONCURRENCY + 1000))
drain_timeout = \"1s\"
${SEALPIPE_EXTRA_DEFAULTS:-}"
    cat >"$TMP/listener.toml" <<EOF
[identity]
private_key = "$TMP/listener.pem"

[defaults]
$defaults

[[listener]]
name = "iperf"
listen = "127.0.0.1:$s_iperf"
forward = "127.0.0.1:$IPERF_PORT"
peers = ["$C_FP"]

[[listener]]
name = "echo"
listen = "127.0.0.1:$s_echo"
forward = "127.0.0.1:$ECHO_PORT"
peers = ["$C_FP"]
EOF
    cat >"$TMP/connector.toml" <<EOF
[identity]
private_key = "$TMP/connector.pem"

[defaults]
$defaults

[[connector]]
name = "iperf"
listen = "127.0.0.1:$ENTRY_IPERF"
connect = "127.0.0.1:$s_iperf"
peer = "$L_FP"
${SEALPIPE_EXTRA_CONNECTOR:-}

[[connector]]
name = "echo"
listen = "127.0.0.1:$ENTRY_ECHO"
connect = "127.0.0.1:$VIA"
peer = "$L_FP"
${SEALPIPE_EXTRA_CONNECTOR:-}
EOF
    "$SEALPIPE" check --config "$TMP/listener.toml" >/dev/null
    "$SEALPIPE" check --config "$TMP/connector.toml" >/dev/null
    start sealpipe-listener "$SEALPIPE" run --config "$TMP/listener.toml"
    local a=$LAST_PID
    start sealpipe-connector "$SEALPIPE" run --config "$TMP/connector.toml"
    TUNNEL_PIDS="$a $LAST_PID"
    wait_port "$ENTRY_IPERF"; wait_port "$ENTRY_ECHO"
}

teardown() {
    local p
    for p in $TUNNEL_PIDS $RELAY_PIDS; do
        [ "$p" = "$SSHD_PID" ] && continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    RELAY_PIDS=""
}

# --- the loads -------------------------------------------------------------------------------
# iperf_run NAME STREAMS: one iperf3 run; records Gb/s and CPU s per GB (both tunnel ends)
iperf_run() {
    local name=$1 n=$2 before after json
    before=$(ticks $TUNNEL_PIDS)
    iperf3 -c 127.0.0.1 -p "$ENTRY_IPERF" -t "$DURATION" -P "$n" -J >"$TMP/iperf.json" || {
        log "$name: iperf3 failed: $(tail -n 3 "$TMP/iperf.json")"; return 1; }
    sleep 0.3   # let forked relays exit and be reaped (their CPU moves to cutime)
    after=$(ticks $TUNNEL_PIDS)
    python3 - "$name" "$n" "$((after - before))" "$CLK_TCK" "$RESULTS" "$TMP/iperf.json" "$TUNNEL_PIDS" <<'EOF'
import json, sys
name, n, ticks, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tunnel_pids = sys.argv[7].strip() != ""
r = json.load(open(sys.argv[6]))["end"]["sum_received"]
gb = r["bytes"] / 1e9
with open(out, "a") as f:
    f.write(f"{name}\tgbps_{n}\t{r['bits_per_second'] / 1e9}\n")
    if tunnel_pids:
        f.write(f"{name}\tcpu_{n}\t{(ticks / hz) / gb}\n")
EOF
}

# rate_run NAME: the connection-rate loads (sequential, then concurrent), with the CPU both
# tunnel ends spent on them per connection, then the small exchanges on one connection
rate_run() {
    local name=$1 before after
    before=$(ticks $TUNNEL_PIDS)
    "$SEALPIPE" bench --target "127.0.0.1:$ENTRY_ECHO" --only rate --json \
        --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" >"$TMP/rate.json" || {
        log "$name: connection-rate load failed"; return 1; }
    sleep 0.3   # let forked relays exit and be reaped (their CPU moves to cutime)
    after=$(ticks $TUNNEL_PIDS)
    "$SEALPIPE" bench --target "127.0.0.1:$ENTRY_ECHO" --only small --json \
        --exchanges "$EXCHANGES" >"$TMP/small.json" || {
        log "$name: small-exchange load failed"; return 1; }
    python3 - "$name" "$RESULTS" "$TMP/rate.json" "$TMP/small.json" "$((after - before))" \
        "$CLK_TCK" "$CONNECTIONS" "$TUNNEL_PIDS" <<'EOF'
import json, sys
name, out = sys.argv[1], sys.argv[2]
r, s = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
ticks, hz, conns = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
with open(out, "a") as f:
    for k, tag in (("rate_sequential", "seq"), ("rate_concurrent", "conc")):
        x = r[k]
        f.write(f"{name}\tcps_{tag}\t{x['per_second']}\n")
        f.write(f"{name}\tp50_{tag}\t{x['ttfb_p50_ms']}\n")
        f.write(f"{name}\tp99_{tag}\t{x['ttfb_p99_ms']}\n")
        f.write(f"{name}\tfail_{tag}\t{x['failures']}\n")
    if sys.argv[8].strip():
        # both rate loads: 2 x conns client connections
        f.write(f"{name}\tcpu_conn\t{ticks / hz / (2 * conns) * 1e6}\n")
    for x in s.get("small", []):
        f.write(f"{name}\txps_{x['size']}\t{x['per_second']}\n")
EOF
}

idle_run() {
    local name=$1 before after pid i n
    [ -z "$TUNNEL_PIDS" ] && return 0
    before=$(pss $TUNNEL_PIDS)
    # Holds the connections far longer than reading the memory of many processes takes; it is
    # stopped by its pid once the reading is done.
    "$SEALPIPE" bench --target "127.0.0.1:$ENTRY_ECHO" --only idle --idle "$IDLE" --hold 600 --json \
        >"$TMP/idle.json" 2>"$TMP/idle.err" &
    pid=$!
    for i in $(seq 1 1200); do
        grep -q "idle connections open" "$TMP/idle.err" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    n=$(sed -n 's/^bench: \([0-9]*\) idle connections open$/\1/p' "$TMP/idle.err")
    if [ -z "$n" ]; then
        log "$name: idle load failed: $(tail -n 2 "$TMP/idle.err")"
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
        return 0
    fi
    sleep 0.5
    after=$(pss $TUNNEL_PIDS)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -n "${COMPARE_DEBUG:-}" ] && log "$name: pss before $before after $after KiB for $n connections"
    record "$name" idle_kib "$(python3 -c "print(($after - $before) / $n)")"
    sleep 1   # let the closed connections' processes and threads go
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "temp dir $TMP; tunnels: $TUNNELS; $REPEATS x ${DURATION}s per iperf3 run, streams $STREAMS"
for t in $TUNNELS; do
    case $t in
        raw) setup_raw ;;
        socat) setup_socat ;;
        stunnel-aes) setup_stunnel stunnel-aes TLS_AES_256_GCM_SHA384 ;;
        stunnel-chacha) setup_stunnel stunnel-chacha TLS_CHACHA20_POLY1305_SHA256 ;;
        ssh-aes) setup_ssh ssh-aes aes128-gcm@openssh.com ;;
        ssh-chacha) setup_ssh ssh-chacha chacha20-poly1305@openssh.com ;;
        spiped) setup_spiped ;;
        sealpipe) setup_sealpipe ;;
        sealpipe-full)
            SEALPIPE_EXTRA_DEFAULTS="resumption = false
${SEALPIPE_EXTRA_DEFAULTS:-}" setup_sealpipe ;;
        sealpipe-nopool|sealpipe-noreuse)
            if [ "$t" = sealpipe-nopool ]; then
                extra="pool_min = 0
pool_max = 0"
            else
                extra="session_reuse = false"
            fi
            if ! sealpipe_accepts "$extra"; then
                log "$t: skipped: this sealpipe's check refuses $(echo "$extra" | cut -d' ' -f1 | xargs)"
                continue
            fi
            SEALPIPE_EXTRA_CONNECTOR="$extra
${SEALPIPE_EXTRA_CONNECTOR:-}" setup_sealpipe ;;
        *) log "unknown tunnel $t"; exit 2 ;;
    esac
    if [ -n "$RTT" ] || [ "${t#sealpipe-}" != "$t" ]; then
        # Across the WAN, and for the sealpipe variants (only the handshake and the session
        # handling differ from `sealpipe`): only the connection-rate and small-exchange loads.
        log "$t: connection rate, small exchanges"
        rate_run "$t"
        teardown
        continue
    fi
    # Idle memory first, while the tunnel processes have not yet grown buffers for bulk data.
    log "$t: idle connections"
    idle_run "$t"
    log "$t: connection rate, small exchanges"
    rate_run "$t"
    log "$t: throughput"
    for n in $STREAMS; do
        for r in $(seq 1 "$REPEATS"); do iperf_run "$t" "$n"; done
    done
    teardown
done

echo "compare.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r)"
echo "sealpipe $("$SEALPIPE" --version | cut -d' ' -f2-) at $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'); iperf3 ${DURATION}s x $REPEATS (median); $CONNECTIONS connections per rate load; $EXCHANGES exchanges per small load; ${RTT:+WAN relay RTT $RTT between the tunnel ends;} load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(stunnel4 -version 2>&1 | grep -m1 '^stunnel'); $(ssh -V 2>&1); $(command -v spiped >/dev/null && spiped -v 2>&1 | head -n1); $(socat -V | sed -n 2p | cut -d' ' -f1-3); $(iperf3 --version | head -n1 | cut -d' ' -f1-2)"
echo
python3 - "$RESULTS" "$STREAMS" "$CONCURRENCY" "$IDLE" "$RTT" <<'EOF'
import statistics, sys
from collections import defaultdict
path, streams, conc, idle, rtt = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
vals = defaultdict(lambda: defaultdict(list))
order = []
for line in open(path):
    name, key, v = line.rstrip("\n").split("\t")
    if name not in order:
        order.append(name)
    vals[name][key].append(float(v))
def med(name, key):
    v = vals[name].get(key)
    return statistics.median(v) if v else None
def f(x, d=2):
    return "–" if x is None else f"{x:,.{d}f}"
cols = []
if not rtt:
    cols += [("gbps_" + s, f"{s} stream{'s' if s != '1' else ''} Gb/s", 2) for s in streams]
    cols += [("cpu_" + s, f"CPU s/GB {s}", 2) for s in streams]
cols += [("cps_seq", "conns/s seq", 0), ("p50_seq", "p50 ms", 2), ("p99_seq", "p99 ms", 2),
         (f"cps_conc", f"conns/s {conc} conc", 0), ("p50_conc", "p50 ms", 2), ("p99_conc", "p99 ms", 2),
         ("cpu_conn", "CPU µs/conn", 0),
         ("xps_1", "1 B exch/s", 0), ("xps_100", "100 B exch/s", 0)]
if not rtt:
    cols += [("idle_kib", f"KiB/idle conn ({idle})", 1)]
else:
    print(f"WAN relay, RTT {rtt}, between each tunnel's two ends (raw: client and target)")
    print()
print("| tunnel | " + " | ".join(c[1] for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for n in order:
    print(f"| {n} | " + " | ".join(f(med(n, k), d) for k, _, d in cols) + " |")
if "sealpipe" in order:
    print()
    print("sealpipe's ratio to each (throughput, conns/s and exch/s: higher is better for sealpipe; "
          "CPU, p50 and memory: lower is better for sealpipe)")
    print()
    rcols = [c for c in cols if not c[0].startswith("p99")]
    print("| sealpipe / | " + " | ".join(c[1] for c in rcols) + " |")
    print("|---|" + "---|" * len(rcols))
    for n in order:
        if n.startswith("sealpipe"):
            continue
        cells = []
        for k, _, _ in rcols:
            a, b = med("sealpipe", k), med(n, k)
            cells.append("–" if a is None or not b else f"{a / b:.2f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
fails = [(n, k) for n in order for k in ("fail_seq", "fail_conc") if (med(n, k) or 0) > 0]
for n, k in fails:
    print(f"\nwarning: {n}: {med(n, k):.0f} failed connections in {k}")
EOF
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    cp "$RESULTS" "$OUT/results.tsv"
    log "raw results in $OUT/results.tsv"
fi
