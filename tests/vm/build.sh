#!/usr/bin/env bash
# Build (or reuse) the cached pieces of the edgeplex VM test: a Debian kernel and a base initramfs
# tree with busybox, the vivid V4L2 test driver and its dependencies, and the glibc loader + libs.
#
#   tests/vm/build.sh OUTDIR
#
# Installs nothing. Needs (Debian packages): qemu-system-x86 busybox-static cpio kmod, plus apt,
# dpkg, libc-bin (ldd) and coreutils, which every Debian has. `apt-get update` must have run once
# (the kernel package is fetched with `apt-get download`).
#
# Output (OUTDIR):
#   kernel/          the extracted linux-image-*-amd64 package (+ depmod run on it)
#   vmlinuz          the kernel
#   vmlinux          the same kernel decompressed, for qemu's faster PVH boot (only if xz exists)
#   kver             the kernel release, e.g. 6.1.0-57-amd64
#   base/            base initramfs tree: /bin/busybox + applet links, /lib/modules/$KVER (vivid and
#                    its dependencies only, depmod'ed), glibc loader and libs
#   base.cpio        base/ as an uncompressed newc archive (run.sh appends a per-run archive to it)
#
# Idempotent and cached: the kernel step is keyed on the kernel package name and version
# (OUTDIR/kernel.stamp); the base step on that plus this script's hash (OUTDIR/base.stamp).
# A newer kernel package in the apt lists replaces the cached one. If the apt lists are missing
# but a cached kernel exists, the cached kernel is reused.
#
# Exit status: 0 ok; 2 a prerequisite is missing: a tool (the message names its Debian package),
# the apt lists, or the kernel download (no network); 1 anything else.
set -euo pipefail

die() { echo "tests/vm/build.sh: $*" >&2; exit 1; }
missing() { echo "tests/vm/build.sh: MISSING: $1" >&2; exit 2; }

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 1; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

# Kernel modules put into the guest (with everything modules.dep lists for them). Add more here;
# the base tree is rebuilt when this script changes.
GUEST_MODULES="vivid"

# ---- prerequisites (never installed here: CI installs them) --------------------------------------
export PATH="$PATH:/usr/sbin:/sbin" # depmod lives in /usr/sbin
need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 ||
    missing "'$1' not found; install the Debian package '$2' (apt-get install $2)"
}
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need cpio cpio
need depmod kmod
need apt-get apt
need apt-cache apt
need dpkg-deb dpkg
need ldd libc-bin
need timeout coreutils
need sha256sum coreutils
BUSYBOX=$(command -v busybox)
# A dynamically linked busybox (Debian package 'busybox') would also work with its libs copied,
# but the recipe and CI use the static one.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  missing "'$BUSYBOX' is dynamically linked; install the Debian package 'busybox-static'"
fi

# Serialize concurrent builds into the same OUTDIR (e.g. two test binaries at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.build.lock"
  flock 9
fi

log() { echo "tests/vm/build.sh: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'; }

# ---- 1. which kernel package ---------------------------------------------------------------------
# The kernel that the linux-image-amd64 metapackage depends on (what `apt-cache depends` names);
# its Depends field also pins the exact version: "linux-image-6.1.0-57-amd64 (= 6.1.192-3)".
# One apt-cache call: without a pkgcache.bin (Docker images) each call costs ~1.5 s.
PKG="" PKGVER=""
LISTS=/var/lib/apt/lists
if [ -f "$OUT/kernel.stamp" ] && [ -f "$OUT/vmlinuz" ] && [ -d "$LISTS" ] &&
  [ -z "$(find "$LISTS" -maxdepth 1 -newer "$OUT/kernel.stamp" -print -quit)" ]; then
  # the apt lists did not change since the cached kernel was chosen: same answer, skip apt-cache
  read -r PKG PKGVER <"$OUT/kernel.stamp"
elif meta=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null); then
  read -r PKG PKGVER < <(echo "$meta" | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-amd64\) *(= *\([^)]*\)).*/\1 \2/p' | head -n1) || true
  if [ -n "$PKG" ] && [ -z "$PKGVER" ]; then
    PKGVER=$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/{print $2; exit}')
  fi
