#!/usr/bin/env bash
# Builds the kernel and the minimal rootfs twice, each time from scratch
# (empty kernel cache, new output directory), and compares their sha256.
#   rootfs/repro.sh HELPER AGENT
set -euo pipefail
helper=${1:?usage: repro.sh HELPER AGENT}
agent=${2:?usage: repro.sh HELPER AGENT}
work=$(mktemp -d "${TMPDIR:-/tmp}/cowork-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT
for run in 1 2; do
    echo "repro: build $run of 2" >&2
    COWORK_VM_CACHE_DIR=$work/cache$run "$helper" image build --profile minimal --agent "$agent" --out "$work/out$run" >/dev/null
done
status=0
for f in vmlinux rootfs-minimal.ext4; do
    a=$(sha256sum "$work/out1/$f" | cut -d' ' -f1)
    b=$(sha256sum "$work/out2/$f" | cut -d' ' -f1)
    if [ "$a" = "$b" ]; then
        echo "repro: $f identical: $a"
    else
        echo "repro: $f DIFFERS: $a vs $b"
        status=1
    fi
done
exit $status
