#!/usr/bin/env bash
# Real clients through each tunnel: redis-benchmark (PING, 50 clients, keep-alive with 10 x
# --requests, and a new connection per request with --requests) against a private redis-server, and wrk (50 connections, keep-alive
# and `Connection: close`) against a private nginx serving a small page. Loopback only.
#
# Usage: bench/clients.sh [--requests N] [--duration S] [--tunnels "raw ssh-aes sealpipe"]
#                         [--no-install] [--no-build]
#
# Tunnels: raw (the client straight to the server), ssh-aes (ssh -L, aes128-gcm@openssh.com,
# one multiplexed session to a private sshd), sealpipe (release build, default configuration:
# warm sessions and session reuse on). Prints one markdown table and sealpipe's ratio to each.
set -euo pipefail

REQUESTS=10000
DURATION=5
TUNNELS="raw ssh-aes sealpipe"
INSTALL=1
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --requests) REQUESTS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --tunnels) TUNNELS=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "clients.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "clients.sh: $*" >&2; }

if [ "$INSTALL" = 1 ]; then
    missing=()
    for pair in redis-server:redis-server redis-benchmark:redis-tools nginx:nginx-light \
                wrk:wrk sshd:openssh-server ssh:openssh-client; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] ||
            missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
fi
if [ "$BUILD" = 1 ]; then (cd "$REPO" && cargo build --release -q); fi
SEALPIPE=${CARGO_TARGET_DIR:-$REPO/target}/release/sealpipe
[ -x "$SEALPIPE" ] || { log "no $SEALPIPE (build it, or drop --no-build)"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

TMP=$(mktemp -d /tmp/sealpipe-clients.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
start() {
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=("$!")
}
wait_port() {
    local i
    for i in $(seq 1 200); do
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.05
    done
    log "nothing listens on port $1; logs:"; tail -n 5 "$TMP"/*.log >&2; exit 1
}
NEXT_PORT=29300
port() {
    while ss -Htan "sport = :$NEXT_PORT" 2>/dev/null | grep -q .; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    PORT=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + 1))
}

# --- the servers ---------------------------------------------------------------------------
port; REDIS_PORT=$PORT
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --maxclients 10000
port; HTTP_PORT=$PORT
mkdir -p "$TMP/www"
chmod 755 "$TMP" "$TMP/www"   # nginx's workers run as another user
printf 'sealpipe small page\n' >"$TMP/www/index.html"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$HTTP_PORT; root $TMP/www; }
}
EOF
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP"
wait_port "$REDIS_PORT"; wait_port "$HTTP_PORT"

# --- the tunnels: each sets E_REDIS and E_HTTP (the client's entry ports) ------------------
setup_raw() { E_REDIS=$REDIS_PORT; E_HTTP=$HTTP_PORT; }
setup_ssh() {
    ssh-keygen -q -t ed25519 -N "" -f "$TMP/ssh_host_key"
    ssh-keygen -q -t ed25519 -N "" -f "$TMP/ssh_user_key"
    cp "$TMP/ssh_user_key.pub" "$TMP/authorized_keys"; chmod 600 "$TMP/authorized_keys"
    mkdir -p /run/sshd 2>/dev/null || true
    port; local sshd_port=$PORT
    cat >"$TMP/sshd_config" <<EOF
Port $sshd_port
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
MaxSessions 100
EOF
    start sshd "$SSHD" -D -e -f "$TMP/sshd_config"
    wait_port "$sshd_port"
    port; E_REDIS=$PORT; port; E_HTTP=$PORT
    start ssh ssh -N -F /dev/null -c aes128-gcm@openssh.com -i "$TMP/ssh_user_key" \
        -p "$sshd_port" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
        -L "127.0.0.1:$E_REDIS:127.0.0.1:$REDIS_PORT" -L "127.0.0.1:$E_HTTP:127.0.0.1:$HTTP_PORT" \
        "$(id -un)@127.0.0.1"
    wait_port "$E_REDIS"; wait_port "$E_HTTP"
}
setup_sealpipe() {
    local l_fp c_fp s_redis s_http
    l_fp=$("$SEALPIPE" keygen --bits 2048 --out "$TMP/listener.pem" | tail -n 1)
    c_fp=$("$SEALPIPE" keygen --bits 2048 --out "$TMP/connector.pem" | tail -n 1)
    port; s_redis=$PORT; port; s_http=$PORT; port; E_REDIS=$PORT; port; E_HTTP=$PORT
    cat >"$TMP/listener.toml" <<EOF
[identity]
private_key = "$TMP/listener.pem"

[defaults]
max_connections = 10000

[[listener]]
name = "redis"
listen = "127.0.0.1:$s_redis"
forward = "127.0.0.1:$REDIS_PORT"
peers = ["$c_fp"]

[[listener]]
name = "http"
listen = "127.0.0.1:$s_http"
forward = "127.0.0.1:$HTTP_PORT"
peers = ["$c_fp"]
EOF
    cat >"$TMP/connector.toml" <<EOF
[identity]
private_key = "$TMP/connector.pem"

[defaults]
max_connections = 10000

[[connector]]
name = "redis"
listen = "127.0.0.1:$E_REDIS"
connect = "127.0.0.1:$s_redis"
peer = "$l_fp"

[[connector]]
name = "http"
listen = "127.0.0.1:$E_HTTP"
connect = "127.0.0.1:$s_http"
peer = "$l_fp"
EOF
    "$SEALPIPE" check --config "$TMP/listener.toml" >/dev/null
    "$SEALPIPE" check --config "$TMP/connector.toml" >/dev/null
    start sealpipe-listener "$SEALPIPE" run --config "$TMP/listener.toml"
    start sealpipe-connector "$SEALPIPE" run --config "$TMP/connector.toml"
    wait_port "$E_REDIS"; wait_port "$E_HTTP"
}

# --- the loads: one line "NAME KEY VALUE" each into $TMP/results --------------------------
redis_run() {
    local name=$1 keep=$2 key=$3 n=$4 v
    v=$(redis-benchmark -h 127.0.0.1 -p "$E_REDIS" -t ping_mbulk -n "$n" -c 50 \
        -k "$keep" -q --csv 2>/dev/null | tail -n 1 | cut -d, -f2 | tr -d '"')
    echo "$name $key $v" >>"$TMP/results"
}
wrk_run() {
    local name=$1 key=$2 v; shift 2
    v=$(wrk -t 1 -c 50 -d "${DURATION}s" "$@" "http://127.0.0.1:$E_HTTP/" |
        sed -n 's/^Requests\/sec: *//p')
    echo "$name $key $v" >>"$TMP/results"
}

log "tunnels: $TUNNELS; $REQUESTS redis requests, ${DURATION}s per wrk run, 50 clients each"
for t in $TUNNELS; do
    case $t in
        raw) setup_raw ;;
        ssh-aes) setup_ssh ;;
        sealpipe) setup_sealpipe ;;
        *) log "unknown tunnel $t"; exit 2 ;;
    esac
    log "$t"
    redis_run "$t" 1 redis_keep $((REQUESTS * 10))
    redis_run "$t" 0 redis_new "$REQUESTS"
    wrk_run "$t" wrk_keep
    wrk_run "$t" wrk_close -H "Connection: close"
    # stop this tunnel's processes (not redis-server, the first pid; nginx runs detached)
    while [ ${#PIDS[@]} -gt 1 ]; do
        kill "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true
        unset 'PIDS[-1]'
    done
done

echo "clients.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs; sealpipe $("$SEALPIPE" --version | cut -d' ' -f2-) at $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'); $(redis-server --version | cut -d' ' -f1-3); $("$NGINX" -v 2>&1); $(ssh -V 2>&1)"
echo
python3 - "$TMP/results" "$TUNNELS" <<'EOF'
import sys
vals = {}
for line in open(sys.argv[1]):
    name, key, *v = line.split()   # no value: the load printed nothing (its log says why)
    vals[(name, key)] = float(v[0]) if v else None
tunnels = sys.argv[2].split()
cols = [("redis_keep", "redis PING -c 50, keep-alive /s"), ("redis_new", "redis PING -c 50 -k 0 /s"),
        ("wrk_keep", "wrk -c 50 keep-alive /s"), ("wrk_close", "wrk -c 50 Connection: close /s")]
def f(x):
    return "–" if x is None else f"{x:,.0f}"
print("| tunnel | " + " | ".join(c[1] for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for t in tunnels:
    print(f"| {t} | " + " | ".join(f(vals.get((t, k))) for k, _ in cols) + " |")
if "sealpipe" in tunnels:
    print()
    print("| sealpipe / | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for t in tunnels:
        if t == "sealpipe":
            continue
        cells = []
        for k, _ in cols:
            a, b = vals.get(("sealpipe", k)), vals.get((t, k))
            cells.append("–" if not a or not b else f"{a / b:.2f}")
        print(f"| {t} | " + " | ".join(cells) + " |")
EOF
