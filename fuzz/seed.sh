#!/usr/bin/env bash
# Writes seed inputs for every fuzz target into fuzz/corpus/<target>/ (git-ignored).
#
# Seeds come from the PROTOCOL.md §8 test vectors (read from the document, so they follow it),
# the committed DER public keys in fuzz/seeds/spki/ and the example configs in etc/. Existing
# corpus files are kept: libFuzzer adds what it finds next to them.
#
# Input framings are documented at the top of each fuzz_targets/*.rs and in fuzz/src/lib.rs
# (`Chunked`: byte 0 = number of cuts % 8, then u16 chunk lengths, then the payload).
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus

vector() { # vector NAME: the hex value of NAME in PROTOCOL.md §8
    local v
    v=$(sed -n "s/^ *$1 = \([0-9a-f]*\)$/\1/p" ../PROTOCOL.md)
    [[ -n $v ]] || { echo "seed.sh: vector $1 not found in PROTOCOL.md" >&2; exit 1; }
    printf '%s' "$v"
}
tohex() { od -An -tx1 -v "$1" | tr -d ' \n'; }
rep() { local s=""; for ((i = 0; i < $2; i++)); do s+=$1; done; printf '%s' "$s"; }
vec16() { printf '%04x%s' $((${#1} / 2)) "$1"; } # vec16 HEX
hex2bin() {
    if command -v xxd >/dev/null; then xxd -r -p
    elif command -v perl >/dev/null; then perl -e 'local $/; $_ = <STDIN>; print pack("H*", $_)'
    else python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read()))'
    fi
}
seed() { # seed TARGET NAME HEX
    mkdir -p "$corpus/$1"
    printf '%s' "$3" | hex2bin >"$corpus/$1/seed-$2"
}

# Protocol 2's hellos carry ML-KEM-768 values drawn by aws-lc-rs (no byte-exact vector): the
# seeds are hellos of the right shape (PROTOCOL.md §2, §9: 1269, 1157 and 1317 bytes), version
# 2, no options, fixed field bytes (their mac1 is wrong: the fuzz targets re-mac what they need).
CH="1104f20200$(rep 42 32)$(rep 09 32)$(rep 5a 1184)$(rep 00 16)"
LH="1204820200$(rep 43 32)$(rep 09 32)$(rep 6b 1088)"
RH="15052202007b$(rep 44 31)$(rep 09 32)$(rep 5a 1184)$(rep 17 48)$(rep 00 16)"
PING=$(vector first_record_ping)
REKEY=$(vector second_record_rekey)
PONG=$(vector third_record_pong_generation_1)
ALERT_SERVICE=$(vector alert_record_service_mismatch)
ALERT_UNTRUSTED=$(vector alert_record_untrusted)
AUTH_FIELDS=$(vector connector_auth_spki_service_fields)
SPKI_L=$(tohex seeds/spki/listener.der)
SPKI_C=$(tohex seeds/spki/connector.der)
SPKI_U=$(tohex seeds/spki/untrusted.der)
SIG=$(rep 41 256)
FIN=$(rep 00 32)
SERVICE=$(printf fuzz | od -An -tx1 -v | tr -d ' \n') # the fuzz tunnels' service
vec8() { printf '%02x%s' $((${#1} / 2)) "$1"; }     # vec8 HEX
AUTH_RAW_BODY=$(rep 00 602)                         # an auth header 14025a / 13025a, then this

t=handshake_listener
seed $t hello "00$CH"
seed $t hello-split "03000100020050$CH"
seed $t hello-then-auth "00${CH}14025a$AUTH_RAW_BODY"
seed $t hello-short "00${CH:0:120}"
seed $t wrong-type "00$LH"
seed $t bad-mac1 "00${CH:0:2506}$(rep ff 16)"
seed $t resume-hello "00$RH"
seed $t resume-hello-split "0200100100$RH"

# Mode targets: byte 0 is the mode, then (for raw modes) the Chunked framing of the rest.
t=handshake_listener_after_hello
seed $t raw-auth "000014025a$AUTH_RAW_BODY"
seed $t raw-auth-split "0002000200ff14025a$AUTH_RAW_BODY"
seed $t raw-too-long "0000140fff"
seed $t sealed-trusted "01$(vec16 "$SPKI_C")$(vec8 "$SERVICE")$(vec16 "$SIG")$FIN"
seed $t sealed-untrusted "01$(vec16 "$SPKI_U")$(vec8 "$SERVICE")$(vec16 "$SIG")$FIN"
seed $t sealed-listener-key "01$(vec16 "$SPKI_L")$(vec8 "$SERVICE")$(vec16 "$SIG")$FIN"
seed $t sealed-no-service "01$(vec16 "$SPKI_C")$(vec16 "$SIG")$FIN"
seed $t sealed-tiny "0100010001000100$FIN"
seed $t signed-trusted "0200$SERVICE"
seed $t signed-untrusted "0201$SERVICE"
seed $t signed-other-service "0200706f737467726573"
seed $t signed-bad-service "02007265206469"
seed $t signed-long-service "0200$(rep 61 65)"

t=handshake_listener_resume
RF="170020$(rep c5 32)"
RH_FIELDS=${RH:6:132}    # version, options, random, e_c
RH_EK=${RH:138:2368}     # the encapsulation key
RH_TICKET=${RH:2506:96}  # a ticket id and binder (unknown to the fuzz listener)
seed $t real-ticket "01$RH_FIELDS"
seed $t real-ticket-finished "01${RH_FIELDS}00$RF"
seed $t real-ticket-finished-split "01${RH_FIELDS}010002$RF"
seed $t real-ticket-bad-version "0102${RH_FIELDS:2}00$RF"
seed $t real-ticket-low-order "01${RH_FIELDS:0:68}$(rep 00 32)00$RF"
seed $t real-ticket-own-ek "03${RH_FIELDS}${RH_EK}00$RF"
seed $t unknown-ticket "00$RH_FIELDS$RH_TICKET"
seed $t unknown-ticket-then-auth "00$RH_FIELDS${RH_TICKET}0014025a$AUTH_RAW_BODY"
seed $t unknown-ticket-bad-ek "02$RH_FIELDS$(rep ff 1184)$RH_TICKET"

t=handshake_connector
LH_BODY=${LH:6}
seed $t hello "0000$LH"
seed $t hello-split "000300010003003f$LH"
seed $t hello-then-auth "0000${LH}13025a$AUTH_RAW_BODY"
seed $t body-then-auth "01${LH_BODY}0013025a$AUTH_RAW_BODY"
seed $t body-psk-option "01${LH_BODY:0:2}01${LH_BODY:4}0013025a$AUTH_RAW_BODY"
seed $t body-low-order "01${LH_BODY:0:68}$(rep 00 32)${LH_BODY:132}0013025a$AUTH_RAW_BODY"
seed $t body-bad-version "0101${LH_BODY:2}0013025a$AUTH_RAW_BODY"

t=alert_first_record
seed $t vector-service-mismatch "00$ALERT_SERVICE"
seed $t vector-untrusted "00$ALERT_UNTRUSTED"
seed $t vector-alert-then-alert "00$ALERT_UNTRUSTED$ALERT_SERVICE"
seed $t body-service-mismatch "0105$(vector alert_body_service_mismatch)"
seed $t body-untrusted "01050100"
seed $t body-unknown-code "01050300"
seed $t body-wrong-length "0105020470"
seed $t data-record "010170696e67"

t=auth_decode
seed $t connector-auth "01$(vec16 "$SPKI_C")$(vec8 "$SERVICE")$(vec16 "$SIG")$FIN"
seed $t listener-auth "00$(vec16 "$SPKI_L")$(vec16 "$SIG")$FIN"
seed $t vector-fields "01${AUTH_FIELDS}$(vec16 "$SIG")$FIN"
seed $t no-service "01$(vec16 "$SPKI_C")$(vec16 "$SIG")$FIN"

t=record_open
seed $t ping "$PING"
seed $t ping-rekey "$PING$REKEY"
seed $t ping-rekey-pong "$PING$REKEY$PONG"
seed $t rekey-first "$REKEY$PING"
seed $t pong-first "$PONG"
seed $t max-length "01010010$(rep 00 64)"
seed $t close-header "02000010$(rep 00 16)"

t=seal_open_roundtrip
# rekey_bytes 5: data 4, explicit rekey, data 6 (rekey due after), close, data after close
seed $t small-ops "000004000003"0d"000005"0f"000001"
# rekey_bytes 16 MiB: a 64 KiB record, request_rekey, a 17-byte record, close
seed $t max-record "ffffff00ffff0e0c100f"
# rekey_bytes 1: every data record forces a rekey first
seed $t rekey-every-record "000000000000010001020003"

t=stream_info
seed $t vector "$(vector stream_info_body)"
seed $t v4-no-destination "010004c00002019c4004c00002021538"
seed $t unix-client "010000000004c00002021538"

t=config_parse
mkdir -p "$corpus/$t"
for f in ../etc/*.toml; do cp "$f" "$corpus/$t/seed-$(basename "$f")"; done

# Committed reproducers of past findings run as seeds, so every run replays them first.
for d in regressions/*/; do
    [[ -d $d ]] || continue
    mkdir -p "$corpus/$(basename "$d")"
    cp "$d"* "$corpus/$(basename "$d")/" 2>/dev/null || true
done

echo "seed.sh: seeds in $(pwd)/$corpus/"
