#!/usr/bin/env bash
# The nested end-to-end harness (kvm-on-these-machines.md): an outer
# machine under QEMU-TCG with an emulated SVM CPU boots Debian's
# linux-image-cloud-amd64 kernel, loads irqbypass, kvm and kvm-amd from the
# same package, and inside it this project's helper boots the guest kernel
# and minimal rootfs with its own VMM, then QEMU (-M microvm, KVM) boots the
# same guest for comparison. Timings are emulated: compare them as ratios.
#
#   tests/nested/e2e-nested.sh HELPER IMAGE_DIR [RESULT_JSON]
#
# With NESTED_AGENT_DRIVER (the agent_turn example) and NESTED_AGENT_SDK
# (a directory holding <version>/claude), and the standard rootfs in
# IMAGE_DIR, the outer machine also gets a disk with the standard image and
# the real Claude Code CLI: it times the standard image's boot and runs one
# agent turn on the kvm backend booting it, as the app does. With
# NESTED_GUEST_AGENT (the static guest agent), it updates an image while a
# VM runs from the old one.
#
# Prints NESTED-RESULT lines and exits 0 when the agent came up under our VMM.
set -euo pipefail

helper=$(realpath "${1:?usage: e2e-nested.sh HELPER IMAGE_DIR [RESULT_JSON]}")
images=$(realpath "${2:?usage: e2e-nested.sh HELPER IMAGE_DIR [RESULT_JSON]}")
# An image store (`image build` without --out): its current image.
if [ -L "$images/current" ]; then images=$(realpath "$images/current"); fi
result=${3:-}
cache=${COWORK_VM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cowork-microvm}/outer
for tool in qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb python3; do
    command -v "$tool" >/dev/null || { echo "e2e-nested: $tool is missing (sudo apt-get install qemu-system-x86 cpio apt python3)" >&2; exit 2; }
done
[ -x /bin/busybox ] || { echo "e2e-nested: /bin/busybox is missing (sudo apt-get install busybox-static)" >&2; exit 2; }
for f in vmlinux rootfs-minimal.ext4; do
    [ -f "$images/$f" ] || { echo "e2e-nested: $images/$f is missing (make image)" >&2; exit 2; }
done

