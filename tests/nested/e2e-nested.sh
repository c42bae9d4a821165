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

# The outer machine's initramfs.
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,newroot,guest,lib/cowork,usr/share/qemu}
echo '127.0.0.1 localhost upstream.test' > "$root/etc/hosts"
cp /bin/busybox "$root/bin/busybox"
for app in sh mount insmod poweroff cat sleep echo tr test [ ls wc dd kill true head grep tar rm mkdir sync cp touch switch_root sed timeout mkfifo dmesg cut; do ln -s busybox "$root/bin/$app"; done
cp "$kmods/virt/lib/irqbypass.ko" "$kmods/arch/x86/kvm/kvm.ko" "$kmods/arch/x86/kvm/kvm-amd.ko" "$root/lib/cowork/"
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
if command -v bwrap >/dev/null; then copy_with_libs "$(command -v bwrap)" /usr/bin/bwrap; fi
copy_with_libs "$(command -v mke2fs || echo /sbin/mke2fs)" /sbin/mke2fs
# NESTED_STRACE=1: the first kvm helper runs under strace -f -c (the
# syscalls the whole helper uses, for its seccomp lists; slow).
strace_prefix=""
fs_files=${NESTED_FS_FILES:-2000}
case $fs_files in ''|*[!0-9]*) echo "e2e-nested: NESTED_FS_FILES must be a number" >&2; exit 2 ;; esac
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
for m in irqbypass kvm kvm-amd; do insmod /lib/cowork/\$m.ko || echo "NESTED-ERROR insmod \$m"; done
if [ -c /dev/kvm ]; then echo "NESTED: /dev/kvm ready"; else echo "NESTED-ERROR no /dev/kvm"; fi
HOME=/tmp /bin/cowork-microvm vm boot ${VM_BOOT_FLAGS:-} --kernel /guest/vmlinux --rootfs /guest/rootfs-minimal.ext4 --mem-mib 256 --until-ready --timeout 240 --json /tmp/vmm.json
echo; echo "NESTED-RESULT vmm \$(cat /tmp/vmm.json)"
if [ -n "$qemu_inner" ]; then
    HOME=/tmp /bin/cowork-microvm vm boot --qemu /usr/bin/qemu-system-x86_64 --kernel /guest/vmlinux --rootfs /guest/rootfs-minimal.ext4 --mem-mib 256 --until-ready --timeout 240 --json /tmp/qemu.json
    echo; echo "NESTED-RESULT qemu \$(cat /tmp/qemu.json)"
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
call() { /bin/cowork-microvm call --socket /tmp/run/h.sock "\$@" 2>&1 | tr -d '\n'; }
# Until a (re)started helper answers: call's own status, not tr's. After a
# SIGKILL the stale socket file is there before the new helper is.
serving() { until /bin/cowork-microvm call --socket /tmp/run/h.sock isRunning >/dev/null 2>&1; do sleep 0.2; done; }
echo "NESTED-PROTO firstStartVM \$(call startVM '{}')"
call stopVM >/dev/null
echo "NESTED-PROTO startVM \$(call startVM '{"memoryGB":0.25,"cpuCount":2}')"
echo "NESTED-PROTO isRunning \$(call isRunning)"
echo "NESTED-PROTO isGuestConnected \$(call isGuestConnected)"
# A session that has not ended after 10 minutes is stuck: record where
# every thread of the helper is (state, kernel wait, current syscall),
# printed at the end as NESTED-DIAG, and give up on it.
diag() {
    for t in /proc/\$helper/task/*; do
        echo "\$1 \$(cat \$t/comm) \$(cut -d' ' -f3 \$t/stat) \$(cat \$t/wchan) syscall=\$(cut -d' ' -f1 \$t/syscall)"
    done >> /tmp/diag.txt 2>&1
}
# run [--as SESSION] ARGS...: a session (e2e unless named), as \`run\` drives it.
run() {
    name=e2e
    if [ "\$1" = --as ]; then name=\$2; shift 2; fi
    timeout 600 /bin/cowork-microvm run --socket /tmp/run/h.sock --name "\$name" "\$@"
    rc=\$?
    case \$rc in 124|143) diag "stuck-run(\$*)" ;; esac
    return \$rc
}
out=\$(cd / && run -- sh -c 'echo hello-from-vm; uname -n; exit 3' 2>&1); rc=\$?
echo "NESTED-SESSION echo \$(echo \$out | tr -d '\r') rc=\$rc"
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
# Egress: the guest has no network device; its forwarder reaches the
# helper's proxy over vsock, which applies each session's allowedDomains.
mkdir -p /tmp/www; echo upstream-ok > /tmp/www/hello.txt
busybox ifconfig lo 127.0.0.1 up; busybox httpd -p 127.0.0.1:8080 -h /tmp/www
get='wget -q -O - http://upstream.test:8080/hello.txt 2>/dev/null || echo refused'
echo "NESTED-SESSION egressAllowed" \$(run --allow-domain upstream.test -- sh -c "\$get" 2>&1)
echo "NESTED-SESSION egressRefused" \$(run --allow-domain other.test -- sh -c "\$get" 2>&1)
echo "NESTED-SESSION egressDirect" \$(run --allow-domain upstream.test -- sh -c 'wget -q -Y off -O - http://127.0.0.1:8080/hello.txt 2>/dev/null || echo no-route' 2>&1)
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
# The session disk outlives the VM and the helper, even one SIGKILLed
# mid-session (the VM running, a process in it; the stale socket replaced).
# Written (and synced: the helper is killed next) on this start's disk:
# each desktop profile has its own (the VM first started before \`run\`
# named its profile, so kept.txt above went to the unnamed profile's disk).
call startVM '{"memoryGB":0.25}' >/dev/null
run -- sh -c 'echo kept > /sessions/e2e/kept.txt && sync' >/dev/null 2>&1
call spawn '{"id":"k2","name":"e2e","command":"sleep","args":["60"]}' >/dev/null
victim=\$helper
[ -n "$strace_prefix" ] && victim=\$(cut -d' ' -f1 /proc/\$helper/task/\$helper/children)
kill -9 \$victim; wait \$helper 2>/dev/null; sleep 1
[ -f /tmp/strace.txt ] && { echo NESTED-STRACE-BEGIN; cat /tmp/strace.txt; echo NESTED-STRACE-END; }
/bin/cowork-microvm serve --backend kvm --socket /tmp/run/h.sock 2>/dev/null &
helper=\$!
serving
echo "NESTED-SESSION persisted \$(run -- cat /sessions/e2e/kept.txt 2>&1 | tr -d '\r\n')"
echo "NESTED-SESSION restart \$(call stopVM) \$(call startVM '{"memoryGB":0.25}') \$(run -- echo back 2>&1 | tr -d '\r\n')"
echo "NESTED-PROTO stopVM2 \$(call stopVM)"
# Figures, side by side in this machine (emulated): spawn->exit and output
# throughput in the VM against bwrap and the host.
kill \$helper; wait \$helper 2>/dev/null; sleep 1
/bin/cowork-microvm bench --quick --backend host,bwrap,kvm,qemu --json /tmp/bench.json >/tmp/bench.txt 2>&1
cat /tmp/bench.txt
echo "NESTED-BENCH \$(cat /tmp/bench.json 2>/dev/null | tr -d '\n')"
# Shared-folder work side by side: the same guest kernel and rootfs, the
# same busybox commands on a tar of NESTED_FS_FILES files (default 2,000;
# 5,000 takes over 20 more minutes under emulation) in a host folder,
# through our in-process virtio-fs and through QEMU with Debian's virtiofsd.
mkdir -p /tmp/fsb/src
i=0; while [ \$i -lt $fs_files ]; do d=/tmp/fsb/src/d\$((i/100)); [ -d \$d ] || mkdir \$d; echo "file \$i" > \$d/f\$i.txt; i=\$((i+1)); done
(cd /tmp/fsb/src && tar cf ../tree.tar .); rm -rf /tmp/fsb/src
fswork='rm -rf x && mkdir x && cd x && time tar xf ../tree.tar && cd .. && time ls -lR x >/dev/null && time rm -rf x'
/bin/cowork-microvm serve --backend kvm --socket /tmp/run/h.sock 2>/dev/null &
helper=\$!
serving
ours=\$(cd / && run --mount /tmp/fsb:fsb -- sh -c "\$fswork" 2>&1 | sed -n 's/^real[[:space:]]*//p' | tr '\n' ' ')
echo "NESTED-FS ours \$ours"
call stopVM >/dev/null; kill \$helper; wait \$helper 2>/dev/null; sleep 1
if [ -n "$qemu_inner" ] && [ -x /usr/lib/qemu/virtiofsd ]; then
    /usr/lib/qemu/virtiofsd --socket-path=/tmp/vfs.sock -o source=/tmp/fsb -o cache=auto -o sandbox=chroot >/tmp/virtiofsd.log 2>&1 &
    while [ ! -S /tmp/vfs.sock ]; do sleep 0.1; done
    # QEMU appends its virtio-mmio arguments to the command line, so the
    # guest's shell (init) takes its commands from the console, written
    # once its prompt shows (earlier input is lost while the UART comes up).
    # microvm's virtio-mmio is legacy by default; virtiofsd refuses legacy.
    mkfifo /tmp/qemu-in
    timeout 600 qemu-system-x86_64 -accel kvm -M microvm,acpi=off,memory-backend=mem -global virtio-mmio.force-legacy=false -cpu host -m 256 \
        -object memory-backend-memfd,id=mem,size=256M,share=on -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel /guest/vmlinux -drive id=root,file=/guest/rootfs-minimal.ext4,format=raw,if=none,readonly=on -device virtio-blk-device,drive=root \
        -chardev socket,id=vfs,path=/tmp/vfs.sock -device vhost-user-fs-device,chardev=vfs,tag=fsb \
        -append "console=ttyS0 reboot=t panic=-1 root=/dev/vda ro rootfstype=ext4 quiet init=/bin/sh" \
        </tmp/qemu-in >/tmp/qemu-fs.log 2>&1 &
    qemu_fs=\$!
    exec 3>/tmp/qemu-in
    n=0; while ! grep -q '^/ # ' /tmp/qemu-fs.log && [ \$n -lt 600 ]; do sleep 0.5; n=\$((n+1)); done
    printf '%s\n' "mount -t proc p /proc; mount -t tmpfs t /tmp; mkdir /tmp/m; mount -t virtiofs fsb /tmp/m && cd /tmp/m && \$fswork; echo FS-\\\$((1+1))-DONE; reboot -f" >&3
    wait \$qemu_fs; exec 3>&-
    echo "NESTED-FS qemu \$(sed -n 's/^real[[:space:]]*//p' /tmp/qemu-fs.log | tr -d '\r' | tr '\n' ' ')"
    grep -q FS-2-DONE /tmp/qemu-fs.log || { echo "NESTED-ERROR qemu-fs"; tail -20 /tmp/qemu-fs.log; cat /tmp/virtiofsd.log; }
fi
dmesg | grep 'type=1326' | head -40 | sed 's/^/NESTED-SECCOMP /'
[ -f /tmp/diag.txt ] && sed 's/^/NESTED-DIAG /' /tmp/diag.txt
echo NESTED-DONE
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

echo "e2e-nested: outer kernel $dep $version (sha256 $deb_sha); booting under QEMU-TCG" >&2
log=$work/console.log
timeout 2400 qemu-system-x86_64 -accel tcg -cpu EPYC,+svm -m 2048 -smp 1 -nographic -no-reboot \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 panic=-1 quiet" </dev/null >"$log" 2>&1 || true
grep -E "NESTED|cowork-guest|vm boot" "$log" >&2 || true
vmm=$(sed -n 's/.*NESTED-RESULT vmm //p' "$log" | tr -d '\r' | head -n1)
qemu=$(sed -n 's/.*NESTED-RESULT qemu //p' "$log" | tr -d '\r' | head -n1)
bench=$(sed -n 's/^NESTED-BENCH //p' "$log" | tr -d '\r' | head -n1)
fs() { sed -n "s/^NESTED-FS $1 //p" "$log" | tr -d '\r' | head -n1; }
proto() { sed -n "s/^NESTED-PROTO $1 //p" "$log" | tr -d '\r' | head -n1; }
session() { sed -n "s/^NESTED-SESSION $1 //p" "$log" | tr -d '\r' | head -n1 | sed 's/"/\\"/g'; }
session() { sed -n "s/^NESTED-SESSION $1 //p" "$log" | tr -d '\r' | head -n1 | sed 's/"/\\"/g'; }
summary="{\"outerKernel\": \"$dep\", \"outerVersion\": \"$version\", \"outerDebSha256\": \"$deb_sha\", \"emulated\": true, \"vmm\": ${vmm:-null}, \"qemu\": ${qemu:-null}, \"bench\": ${bench:-null}, \"sharedFolder\": {\"files\": $fs_files, \"steps\": \"untar, ls -lR, rm -rf (busybox time, real)\", \"ours\": \"$(fs ours)\", \"qemuVirtiofsd\": \"$(fs qemu)\"}, \"protocol\": {\"startVM\": \"$(proto startVM | sed 's/"/\\"/g')\", \"firstStartVM\": \"$(proto firstStartVM | sed 's/"/\\"/g')\", \"isRunning\": \"$(proto isRunning | sed 's/"/\\"/g')\", \"isRunningAfterStop\": \"$(proto isRunningAfterStop | sed 's/"/\\"/g')\", \"isGuestConnected\": \"$(proto isGuestConnected | sed 's/"/\\"/g')\"}, \"sessions\": {\"echo\": \"$(session echo)\", \"stdin\": \"$(session stdin)\", \"bulk\": \"$(session bulk)\", \"home\": \"$(session home)\", \"cpus\": \"$(session cpus)\", \"diskInfo\": \"$(session diskInfo)\", \"rw\": \"$(session rw)\", \"ro\": \"$(session ro)\", \"egressAllowed\": \"$(session egressAllowed)\", \"egressRefused\": \"$(session egressRefused)\", \"egressDirect\": \"$(session egressDirect)\", \"persisted\": \"$(session persisted)\", \"aPrivate\": \"$(session aPrivate)\", \"confined\": \"$(session confined)\", \"afterForged\": \"$(session afterForged)\", \"roHost\": \"$(session roHost)\", \"restart\": \"$(session restart)\", \"killed\": \"$(session killed)\", \"readFile\": \"$(session readFile)\"}}"
echo "$summary"
if [ -n "$result" ]; then
    echo "$summary" > "$result"
    cp "$log" "${result%.json}.console.log"
fi
case "$vmm" in *'"ready":true'*) exit 0;; *) tail -40 "$log" >&2; exit 1;; esac