fi
if [ -z "$PKG" ] || [ -z "$PKGVER" ] || [ "$PKGVER" = "(none)" ]; then
  if [ -f "$OUT/kernel.stamp" ] && [ -f "$OUT/vmlinuz" ]; then
    read -r PKG PKGVER <"$OUT/kernel.stamp"
    log "apt lists have no linux-image-amd64; reusing cached $PKG $PKGVER"
  else
    missing "apt-cache knows no linux-image-amd64 kernel; run 'apt-get update' first (Debian package 'apt')"
  fi
fi
KSTAMP="$PKG $PKGVER"

# ---- 2. download + extract + depmod the kernel package (cached on package name + version) --------
if [ "$(cat "$OUT/kernel.stamp" 2>/dev/null)" != "$KSTAMP" ]; then
  log "fetching $PKG $PKGVER"
  rm -rf "$OUT/kernel" "$OUT/kernel.tmp" "$OUT/vmlinuz" "$OUT/vmlinux" "$OUT/vmlinux.unavailable" \
    "$OUT/kver" "$OUT/kernel.stamp" \
    "$OUT/base" "$OUT/base.cpio" "$OUT/base.stamp" "$OUT"/deb
  mkdir -p "$OUT/deb" "$OUT/kernel.tmp"
  # apt-get download writes into the current directory; as root it warns that the download is
  # unsandboxed (the _apt user cannot write there): harmless.
  (cd "$OUT/deb" && apt-get download -q "$PKG=$PKGVER" 2>&1 | { grep -v '^W: Download is performed unsandboxed' >&2 || true; }) ||
    missing "apt-get download $PKG=$PKGVER failed: no network to the Debian archive, or stale apt lists (run apt-get update)"
  deb=$(ls "$OUT"/deb/*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "apt-get download produced no .deb"
  dpkg-deb -x "$deb" "$OUT/kernel.tmp"
  kver=$(ls "$OUT/kernel.tmp/lib/modules" | head -n1)
  [ -n "$kver" ] && [ -f "$OUT/kernel.tmp/boot/vmlinuz-$kver" ] || die "unexpected layout in $deb"
  depmod -b "$OUT/kernel.tmp" "$kver"
  mv "$OUT/kernel.tmp" "$OUT/kernel"
  cp "$OUT/kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz"
  echo "$kver" >"$OUT/kver"
  rm -rf "$OUT/deb" # the extracted tree is the cache; the 70 MB .deb is not needed any more
  echo "$KSTAMP" >"$OUT/kernel.stamp"
  log "kernel $kver ready ($(elapsed))"
fi
touch "$OUT/kernel.stamp" # checked against the apt lists now: skip apt-cache until they change
KVER=$(cat "$OUT/kver")
KMOD="$OUT/kernel/lib/modules/$KVER"

# ---- 2b. uncompressed vmlinux for PVH boot (optional, cached with the kernel) -------------------
# Under TCG the bzImage spends ~6 s decompressing its XZ payload before the first kernel message.
# qemu can boot the uncompressed ELF vmlinux directly through its PVH entry point (CONFIG_PVH=y),
# so decompress it once here on the host. Needs xz (Debian xz-utils; busybox's xzcat lacks the x86
# BCJ filter the kernel uses). Without it run.sh boots vmlinuz, just slower.
if [ ! -f "$OUT/vmlinux" ] && [ ! -f "$OUT/vmlinux.unavailable" ]; then
  why=""
  if ! grep -q '^CONFIG_PVH=y' "$OUT/kernel/boot/config-$KVER"; then
    why="kernel has no CONFIG_PVH"
  elif ! command -v xz >/dev/null 2>&1; then
    why="xz not found (Debian package xz-utils)"
  else
    # the payload is an XZ stream inside the bzImage: try each XZ magic until one decompresses
    # completely (--single-stream ignores the bytes after it) to an ELF file
    for off in $(LC_ALL=C grep -abo $'\xfd7zXZ' "$OUT/vmlinuz" | cut -d: -f1); do
      # (process substitution, not a pipe: tail's SIGPIPE would fail the pipeline under pipefail)
      if xz -dcq --single-stream < <(tail -c +$((off + 1)) "$OUT/vmlinuz") >"$OUT/vmlinux.tmp" 2>/dev/null &&
        [ "$(head -c4 "$OUT/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
        break
      fi
    done
    rm -f "$OUT/vmlinux.tmp"
    [ -f "$OUT/vmlinux" ] || why="no XZ-compressed ELF payload found in vmlinuz"
  fi
  if [ -n "$why" ]; then
    log "note: booting the compressed vmlinuz (~6 s slower under TCG): $why"
    # remember only what installing a package cannot fix
    [[ "$why" == xz* ]] || echo "$why" >"$OUT/vmlinux.unavailable"
  else
    log "extracted vmlinux for PVH boot ($(elapsed))"
  fi
fi

# ---- 3. base initramfs tree (cached on kernel + this script) --------------------------------------
BSTAMP="$KSTAMP $(sha256sum "$SELF" | cut -c1-16)"
if [ "$(cat "$OUT/base.stamp" 2>/dev/null)" != "$BSTAMP" ]; then
  log "building base initramfs tree for $KVER"
  B="$OUT/base.tmp"
  rm -rf "$B" "$OUT/base" "$OUT/base.cpio" "$OUT/base.stamp"
  mkdir -p "$B"/{bin,lib/x86_64-linux-gnu,lib64,proc,sys,dev,tmp,run,etc,root,mnt,var}
  ln -s bin "$B/sbin"
  mkdir -p "$B/usr"
  ln -s ../bin "$B/usr/bin"
  ln -s ../bin "$B/usr/sbin"
  ln -s ../lib "$B/usr/lib"

  # busybox + a link per applet (no `busybox --install` needed at boot)
  cp "$BUSYBOX" "$B/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] || [ -e "$B/bin/$a" ] || ln -s busybox "$B/bin/$a"
  done

  # glibc loader and the libs Rust binaries and friends usually need. run.sh adds whatever else
  # `ldd` of a given binary asks for.
  for f in /lib64/ld-linux-x86-64.so.2 \
    /lib/x86_64-linux-gnu/{libc.so.6,libm.so.6,libgcc_s.so.1,libpthread.so.0,libdl.so.2,librt.so.1}; do
    [ -e "$f" ] || die "$f not found on this host"
    cp -L "$f" "$B$f"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$B/etc/passwd"
  printf 'root:x:0:\n' >"$B/etc/group"

  # modules: $GUEST_MODULES and everything modules.dep lists for them. The UART (8250) is built in
  # (CONFIG_SERIAL_8250=y), so it needs no module; checked below against the kernel config.
  grep -q '^CONFIG_SERIAL_8250=y' "$OUT/kernel/boot/config-$KVER" ||
    die "this kernel has no built-in 8250 UART; add its modules to the module list in $SELF"
  grep -q '^CONFIG_DEVTMPFS=y' "$OUT/kernel/boot/config-$KVER" || die "kernel lacks CONFIG_DEVTMPFS"
  mods=""
  for m in $GUEST_MODULES; do
    line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$KMOD/modules.dep") || die "module $m not in modules.dep"
    mods="$mods ${line%%:*} ${line#*:}"
  done
  for rel in $mods; do
    mkdir -p "$B/lib/modules/$KVER/$(dirname "$rel")"
    cp "$KMOD/$rel" "$B/lib/modules/$KVER/$rel"
  done
  for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -f "$KMOD/$f" ] && cp "$KMOD/$f" "$B/lib/modules/$KVER/"
  done
  depmod -b "$B" "$KVER" # modules.dep etc. that name only the modules present

  # /dev/console lets the kernel give /init a console before devtmpfs is mounted (/init also
  # reopens it after mounting devtmpfs, so this is a nicety that needs root).
  mknod -m 600 "$B/dev/console" c 5 1 2>/dev/null || true

  (cd "$B" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet) >"$OUT/base.cpio.tmp"
  mv "$B" "$OUT/base"
  mv "$OUT/base.cpio.tmp" "$OUT/base.cpio"
  echo "$BSTAMP" >"$OUT/base.stamp"
  log "base initramfs ready: $(du -sh "$OUT/base" | cut -f1) tree, $(du -h "$OUT/base.cpio" | cut -f1) cpio ($(elapsed))"
fi

echo "tests/vm/build.sh: ready: kernel $KVER ($PKG $PKGVER) in $OUT ($(elapsed))" >&2
