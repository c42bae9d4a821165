#!/usr/bin/env bash
# Builds target/deb/cowork-microvm_<version>_amd64.deb from what `make deb`
# built: the helper, the static guest agent, and the guest kernel (from the
# kernel cache; rootfs/build-kernel.sh builds it when not cached, ~6 min).
#
#   packaging/build-deb.sh HELPER AGENT OUT_DIR INIT
#
# Plain dpkg-deb with a hand-written control file: no debhelper or
# cargo-deb to install, and the layout below is all there is.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tree=$(dirname "$here")
helper=${1:?usage: build-deb.sh HELPER AGENT OUT_DIR INIT}
agent=${2:?usage: build-deb.sh HELPER AGENT OUT_DIR INIT}
out=${3:?usage: build-deb.sh HELPER AGENT OUT_DIR INIT}
# The bwrap sandbox's pid 1; the helper looks for it in /usr/lib/cowork-microvm.
init=${4:?usage: build-deb.sh HELPER AGENT OUT_DIR INIT}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$tree/Cargo.toml" | head -n1)
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml" >&2; exit 1; }
for static in "$agent" "$init"; do
    if file -L "$static" | grep -q 'dynamically linked'; then
        echo "build-deb: $static is dynamically linked; build it with make agent / make release" >&2
        exit 1
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/cowork-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
lib=$root/usr/lib/cowork-microvm
share=$root/usr/share/cowork-microvm
doc=$root/usr/share/doc/cowork-microvm
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$lib" "$share" "$doc" "$root/usr/share/man/man1" \
    "$root/usr/share/lintian/overrides"

install -m 0755 "$helper" "$root/usr/bin/cowork-microvm"
install -m 0755 "$agent" "$lib/cowork-guest"
install -m 0755 "$init" "$lib/sandbox-init"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$root/usr/bin/cowork-microvm" "$lib/cowork-guest" "$lib/sandbox-init"

# The kernel and its description; image build checks the copy against it.
bash "$tree/rootfs/build-kernel.sh" "$work/kernel"
install -m 0644 "$work/kernel/vmlinux" "$lib/vmlinux"
install -m 0644 "$work/kernel/kernel.json" "$share/kernel.json"

install -m 0644 "$here/deb/copyright" "$doc/copyright"
for f in README.md docs/guest.md; do
    gzip -9n <"$tree/$f" >"$doc/$(basename "$f").gz"
    chmod 0644 "$doc/$(basename "$f").gz"
done
# A native package's changelog: this version, dated as the build is
# (SOURCE_DATE_EPOCH when set, for a reproducible package).
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$tree" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf 'cowork-microvm (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- cowork-microvm developers <cowork-microvm@users.noreply.github.com>  %s\n' \
    "$version" "$version" "$date" | gzip -9n >"$doc/changelog.gz"
sed "s/@VERSION@/$version/" "$here/cowork-microvm.1" | gzip -9n >"$root/usr/share/man/man1/cowork-microvm.1.gz"
install -m 0644 "$here/deb/lintian-overrides" "$root/usr/share/lintian/overrides/cowork-microvm"
chmod 0644 "$doc/changelog.gz" "$root/usr/share/man/man1/cowork-microvm.1.gz"

install -m 0755 "$here/deb/postrm" "$root/DEBIAN/postrm"

# Shared-library dependencies as dpkg computes them for any package.
mkdir -p "$work/src/debian"
printf 'Source: cowork-microvm\n\nPackage: cowork-microvm\nArchitecture: amd64\n' >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/cowork-microvm" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || shlibs="libc6"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" \
    "$here/deb/control.in" >"$root/DEBIAN/control"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/cowork-microvm_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