# The outer kernel: whatever linux-image-cloud-amd64 points at today (the
# archive keeps only the newest build); apt-get download checks it against
# the signed index. The version and sha256 are recorded in the result.
dep=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$dep" ] || { echo "e2e-nested: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 2; }
version=$(apt-cache policy "$dep" | awk '/Candidate:/{print $2}')
mkdir -p "$cache"
deb=$(ls "$cache/${dep}_"*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    (cd "$cache" && apt-get download "$dep" >/dev/null 2>&1)
    deb=$(ls "$cache/${dep}_"*.deb | head -n1)
fi
deb_sha=$(sha256sum "$deb" | cut -d' ' -f1)

work=$(mktemp -d "${TMPDIR:-/tmp}/cowork-nested.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/outer"
vmlinuz=$(ls "$work"/outer/boot/vmlinuz-*)
kmods=$(ls -d "$work"/outer/lib/modules/*/kernel)
# The outer kernel's release, as its oops lines name it ("Not tainted
# 6.1.0-…"): how a panic of the outer kernel is told from the inner guest's.
outer_release=$(basename "$(dirname "$kmods")")

# The outer machine's initramfs.
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,newroot,guest,lib/cowork,usr/share/qemu}
echo '127.0.0.1 localhost upstream.test api.mock.test' > "$root/etc/hosts"
cp /bin/busybox "$root/bin/busybox"
for app in sh mount insmod poweroff cat sleep echo tr test [ ls wc dd kill true head grep tar rm mkdir sync cp touch switch_root sed timeout mkfifo dmesg cut; do ln -s busybox "$root/bin/$app"; done
cp "$kmods/virt/lib/irqbypass.ko" "$kmods/arch/x86/kvm/kvm.ko" "$kmods/arch/x86/kvm/kvm-amd.ko" "$root/lib/cowork/"
# For the stage disk (below): virtio-blk over PCI, all modules in this kernel.
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci; do cp "$kmods/drivers/virtio/$m.ko" "$root/lib/cowork/"; done
cp "$kmods/drivers/block/virtio_blk.ko" "$root/lib/cowork/"
cp "$images/vmlinux" "$images/rootfs-minimal.ext4" "$root/guest/"
# The image directory may name another profile (make image builds standard
# and minimal; standard is the default): the outer machine gets the kernel
# and minimal rootfs only, with a manifest that names minimal and lists just
# those two, so the kvm backend boots and verifies what is there.
python3 - "$images/manifest.json" >"$root/guest/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["profile"] = "minimal"
m["artifacts"] = {k: v for k, v in m["artifacts"].items() if k in ("vmlinux", "rootfs-minimal.ext4")}
json.dump(m, sys.stdout, indent=2)
PY
copy_with_libs() {
    local bin=$1 dest=$2
    mkdir -p "$root$(dirname "$dest")"
    cp "$bin" "$root$dest"
    ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
copy_with_libs "$helper" /bin/cowork-microvm
# The libraries of a program that is itself on the stage disk.
copy_libs() {
    ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
# The stage disk: the standard image and the CLI are too large for the
# initramfs (a tmpfs copy of ~700 MB in a 4 GB machine), so they go on an
# ext4 disk of their own, written in the outer machine to a throw-away
# overlay (QEMU's snapshot=on) and mounted as the agent helper's home.
stage_drive=()
agent_phase=""
if [ -n "${NESTED_AGENT_DRIVER:-}" ] && [ -n "${NESTED_AGENT_SDK:-}" ] && [ -f "$images/rootfs-standard.ext4" ]; then
    sdk_version=$(ls "$NESTED_AGENT_SDK" | head -n1)
    [ -x "$NESTED_AGENT_SDK/$sdk_version/claude" ] || { echo "e2e-nested: no CLI at $NESTED_AGENT_SDK/$sdk_version/claude" >&2; exit 2; }
    st=$work/stage
    mkdir -p "$st/images" "$st/home/.local/share/claude-sdk/$sdk_version"
    # Hard links where the files share a file system: no copies on disk.
    put() { ln "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
    put "$images/vmlinux" "$st/images/vmlinux"
    put "$images/rootfs-standard.ext4" "$st/images/rootfs-standard.ext4"
    put "$NESTED_AGENT_SDK/$sdk_version/claude" "$st/home/.local/share/claude-sdk/$sdk_version/claude"
    put "$NESTED_AGENT_DRIVER" "$st/agent_turn"
    copy_libs "$NESTED_AGENT_DRIVER"
    # The default profile's manifest, listing just what is staged.
    python3 - "$images/manifest.json" >"$st/images/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["profile"] = "standard"
m["artifacts"] = {k: v for k, v in m["artifacts"].items() if k in ("vmlinux", "rootfs-standard.ext4")}
json.dump(m, sys.stdout, indent=2)
PY
    size_mib=$(( $(du -sLm "$st" | cut -f1) + 2048 ))
    mke2fs -q -t ext4 -L stage -d "$st" "$work/stage.img" "${size_mib}M" >/dev/null
    rm -rf "$st"
    stage_drive=(-drive "file=$work/stage.img,format=raw,if=virtio,snapshot=on")
    agent_phase=1
fi
# The image update: the helper builds minimal images itself from the
# staged kernel (with the kernel.json a package ships) and static agent.
update_phase=""
if [ -n "${NESTED_GUEST_AGENT:-}" ] && [ -x "$NESTED_GUEST_AGENT" ]; then
    cp "$NESTED_GUEST_AGENT" "$root/guest/cowork-guest"
    python3 - "$images/manifest.json" >"$root/guest/kernel.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
k = {key[len("kernel."):]: v for key, v in m["inputs"].items() if key.startswith("kernel.")}
k["vmlinuxSha256"] = m["artifacts"]["vmlinux"]["sha256"]
json.dump(k, sys.stdout, indent=2)
PY
    copy_with_libs "$(command -v debugfs || echo /sbin/debugfs)" /sbin/debugfs
    update_phase=1
fi
if command -v bwrap >/dev/null; then copy_with_libs "$(command -v bwrap)" /usr/bin/bwrap; fi
copy_with_libs "$(command -v mke2fs || echo /sbin/mke2fs)" /sbin/mke2fs
# NESTED_STRACE=1: the first kvm helper runs under strace -f -c (the
# syscalls the whole helper uses, for its seccomp lists; slow).
strace_prefix=""
# The outer machine: NESTED_SMP vCPUs (default 2) under multi-threaded TCG
# (NESTED_TCG_THREAD=single for the round-robin one): the inner guest's
# vCPUs and the helper's device threads then run side by side, and a whole
# run takes minutes instead of most of an hour. All attempts together are
# given up after NESTED_TIMEOUT seconds (default 2400; a normal run takes
# under ten minutes on two cores); an outer machine that has printed
# nothing, not even its heartbeat, for NESTED_FROZEN seconds (default 180)
# is taken as frozen.
smp=${NESTED_SMP:-2}
limit=${NESTED_TIMEOUT:-2400}
frozen_after=${NESTED_FROZEN:-180}
case "$smp$limit$frozen_after" in *[!0-9]*) echo "e2e-nested: NESTED_SMP, NESTED_TIMEOUT and NESTED_FROZEN must be numbers" >&2; exit 2 ;; esac
# The heartbeat comes every 15 s: anything shorter would take a live machine
# for a frozen one.
[ "$frozen_after" -ge 30 ] || { echo "e2e-nested: NESTED_FROZEN must be at least 30" >&2; exit 2; }
tcg_thread=${NESTED_TCG_THREAD:-multi}
# The outer kernel's extra command line (NESTED_OUTER_CMDLINE; default
# mitigations=off): it is a throw-away machine under emulation, and its
# speculative-execution mitigations add MSR writes and return-stack
# untraining to every kernel entry and VM exit (error_entry, where its
# panics were, included), all emulated instruction by instruction.
outer_cmdline=${NESTED_OUTER_CMDLINE-mitigations=off}
case $outer_cmdline in *[!a-zA-Z0-9=,._\ -]*) echo "e2e-nested: NESTED_OUTER_CMDLINE holds an unexpected character" >&2; exit 2 ;; esac
case $tcg_thread in single|multi) ;; *) echo "e2e-nested: NESTED_TCG_THREAD is single or multi" >&2; exit 2 ;; esac
if [ -n "${NESTED_STRACE:-}" ] && command -v strace >/dev/null; then
    copy_with_libs "$(command -v strace)" /usr/bin/strace
    strace_prefix="/usr/bin/strace -f -c -o /tmp/strace.txt"
fi
qemu_inner=""
if [ -f /usr/share/qemu/qboot.rom ]; then
    # At /usr/bin: QEMU finds its data relative to its own path.
    copy_with_libs "$(command -v qemu-system-x86_64)" /usr/bin/qemu-system-x86_64
    # microvm's firmware and the PVH option ROM it loads -kernel with.
    [ -x /usr/lib/qemu/virtiofsd ] && copy_with_libs /usr/lib/qemu/virtiofsd /usr/lib/qemu/virtiofsd
    for rom in qboot.rom bios-microvm.bin pvh.bin linuxboot_dma.bin; do
        [ -e "/usr/share/qemu/$rom" ] && cp -L "/usr/share/qemu/$rom" "$root/usr/share/qemu/"
    done
    qemu_inner=1
fi
cat > "$root/init" <<INIT
#!/bin/sh
# bubblewrap cannot pivot_root out of an initramfs: move to a tmpfs root
# first (switch_root frees the initramfs).
if [ ! -e /.on-tmpfs ]; then
    mount -t tmpfs -o size=1200m root /newroot
    cp -a /bin /sbin /lib /usr /etc /guest /init /newroot/
    [ -d /lib64 ] && cp -a /lib64 /newroot/
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp
    touch /newroot/.on-tmpfs
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
# Where the time goes: each step's end, in seconds since the outer boot.
stamp() { echo "NESTED-TIME \$1 \$(cut -d' ' -f1 /proc/uptime)"; echo "after-\$1" >/tmp/step; }
echo start >/tmp/step
# Liveness, so the host side can tell a frozen outer machine (nothing in it
# runs: the emulator's or its kernel's fault) from a stuck step (the rest
# of the machine runs on: ours to explain): a beat every 15 s naming the
# step in progress, and once a step has run for 240 s, where every thread
# of the helpers, inner QEMUs and the agent driver waits (state, kernel
# wait channel, syscall, kernel stack), once per step. A step still
# running after 900 s ends the run (no step takes a tenth of that here).
(
    last=; since=0; told=
    while :; do
        sleep 15
        s=\$(cat /tmp/step)
        echo "NESTED-BEAT \$(cut -d' ' -f1 /proc/uptime) \$s"
        if [ "\$s" != "\$last" ]; then last=\$s; since=0; told=; else since=\$((since + 15)); fi
        if [ \$since -ge 900 ]; then
            echo "NESTED-STUCK \$s has run for 900 s with the machine alive; stopping it"
            poweroff -f
        fi
        [ \$since -ge 240 ] && [ -z "\$told" ] || continue
        told=1
        for p in /proc/[0-9]*; do
            case "\$(cat \$p/comm 2>/dev/null)" in cowork-microvm|qemu-system-x86|agent_turn|bwrap|sandbox-init) ;; *) continue ;; esac
            for t in \$p/task/*; do
                echo "NESTED-WATCH \$s \${p#/proc/} \$(cat \$t/comm) \$(cut -d' ' -f3 \$t/stat) \$(cat \$t/wchan) syscall=\$(cut -d' ' -f1 \$t/syscall)"
                head -12 \$t/stack | sed 's/^/NESTED-WATCH   /'
            done
        done 2>/dev/null
    done
) &
for m in irqbypass kvm kvm-amd; do insmod /lib/cowork/\$m.ko || echo "NESTED-ERROR insmod \$m"; done
if [ -n "$agent_phase" ]; then
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do insmod /lib/cowork/\$m.ko || echo "NESTED-ERROR insmod \$m"; done
    mkdir -p /stage
    n=0; while [ ! -b /dev/vda ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n+1)); done
    mount -t ext4 /dev/vda /stage || echo "NESTED-ERROR stage disk"
fi
if [ -c /dev/kvm ]; then echo "NESTED: /dev/kvm ready"; else echo "NESTED-ERROR no /dev/kvm"; fi
HOME=/tmp /bin/cowork-microvm vm boot ${VM_BOOT_FLAGS:-} --kernel /guest/vmlinux --rootfs /guest/rootfs-minimal.ext4 --mem-mib 256 --until-ready --timeout 240 --json /tmp/vmm.json
echo; echo "NESTED-RESULT vmm \$(cat /tmp/vmm.json)"
stamp vm-boot
if [ -n "$qemu_inner" ]; then
    HOME=/tmp /bin/cowork-microvm vm boot --qemu /usr/bin/qemu-system-x86_64 --kernel /guest/vmlinux --rootfs /guest/rootfs-minimal.ext4 --mem-mib 256 --until-ready --timeout 240 --json /tmp/qemu.json
    echo; echo "NESTED-RESULT qemu \$(cat /tmp/qemu.json)"
stamp qemu-boot
fi
# The helper protocol against the kvm backend, as the app drives it.
# NESTED_SECCOMP=log: the filters let everything through and the kernel
# logs what they would have refused (printed at the end).
export HOME=/tmp COWORK_VM_IMAGE_DIR=/guest COWORK_VM_LOG_FILE=/tmp/helper.log COWORK_VM_SECCOMP=${NESTED_SECCOMP:-}
# As a desktop's init would start it: output to a log file, seccomp
# enforced, and the very first startVM with no parameters (this made the
# session disk's mke2fs fail under the process filter once).
$strace_prefix /bin/cowork-microvm serve --backend kvm --socket /tmp/run/h.sock >/tmp/serve.log 2>&1 &
helper=\$!
while [ ! -S /tmp/run/h.sock ]; do sleep 0.1; done
# Where every thread of the helper is (state, kernel wait, current
# syscall) and the end of its log, printed at once: what a stuck step
# leaves behind, on the console (fd 9) even where the step's own output is
# thrown away.
exec 9>&1
diag() {
    {
        for t in /proc/\$helper/task/*; do
            echo "NESTED-DIAG \$1 \$(cat \$t/comm) \$(cut -d' ' -f3 \$t/stat) \$(cat \$t/wchan) syscall=\$(cut -d' ' -f1 \$t/syscall)"
        done 2>&1
        tail -\${2:-8} /tmp/helper.log 2>/dev/null | sed "s/^/NESTED-DIAG \$1 log /"
    } >&9
}
call() {
    o=\$(timeout 300 /bin/cowork-microvm call --socket /tmp/run/h.sock "\$@" 2>&1)
    [ \$? = 124 ] && diag "stuck-call(\$1)"
    printf '%s' "\$o" | tr -d '\n'
}
# Until a (re)started helper answers: call's own status, not tr's. After a
# SIGKILL the stale socket file is there before the new helper is.
serving() {
    n=0
    until timeout 30 /bin/cowork-microvm call --socket /tmp/run/h.sock isRunning >/dev/null 2>&1 || [ \$n -ge 600 ]; do sleep 0.2; n=\$((n+1)); done
    [ \$n -lt 600 ] || diag stuck-serving
}
# Waits for a killed process to end, at most a minute.
reap() {
    n=0
    while [ -d /proc/\$1 ] && ! grep -q '^State:.*Z' /proc/\$1/status 2>/dev/null && [ \$n -lt 300 ]; do sleep 0.2; n=\$((n+1)); done
    [ \$n -lt 300 ] || diag "stuck-exit(\$1)"
    wait \$1 2>/dev/null
}
echo "NESTED-PROTO firstStartVM \$(call startVM '{}')"
call stopVM >/dev/null
echo "NESTED-PROTO startVM \$(call startVM '{"memoryGB":0.25,"cpuCount":2}')"
echo "NESTED-PROTO isRunning \$(call isRunning)"
echo "NESTED-PROTO isGuestConnected \$(call isGuestConnected)"
# run [--as SESSION] ARGS...: a session (e2e unless named), as \`run\` drives it.
run() {
    name=e2e
    if [ "\$1" = --as ]; then name=\$2; shift 2; fi
    timeout 300 /bin/cowork-microvm run --socket /tmp/run/h.sock --name "\$name" "\$@"
    rc=\$?
    case \$rc in 124|143) diag "stuck-run(\$*)" ;; esac
    return \$rc
}
out=\$(cd / && run -- sh -c 'echo hello-from-vm; uname -n; exit 3' 2>&1); rc=\$?
echo "NESTED-SESSION echo \$(echo \$out | tr -d '\r') rc=\$rc"
# The first session on the VM startVM made: if it did not end as asked,
# the helper's log says what became of the VM (it ended once under us).
[ \$rc = 3 ] || diag "echo-rc-\$rc" 60
echo "NESTED-SESSION stdin \$(echo piped-in | run -- cat 2>&1 | tr -d '\r\n')"
echo "NESTED-SESSION bulk \$(run -- sh -c 'dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr "\\000" a' 2>/dev/null | wc -c)"
echo "NESTED-SESSION home \$(run -- sh -c 'ls /tmp/run >/dev/null 2>&1 && echo host-visible || echo host-invisible' 2>&1 | tr -d '\r\n')"
run -- sh -c 'echo kept > /sessions/e2e/kept.txt' >/dev/null 2>&1
echo "NESTED-SESSION cpus" \$(run -- sh -c 'grep -c ^processor /proc/cpuinfo' 2>&1)
# The session disk's bookkeeping, answered from inside the guest.
echo "NESTED-SESSION diskInfo" \$(call getSessionsDiskInfo '{}' | grep -o '"name":"e2e"')
# Shares over virtio-fs: a rw folder (the working directory) and a ro one.
mkdir -p /tmp/proj /tmp/docs; echo from-host > /tmp/proj/in.txt; echo precious > /tmp/docs/ro.txt
echo "NESTED-SESSION rw" \$(run --mount /tmp/proj:proj -- sh -c 'cat in.txt; pwd; echo from-vm > out.txt' 2>&1) \$(cat /tmp/proj/out.txt 2>&1)
echo "NESTED-SESSION ro" \$(run --mount /tmp/docs:docs:ro -- sh -c 'cat ro.txt; (echo x > ro.txt) 2>/dev/null && echo wrote || echo refused' 2>&1) \$(cat /tmp/docs/ro.txt)
stamp sessions
# Egress: the guest has no network device; its forwarder reaches the
# helper's proxy over vsock, which applies each session's allowedDomains.
mkdir -p /tmp/www; echo upstream-ok > /tmp/www/hello.txt
busybox ifconfig lo 127.0.0.1 up; busybox httpd -p 127.0.0.1:8080 -h /tmp/www
get='wget -q -O - http://upstream.test:8080/hello.txt 2>/dev/null || echo refused'
echo "NESTED-SESSION egressAllowed" \$(run --allow-domain upstream.test -- sh -c "\$get" 2>&1)
echo "NESTED-SESSION egressRefused" \$(run --allow-domain other.test -- sh -c "\$get" 2>&1)
echo "NESTED-SESSION egressDirect" \$(run --allow-domain upstream.test -- sh -c 'wget -q -Y off -O - http://127.0.0.1:8080/hello.txt 2>/dev/null || echo no-route' 2>&1)
stamp egress
# Two sessions on one helper, as the app runs them. sa holds a private
# folder and an egress credential; sb, its own user, must reach neither,
# nor sa's processes, the agent's token, the virtio-fs root or PID 1, nor
# write its own read-only folder. Then a process of sb connects to the
# agent port as if it were the agent (the agent binary run by hand): the
# helper refuses it and the real agent keeps serving.
mkdir -p /tmp/pa /tmp/pbro; echo secret-a > /tmp/pa/private.txt; echo precious-b > /tmp/pbro/ro.txt
call spawn '{"id":"sa1","name":"sa","command":"sh","args":["-c","echo a-up > /sessions/sa/up; sleep 120"],"additionalMounts":{"a":{"path":"tmp/pa","mode":"rw"}},"allowedDomains":["upstream.test"]}' >/dev/null
n=0; until call readFile '{"processName":"sa","filePath":"/sessions/sa/up"}' | grep -q a-up || [ \$n -ge 120 ]; do sleep 0.5; n=\$((n+1)); done
echo "NESTED-SESSION aPrivate \$(call readFile '{"processName":"sa","filePath":"/sessions/sa/mnt/a/private.txt"}' | grep -o secret-a)"
probe='echo uid=\$(id -u);
cat /sessions/sa/mnt/a/private.txt 2>/dev/null || echo no-a-file;
echo sessions=\$(ls /sessions 2>/dev/null | tr "\n" ,);
echo credentials=\$(cat /proc/[0-9]*/environ 2>/dev/null | tr "\000" "\n" | grep -o "cowork:[0-9a-f]*" | sort -u | wc -l);
echo fsroot=\$(ls /run/cowork-fs 2>/dev/null | wc -l);
echo token=\$(grep -c cowork.token /proc/cmdline 2>/dev/null || echo 0);
echo dmesg=\$(dmesg 2>/dev/null | grep -c cowork.token);
(echo x > ro.txt) 2>/dev/null && echo ro=wrote || echo ro=refused;
kill -9 1 2>/dev/null && echo init=killed || echo init=safe;
(echo c > /proc/sysrq-trigger) 2>/dev/null && echo sysrq=done || echo sysrq=refused;
/sbin/init >/dev/null 2>&1; echo forged=tried'
echo "NESTED-SESSION confined \$(run --as sb --mount /tmp/pbro:bro:ro -- sh -c "\$probe" 2>&1 | tr '\r\n' '  ')"
echo "NESTED-SESSION afterForged \$(call isGuestConnected) \$(run --as sb -- echo agent-still-serves 2>&1 | tr -d '\r\n') \$(grep -c 'connection to the agent port was refused' /tmp/helper.log)"
echo "NESTED-SESSION roHost \$(cat /tmp/pbro/ro.txt)"
call kill '{"id":"sa1","signal":"SIGKILL"}' >/dev/null
# kill and readFile through the protocol, as the app calls them.
call spawn '{"id":"k1","name":"e2e","command":"sleep","args":["30"]}' >/dev/null
call kill '{"id":"k1","signal":"SIGKILL"}' >/dev/null; sleep 1
echo "NESTED-SESSION killed \$(call isProcessRunning '{"id":"k1"}')"
echo "NESTED-SESSION readFile \$(call readFile '{"processName":"e2e","filePath":"/sessions/e2e/kept.txt"}')"
echo "NESTED-PROTO stopVM \$(call stopVM)"
echo "NESTED-PROTO isRunningAfterStop \$(call isRunning)"
stamp two-sessions
# The session disk outlives the VM and the helper, even one SIGKILLed
# mid-session (the VM running, a process in it; the stale socket replaced).
# Written (and synced: the helper is killed next) on this start's disk:
# each desktop profile has its own (the VM first started before \`run\`
# named its profile, so kept.txt above went to the unnamed profile's disk).
call startVM '{"memoryGB":0.25}' >/dev/null
stamp third-start
run -- sh -c 'echo kept > /sessions/e2e/kept.txt && sync' >/dev/null 2>&1
call spawn '{"id":"k2","name":"e2e","command":"sleep","args":["60"]}' >/dev/null
victim=\$helper
[ -n "$strace_prefix" ] && victim=\$(cut -d' ' -f1 /proc/\$helper/task/\$helper/children)
kill -9 \$victim; reap \$helper; sleep 1
stamp helper-killed
[ -f /tmp/strace.txt ] && { echo NESTED-STRACE-BEGIN; cat /tmp/strace.txt; echo NESTED-STRACE-END; }
/bin/cowork-microvm serve --backend kvm --socket /tmp/run/h.sock 2>/dev/null &
helper=\$!
serving
stamp helper-back
echo "NESTED-SESSION persisted \$(run -- cat /sessions/e2e/kept.txt 2>&1 | tr -d '\r\n')"
echo "NESTED-SESSION restart \$(call stopVM) \$(call startVM '{"memoryGB":0.25}') \$(run -- echo back 2>&1 | tr -d '\r\n')"
echo "NESTED-PROTO stopVM2 \$(call stopVM)"
kill \$helper; wait \$helper 2>/dev/null; sleep 1
stamp restart
# Figures, side by side in this machine (emulated): spawn->exit, output
# throughput and shared-folder work (untar, churn, a big file) in the VM
# against bwrap and the host. Not the QEMU + virtiofsd reference row here:
# under multi-threaded TCG it stalled in four runs of eight (make bench
# runs it wherever QEMU, virtiofsd and a Linux-capable /dev/kvm exist; the
# boot comparison above keeps QEMU in this harness). A smaller profile
# than --quick's, which alone takes about ten minutes here: the ratios,
# not the sizes, are what an emulated run shows.
# Its progress goes to the console as it happens.
(timeout 600 /bin/cowork-microvm bench --quick --iterations 10 --output-mib 4 --files 300 --big-mib 16 --backend host,bwrap,kvm --json /tmp/bench.json; echo \$? >/tmp/bench.rc) 2>&1 | tee /tmp/bench.txt
[ "\$(cat /tmp/bench.rc)" = 124 ] && echo "NESTED-BENCH-STUCK (its progress is above)"
echo "NESTED-BENCH \$(cat /tmp/bench.json 2>/dev/null | tr -d '\n')"
stamp bench
# An image update while a VM runs from the old image, as an installed user
# does it: \`image build\` switches current to a new image and keeps the old
# one for the running VM, which goes on unaffected; stopVM removes the old
# one, and the next startVM boots the new one.
if [ -n "$update_phase" ]; then
    mkdir -p /tmp/upd
    upd() { HOME=/tmp/upd COWORK_VM_IMAGE_DIR=/tmp/upd/images /bin/cowork-microvm "\$@"; }
    ucall() { upd call --socket /tmp/run/u.sock "\$@" 2>&1 | tr -d '\n'; }
    urun() { timeout 600 /bin/cowork-microvm run --socket /tmp/run/u.sock --name upd "\$@" 2>&1 | tr -d '\r\n'; }
    build() { upd image build --profile minimal --kernel /guest/vmlinux --agent /guest/cowork-guest >>/tmp/upd-build.log 2>&1 && echo built || echo build-failed; }
    b1=\$(build); old=\$(readlink -f /tmp/upd/images/current)
    # Started directly, not through upd: \$! is then the helper itself,
    # not a subshell that a kill would leave it running behind.
    HOME=/tmp/upd COWORK_VM_IMAGE_DIR=/tmp/upd/images /bin/cowork-microvm serve --backend kvm --socket /tmp/run/u.sock >/tmp/upd-serve.log 2>&1 &
    uhelper=\$!
    until upd call --socket /tmp/run/u.sock isRunning >/dev/null 2>&1; do sleep 0.2; done
    # \`run\` starts the VM itself, under the desktop profile it names (each
    # profile has its own session disk), as it does again after stopVM.
    r1=\$(urun -- sh -c 'echo before > /sessions/upd/kept; cat /sessions/upd/kept')
    b2=\$(build); new=\$(readlink -f /tmp/upd/images/current)
    kept=\$([ -d "\$old" ] && echo old-kept || echo old-gone)
    r2=\$(urun -- cat /sessions/upd/kept)
    ucall stopVM >/dev/null
    gone=\$([ -d "\$old" ] && echo old-kept || echo old-gone)
    r3=\$(urun -- cat /sessions/upd/kept)
    inuse=\$(upd image list --json | tr -d ' \n' | grep -o "\"path\":\"\$new\"[^}]*" | grep -o '"inUse":[a-z]*')
    ucall stopVM >/dev/null; kill \$uhelper; reap \$uhelper
    same=\$([ "\$old" != "\$new" ] && echo new-dir || echo same-dir)
    echo "NESTED-UPDATE \$b1 \$r1 \$b2 \$same \$kept \$r2 \$gone \$r3 \$inuse"
    grep -q 'kept old image' /tmp/upd-build.log || { echo NESTED-ERROR update; sed 's/^/NESTED-UPD-LOG /' /tmp/upd-build.log | tail -20; }
    [ "\$r3" = before ] || sed 's/^/NESTED-UPD-LOG /' /tmp/upd/.config/Claude/logs/cowork_vm_daemon.log | tail -40
fi
stamp update
# The standard image (the default profile) with the real Claude Code CLI:
# how long it takes to boot, and one agent turn on the kvm backend as the
# app runs it (installSdk, spawn of /usr/local/bin/claude with stream-json,
# the user message through writeStdin, stdout events until the result),
# then one in a session whose egress leaves the mock API out.
if [ -n "$agent_phase" ]; then
    HOME=/tmp /bin/cowork-microvm vm boot --kernel /stage/images/vmlinux --rootfs /stage/images/rootfs-standard.ext4 --mem-mib 1024 --until-ready --timeout 300 --json /tmp/vmm-std.json
    echo; echo "NESTED-RESULT vmmStandard \$(cat /tmp/vmm-std.json)"
    stamp standard-boot
    HOME=/stage/home COWORK_VM_IMAGE_DIR=/stage/images COWORK_VM_LOG_FILE=/tmp/agent-helper.log /bin/cowork-microvm serve --backend kvm --socket /tmp/run/a.sock >/tmp/agent-serve.log 2>&1 &
    ahelper=\$!
    n=0
    until timeout 30 /bin/cowork-microvm call --socket /tmp/run/a.sock isRunning >/dev/null 2>&1 || [ \$n -ge 600 ]; do sleep 0.2; n=\$((n+1)); done
    echo "NESTED-AGENT-START \$(timeout 300 /bin/cowork-microvm call --socket /tmp/run/a.sock startVM '{"memoryGB":1,"cpuCount":2}' 2>&1 | tr -d '\n')"
    stamp agent-start
    timeout 800 /stage/agent_turn --socket /tmp/run/a.sock --home /stage/home --sdk /stage/home/.local/share/claude-sdk --host api.mock.test >/tmp/agent.json 2>/tmp/agent.err
    echo "NESTED-AGENT \$(cat /tmp/agent.json)"
    [ -s /tmp/agent.json ] || sed 's/^/NESTED-AGENT-ERR /' /tmp/agent.err | tail -30
    echo "NESTED-AGENT-REFUSALS \$(grep -c 'egress denied: api.mock.test' /tmp/agent-helper.log)"
    /bin/cowork-microvm call --socket /tmp/run/a.sock stopVM >/dev/null 2>&1
    kill \$ahelper; wait \$ahelper 2>/dev/null
fi
stamp agent-turn
{ busybox ps; busybox free; } 2>&1 | sed 's/^/NESTED-PS /'
dmesg | grep 'type=1326' | head -40 | sed 's/^/NESTED-SECCOMP /'
echo NESTED-DONE
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

echo "e2e-nested: outer kernel $dep $version (sha256 $deb_sha); booting under QEMU-TCG" >&2
log=$work/console.log
# Emulated SVM under multi-threaded TCG now and then takes the outer
# machine down: its kernel panics in its exception entry while an inner VM
# runs (three of eleven runs here, twice in a row once), or the whole
# machine stops, heartbeat included (once in CI, after the image update).
# Neither is the helper's doing: nothing of ours runs in the outer kernel,
# and a step of ours that hangs leaves the heartbeat going. An attempt that
# ended either way is run again, up to four in all, while time is left;
# the result counts the attempts and says why each was repeated. A run that
# failed, or hung with its heartbeat going, is never retried. (The stage
# disk is a throw-away overlay: each attempt starts from the same state.)
deadline=$((SECONDS + limit))
attempts=0
retried=""
qpid=""
# An interrupted or failed harness leaves no emulator behind.
trap '[ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
while :; do
    attempts=$((attempts + 1))
    # timeout: a backstop should this loop itself be stopped.
    timeout $((deadline - SECONDS + 30)) qemu-system-x86_64 -accel "tcg,thread=$tcg_thread" -cpu EPYC,+svm -m 4096 -smp "$smp" -nographic -no-reboot \
        "${stage_drive[@]}" -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 panic=-1 quiet $outer_cmdline" </dev/null >"$log" 2>&1 &
    qpid=$!
    ended=""
    size=-1
    quiet=0
    while kill -0 "$qpid" 2>/dev/null; do
        sleep 5
        now=$(stat -c %s "$log")
        if [ "$now" = "$size" ]; then quiet=$((quiet + 5)); else size=$now; quiet=0; fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            ended=timeout
        elif [ "$quiet" -ge "$frozen_after" ]; then
            ended=frozen
        else
            continue
        fi
        kill "$qpid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$qpid" 2>/dev/null || true
        break
    done
    wait "$qpid" 2>/dev/null || true
    qpid=""
    grep -q NESTED-DONE "$log" && break
    # Only the outer kernel's own panic (its oops names its release), never
    # a run our watchdog stopped.
    if [ "$ended" != frozen ] && grep -q 'Kernel panic' "$log" && grep -qF "$outer_release" "$log"; then ended=panic; fi
    grep -q NESTED-STUCK "$log" && ended=stuck
    case $ended in panic|frozen) ;; *) break ;; esac
    # A whole run takes five to ten minutes: no retry without that left.
    [ "$attempts" -lt 4 ] && [ $((deadline - SECONDS)) -ge 600 ] || break
    cp "$log" "$work/console.attempt$attempts.log"
    if [ "$ended" = panic ]; then grep -B2 -A1 'Kernel panic' "$log" >&2 || true; else tail -5 "$log" >&2; fi
    echo "e2e-nested: attempt $attempts: the outer machine $( [ "$ended" = panic ] && echo "panicked" || echo "froze (nothing printed for ${frozen_after}s, heartbeat included)") after: $(sed -n 's/^NESTED-TIME //p' "$log" | tr -d '\r' | tr ' \n' ':,'); trying again" >&2
    retried="$retried${retried:+,}$ended"
