#!/usr/bin/env bash
# Builds the guest kernel (an uncompressed vmlinux with a PVH entry note)
# from Debian's linux-source-6.12 and kernel/guest.config, reproducibly, and
# caches it under a key made of everything that goes into it.
#
#   rootfs/build-kernel.sh OUT_DIR        -> OUT_DIR/vmlinux, OUT_DIR/kernel.json
#
# Cache: ${COWORK_VM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cowork-microvm}/kernel/<key>/
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-kernel.sh OUT_DIR}
fragment=$here/kernel/guest.config
tarball=/usr/src/linux-source-6.12.tar.xz

missing=()
for tool in make gcc flex bison bc xz; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -f "$tarball" ] || missing+=("linux-source-6.12")
[ -f /usr/include/libelf.h ] || missing+=("libelf-dev")
[ -f /usr/include/openssl/ssl.h ] || missing+=("libssl-dev")
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-kernel: missing ${missing[*]}" >&2
    echo "build-kernel: install with: sudo apt-get install linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev xz-utils" >&2
    exit 2
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
key=$(cat "$fragment" "$0" <(echo "$src_version") | sha256sum | cut -c1-16)
cache=${COWORK_VM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cowork-microvm}/kernel/$key
mkdir -p "$out"

if [ ! -f "$cache/vmlinux" ]; then
    echo "build-kernel: building linux-source-6.12 $src_version (key $key); about 6 minutes on 2 cores" >&2
    work=$(mktemp -d "${TMPDIR:-/tmp}/cowork-kernel.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # A fixed source path keeps any embedded path the same from build to build.
    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src" --strip-components=1
    cd "$work/src"
    export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC" KBUILD_BUILD_USER=cowork \
        KBUILD_BUILD_HOST=cowork KBUILD_BUILD_VERSION=1 SOURCE_DATE_EPOCH=0 LC_ALL=C
    make -s tinyconfig >/dev/null
    scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
    make -s olddefconfig >/dev/null
    # Every line of the fragment must have survived olddefconfig.
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue;; esac
        opt=${line%%=*}; want=${line#*=}
        if [ "$want" = n ]; then
            grep -q "^$opt=" .config && { echo "build-kernel: $opt is set but the fragment says n" >&2; exit 3; }
        else
            grep -qx "$line" .config || { echo "build-kernel: $line did not stick (dependency missing?)" >&2; exit 3; }
        fi
    done < "$fragment"
    make -s -j"$(nproc)" vmlinux
    mkdir -p "$cache.tmp"
    cp vmlinux "$cache.tmp/vmlinux"
    cp .config "$cache.tmp/config"
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
    cd /
fi

cp "$cache/vmlinux" "$out/vmlinux"
cat > "$out/kernel.json" <<JSON
{"source": "linux-source-6.12", "sourceVersion": "$src_version", "cacheKey": "$key",
 "configFragmentSha256": "$(sha256sum "$fragment" | cut -d' ' -f1)",
 "configSha256": "$(sha256sum "$cache/config" | cut -d' ' -f1)",
 "vmlinuxSha256": "$(sha256sum "$out/vmlinux" | cut -d' ' -f1)"}
JSON
echo "build-kernel: $out/vmlinux (key $key)" >&2
