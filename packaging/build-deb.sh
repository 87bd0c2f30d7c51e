#!/usr/bin/env bash
# Builds the Debian package: target/debian/sealpipe_<version>-1_<arch>.deb
#
#   bash packaging/build-deb.sh        # then: dpkg -i target/debian/sealpipe_*.deb
#
# 1. `cargo build --release --locked` (a no-op when the release binary is up to date);
# 2. generates into target/packaging/ what the package ships but the repository does not hold:
#    the man pages (`sealpipe man --out`: sealpipe(1), one per subcommand, sealpipe.toml(5)),
#    the bash/zsh/fish completions (from the binary itself, so they match its command line and
#    config keys) and the systemd units (sealpipe@.service, sealpipe@.socket) with the
#    package's paths (/usr/bin/sealpipe instead of the /usr/local/bin/sealpipe of a hand install);
# 3. `cargo deb --no-build`, which takes everything else from [package.metadata.deb] in
#    Cargo.toml (assets, maintainer scripts in packaging/debian/).
#
# Needs cargo-deb (`cargo install --locked cargo-deb`); installs it if missing and
# SEALPIPE_INSTALL_TOOLS=1. Honours CARGO_TARGET_DIR. Prints the path of the .deb last.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    if [[ ${SEALPIPE_INSTALL_TOOLS:-0} == 1 ]]; then
        echo "==> installing cargo-deb"
        cargo install --locked cargo-deb
    else
        echo "cargo-deb is missing: cargo install --locked cargo-deb" >&2
        exit 1
    fi
fi

cargo build --locked --release
target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/release/sealpipe"

# Fixed path relative to the crate: Cargo.toml's assets name it.
gen=target/packaging
rm -rf "$gen"
mkdir -p "$gen/completions"
"$bin" man --out "$gen/man" >/dev/null
"$bin" completions bash >"$gen/completions/sealpipe.bash"
"$bin" completions zsh >"$gen/completions/_sealpipe"
"$bin" completions fish >"$gen/completions/sealpipe.fish"
for f in "$gen/man/sealpipe.1" "$gen/man/sealpipe.toml.5" "$gen"/man/* "$gen"/completions/*; do
    [[ -s $f ]] || { echo "generated $f is empty" >&2; exit 1; }
done

# The units, with the package's paths and a note that the package did the one-time setup.
package_paths=(-e 's|/usr/local/bin/sealpipe|/usr/bin/sealpipe|g'
    -e 's|/usr/local/share/doc/sealpipe|/usr/share/doc/sealpipe|g')
sed "${package_paths[@]}" \
    -e '1a\
#\
# Installed by the sealpipe Debian package: the binary is /usr/bin/sealpipe, this unit is in\
# /usr/lib/systemd/system/, and the package has created the sealpipe user and group\
# (/usr/lib/sysusers.d/sealpipe.conf) and /etc/sealpipe, mode 0750 root:sealpipe\
# (/usr/lib/tmpfiles.d/sealpipe.conf). Skip the cp, useradd and install -d steps below.\
# Example configs: /usr/share/doc/sealpipe/examples/.' \
    systemd/sealpipe@.service >"$gen/sealpipe@.service"
sed "${package_paths[@]}" \
    -e '1a\
#\
# Installed by the sealpipe Debian package in /usr/lib/systemd/system/, beside\
# sealpipe@.service: skip the cp step below.' \
    systemd/sealpipe@.socket >"$gen/sealpipe@.socket"
for unit in "$gen/sealpipe@.service" "$gen/sealpipe@.socket"; do
    if grep -n '/usr/local' "$unit" | grep -v '^[0-9]*:#'; then
        echo "packaged $unit still names /usr/local outside comments" >&2
        exit 1
    fi
done

cargo deb --no-build --locked "$@"
ls -t "$target_dir"/debian/sealpipe_*.deb | head -n 1
