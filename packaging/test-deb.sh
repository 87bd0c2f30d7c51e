#!/usr/bin/env bash
# Packaging test: builds the Debian package, installs it on this machine, checks what it put
# where, verifies the systemd units, then removes and purges it. Run by .ci/run.
#
#   bash packaging/test-deb.sh
#
# Needs root and dpkg/apt-get; otherwise prints "skipped: ..." and exits 0. Installs cargo-deb
# (cargo install) and the systemd package (for systemd-analyze and systemd-sysusers) only if missing.
# Reuses an up-to-date release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) != 0 ]]; then
    echo "skipped: packaging test needs root (dpkg -i)"
    exit 0
fi
if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "skipped: packaging test needs dpkg and apt-get (a Debian-like system)"
    exit 0
fi

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

# The postinst runs systemd-sysusers (the package depends on it); the test runs systemd-analyze.
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-sysusers >/dev/null 2>&1; then
    echo "==> installing systemd (systemd-analyze, systemd-sysusers)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq systemd >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq systemd >/dev/null; }
fi

deb=$(SEALPIPE_INSTALL_TOOLS=1 bash packaging/build-deb.sh | tail -n 1)
[[ -f $deb ]] || fail "packaging/build-deb.sh made no .deb"
echo "==> built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  &/p'

# Start clean and leave clean, also when a check fails.
purge() { dpkg --purge sealpipe >/dev/null 2>&1 || true; }
if dpkg -s sealpipe >/dev/null 2>&1; then
    echo "==> purging the sealpipe package already installed"
    purge
fi
trap purge EXIT

echo "==> dpkg -i"
dpkg -i "$deb"

echo "==> sealpipe --version"
version=$(dpkg-deb -f "$deb" Version)
out=$(/usr/bin/sealpipe --version)
echo "$out"
[[ $out == "sealpipe ${version%-*}"* ]] || fail "sealpipe --version says '$out', package is $version"

echo "==> user and /etc/sealpipe"
getent passwd sealpipe || fail "no sealpipe user (sysusers.d)"
perms=$(stat -c '%a %U:%G' /etc/sealpipe) || fail "no /etc/sealpipe (tmpfiles.d/postinst)"
echo "/etc/sealpipe $perms"
[[ $perms == "750 root:sealpipe" ]] || fail "/etc/sealpipe is $perms, expected 750 root:sealpipe"

echo "==> man pages, completions, examples"
zcat /usr/share/man/man1/sealpipe.1.gz | grep -q '^\.TH sealpipe 1 ' || fail "man page has no .TH sealpipe"
zcat /usr/share/man/man1/sealpipe-check.1.gz | grep -q '^\.TH sealpipe-check 1 ' \
    || fail "no subcommand page sealpipe-check(1)"
zcat /usr/share/man/man5/sealpipe.toml.5.gz | grep -q '^\.TH sealpipe.toml 5 ' \
    || fail "no config page sealpipe.toml(5)"
zcat /usr/share/man/man5/sealpipe.toml.5.gz | grep -q 'rekey_bytes' \
    || fail "sealpipe.toml(5) does not document rekey_bytes"
bash -n /usr/share/bash-completion/completions/sealpipe || fail "bash completion does not parse"
grep -q '^#compdef sealpipe' /usr/share/zsh/vendor-completions/_sealpipe || fail "zsh completion"
grep -q '^complete -c sealpipe' /usr/share/fish/vendor_completions.d/sealpipe.fish || fail "fish completion"
for f in connector.toml listener.toml; do
    [[ -s /usr/share/doc/sealpipe/examples/$f ]] || fail "missing example $f"
done
[[ -s /usr/share/doc/sealpipe/README.md ]] || fail "missing README.md (the unit's Documentation=)"
[[ -s /usr/share/doc/sealpipe/docs/operations.md ]] || fail "missing docs/operations.md (the unit's Documentation=)"
ls /usr/share/doc/sealpipe /usr/share/doc/sealpipe/examples

echo "==> systemd-analyze verify sealpipe@example.service"
# Loads the installed template for an instance: unknown or misspelt directives, bad values and a
# missing ExecStart binary are all reported. Any output at all fails the test.
unit=/usr/lib/systemd/system/sealpipe@.service
[[ -f $unit ]] || fail "no $unit"
grep -q '^ExecStart=/usr/bin/sealpipe run --config /etc/sealpipe/%i.toml$' "$unit" \
    || fail "the installed unit does not run /usr/bin/sealpipe"
verify=$(systemd-analyze verify sealpipe@example.service 2>&1) || fail "systemd-analyze verify: $verify"
[[ -z $verify ]] || fail "systemd-analyze verify printed: $verify"
echo "ok"

echo "==> systemd-analyze verify sealpipe@example.socket"
# The socket activation unit (listen = "systemd:sealed"), checked with the service it starts.
socket=/usr/lib/systemd/system/sealpipe@.socket
[[ -f $socket ]] || fail "no $socket"
grep -q '^FileDescriptorName=sealed$' "$socket" || fail "$socket names no FileDescriptorName=sealed"
grep -q '^Service=sealpipe@%i.service$' "$socket" || fail "$socket does not start sealpipe@%i.service"
verify=$(systemd-analyze verify sealpipe@example.socket 2>&1) || fail "systemd-analyze verify: $verify"
[[ -z $verify ]] || fail "systemd-analyze verify printed: $verify"
echo "ok"

echo "==> systemd-analyze security (exposure at most 2.0)"
# The hardening in the unit scores 1.2 today; a change that weakens it notably fails here.
security=$(systemd-analyze security --offline=yes --threshold=20 sealpipe@example.service 2>&1) \
    || fail "exposure above 2.0: $(tail -n 1 <<<"$security") (systemd-analyze security sealpipe@example.service)"
tail -n 1 <<<"$security"

echo "==> dpkg -r"
dpkg -r sealpipe
[[ ! -e /usr/bin/sealpipe && ! -e $unit && ! -e $socket ]] || fail "dpkg -r left the binary or a unit"
echo "==> dpkg --purge"
dpkg --purge sealpipe
trap - EXIT
if dpkg -s sealpipe >/dev/null 2>&1; then fail "sealpipe still known to dpkg after purge"; fi
[[ ! -e /etc/sealpipe ]] || fail "purge left the empty /etc/sealpipe"
echo "packaging test: ok"