done
grep -E "NESTED|cowork-guest|vm boot" "$log" | grep -v NESTED-BEAT >&2 || true
vmm=$(sed -n 's/.*NESTED-RESULT vmm //p' "$log" | tr -d '\r' | head -n1)
qemu=$(sed -n 's/.*NESTED-RESULT qemu //p' "$log" | tr -d '\r' | head -n1)
bench=$(sed -n 's/^NESTED-BENCH //p' "$log" | tr -d '\r' | head -n1)
vmm_std=$(sed -n 's/.*NESTED-RESULT vmmStandard //p' "$log" | tr -d '\r' | head -n1)
agent=$(sed -n 's/^NESTED-AGENT //p' "$log" | tr -d '\r' | head -n1)
refusals=$(sed -n 's/^NESTED-AGENT-REFUSALS //p' "$log" | tr -d '\r' | head -n1)
update=$(sed -n 's/^NESTED-UPDATE //p' "$log" | tr -d '\r' | head -n1 | sed 's/"/\\"/g')
proto() { sed -n "s/^NESTED-PROTO $1 //p" "$log" | tr -d '\r' | head -n1; }
session() { sed -n "s/^NESTED-SESSION $1 //p" "$log" | tr -d '\r' | head -n1 | sed 's/"/\\"/g'; }
# Each step's end (seconds since the outer boot), in order.
steps=$(sed -n 's/^NESTED-TIME //p' "$log" | tr -d '\r' | tr ' \n' ':,' | sed 's/,$//')
summary="{\"outerKernel\": \"$dep\", \"outerVersion\": \"$version\", \"outerDebSha256\": \"$deb_sha\", \"emulated\": true, \"vmm\": ${vmm:-null}, \"vmmStandard\": ${vmm_std:-null}, \"agentTurn\": ${agent:-null}, \"agentRefusalLogLines\": \"${refusals}\", \"imageUpdate\": \"${update}\", \"qemu\": ${qemu:-null}, \"bench\": ${bench:-null}, \"steps\": \"$steps\", \"attempts\": $attempts, \"retriedAfter\": \"$retried\", \"benchStuck\": $(grep -q NESTED-BENCH-STUCK "$log" && echo true || echo false), \"protocol\": {\"startVM\": \"$(proto startVM | sed 's/"/\\"/g')\", \"firstStartVM\": \"$(proto firstStartVM | sed 's/"/\\"/g')\", \"isRunning\": \"$(proto isRunning | sed 's/"/\\"/g')\", \"isRunningAfterStop\": \"$(proto isRunningAfterStop | sed 's/"/\\"/g')\", \"isGuestConnected\": \"$(proto isGuestConnected | sed 's/"/\\"/g')\"}, \"sessions\": {\"echo\": \"$(session echo)\", \"stdin\": \"$(session stdin)\", \"bulk\": \"$(session bulk)\", \"home\": \"$(session home)\", \"cpus\": \"$(session cpus)\", \"diskInfo\": \"$(session diskInfo)\", \"rw\": \"$(session rw)\", \"ro\": \"$(session ro)\", \"egressAllowed\": \"$(session egressAllowed)\", \"egressRefused\": \"$(session egressRefused)\", \"egressDirect\": \"$(session egressDirect)\", \"persisted\": \"$(session persisted)\", \"aPrivate\": \"$(session aPrivate)\", \"confined\": \"$(session confined)\", \"afterForged\": \"$(session afterForged)\", \"roHost\": \"$(session roHost)\", \"restart\": \"$(session restart)\", \"killed\": \"$(session killed)\", \"readFile\": \"$(session readFile)\"}}"
echo "$summary"
if [ -n "$result" ]; then
    echo "$summary" > "$result"
    cp "$log" "${result%.json}.console.log"
fi
# A run cut off by the time limit (or a crash) says where it stopped,
# last, where a truncated CI log still shows it.
if ! grep -q NESTED-DONE "$log"; then
    tail -40 "$log" >&2
    why="did not finish within ${limit}s (all attempts together)"
    [ "$ended" = frozen ] && why="froze (nothing printed for ${frozen_after}s, heartbeat included); attempts: $attempts${retried:+, retried after: $retried}"
    grep -q 'Kernel panic' "$log" && why="panicked (its kernel's trace is above)"
    grep -q NESTED-STUCK "$log" && why="had a step stuck (NESTED-WATCH lines above say where)"
    echo "e2e-nested: the outer machine $why (-smp $smp, tcg thread=$tcg_thread); steps done (s since boot): ${steps:-none}" >&2
    exit 1
fi
echo "e2e-nested: done; steps (s since boot): $steps" >&2
case "$vmm" in *'"ready":true'*) exit 0;; *) tail -40 "$log" >&2; exit 1;; esac
