#!/usr/bin/env bash
# Boot the edgeplex VM test guest once and report whether the guest test body passed.
#
#   tests/vm/run.sh OUTDIR GUEST_SCRIPT [FILE | FILE=GUEST_PATH ...]
#
# OUTDIR is what tests/vm/build.sh OUTDIR made (kernel + base initramfs). GUEST_SCRIPT becomes
# /test.sh in the guest; /init (tests/vm/init) runs it with `sh -e` after loading vivid, prints
# `EDGEPLEX-VM-RESULT: PASS` if it exited 0 (`... FAIL (status N)` otherwise) and powers off.
# Each FILE is copied to /bin/<basename> in the guest (or to GUEST_PATH with FILE=GUEST_PATH);
# ELF files get the shared libraries `ldd` names copied along and their debug info stripped.
#
# The guest sees (guest path <- host side):
#   /dev/ttyS0  console          <- this script's stdout (live) and RUN/console.log
#   /dev/ttyS1  a real 16550 UART <- Unix stream socket RUN/uart.sock: qemu listens on it
#               (server=on,wait=off), the host test connects to it any time after it appears;
#               bytes written by the host arrive on the guest's ttyS1 and vice versa. While no
#               host client is connected, guest output to ttyS1 is dropped.
#   /dev/video0 vivid (n_devs=1 node_types=0x1), /dev/shm and /tmp tmpfs
#
# Per-run files go to RUN=${EDGEPLEX_VM_RUN_DIR:-OUTDIR}: initrd.cpio, console.log, uart.sock.
# Give concurrent runs different EDGEPLEX_VM_RUN_DIRs.
#
# Environment knobs:
#   EDGEPLEX_VM_RUN_DIR   per-run directory (default OUTDIR)
#   EDGEPLEX_VM_TIMEOUT   hard host-side limit for the whole VM in seconds (default 300); the guest
#                         kills its test body 30 s before that so it can still report
#   EDGEPLEX_VM_MEM       guest RAM in MiB (default 512)
#   EDGEPLEX_VM_VIVID     vivid module parameters, comma-separated (default n_devs=1,node_types=0x1;
#                         "none" = do not load vivid at boot)
#   EDGEPLEX_VM_APPEND    extra kernel command line arguments (e.g. "quiet")
#   EDGEPLEX_VM_QEMU_ARGS extra qemu arguments (word-split)
#   EDGEPLEX_VM_QMP=1     also serve QMP on RUN/qmp.sock (for device_add/device_del while the guest
#                         runs) and declare a chardev `hs1c` on RUN/hs1.sock (qemu listens) that a
#                         hotplugged device can use: device_add pci-serial,id=hs1,chardev=hs1c
#   EDGEPLEX_VM_STRIP=0   do not strip debug info from copied ELF files
#   EDGEPLEX_VM_KERNEL=bzimage  boot OUTDIR/vmlinuz even if OUTDIR/vmlinux (PVH) exists
#
# Exit status: 0 the guest printed the PASS marker; 1 it printed FAIL or no marker; 2 prerequisites
# missing (build.sh not run, qemu missing); 124 the host-side timeout killed qemu.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR GUEST_SCRIPT [FILE | FILE=GUEST_PATH ...]" >&2; exit 1; }
die() { echo "tests/vm/run.sh: $*" >&2; exit 1; }
log() { echo "tests/vm/run.sh: $*" >&2; }
[ $# -ge 2 ] || usage
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(cd "$1" && pwd) || die "no such OUTDIR: $1"
BODY=$2
shift 2
[ -f "$BODY" ] || die "no such guest script: $BODY"

for t in qemu-system-x86_64:qemu-system-x86 cpio:cpio ldd:libc-bin timeout:coreutils; do
  command -v "${t%%:*}" >/dev/null 2>&1 ||
    { echo "tests/vm/run.sh: MISSING: '${t%%:*}' not found; install the Debian package '${t#*:}'" >&2; exit 2; }
done
for f in vmlinuz base.cpio kver; do
  [ -f "$OUT/$f" ] || { echo "tests/vm/run.sh: MISSING: $OUT/$f; run tests/vm/build.sh $OUT first" >&2; exit 2; }
done

RUN=${EDGEPLEX_VM_RUN_DIR:-$OUT}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
TIMEOUT=${EDGEPLEX_VM_TIMEOUT:-300}
GUEST_TIMEOUT=$((TIMEOUT > 60 ? TIMEOUT - 30 : TIMEOUT * 2 / 3))
MEM=${EDGEPLEX_VM_MEM:-512}
VIVID=${EDGEPLEX_VM_VIVID:-n_devs=1,node_types=0x1}
STRIP=${EDGEPLEX_VM_STRIP:-1}

# ---- per-run initramfs: base.cpio + an overlay archive (the kernel unpacks both in order) -------
OV="$RUN/overlay"
rm -rf "$OV"
mkdir -p "$OV/bin"
install -m 755 "$HERE/init" "$OV/init"
install -m 755 "$BODY" "$OV/test.sh"

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

copy_libs() { # copy_libs HOST_BINARY: the shared libraries it needs, at the same paths
  local out lib
  out=$(ldd "$1" 2>&1) || return 0 # static or not an executable: nothing to copy
  if echo "$out" | grep -q 'not found'; then
    die "ldd $1: missing libraries on the host:"$'\n'"$out"
  fi
  for lib in $(echo "$out" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(0x/{print $1}'); do
    [ -e "$OUT/base$lib" ] && cmp -s "$lib" "$OUT/base$lib" && continue
    [ -e "$OV$lib" ] && continue
    mkdir -p "$OV$(dirname "$lib")"
    cp -L "$lib" "$OV$lib"
  done
}

for spec in "$@"; do
  if [[ "$spec" == *=* ]]; then src=${spec%%=*} dest=${spec#*=}; else src=$spec dest=/bin/$(basename "$spec"); fi
  [ -f "$src" ] || die "no such file: $src"
  [[ "$dest" == /* ]] || die "guest path must be absolute: $dest"
  mkdir -p "$OV$(dirname "$dest")"
  if is_elf "$src"; then
    if [ "$STRIP" != 0 ] && command -v strip >/dev/null 2>&1; then
      strip --strip-debug -o "$OV$dest" "$src" 2>/dev/null || cp "$src" "$OV$dest"
    else
      cp "$src" "$OV$dest"
    fi
    chmod 755 "$OV$dest"
    copy_libs "$src"
  else
    cp "$src" "$OV$dest"
  fi
done

(cd "$OV" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$RUN/overlay.cpio"
cat "$OUT/base.cpio" "$RUN/overlay.cpio" >"$RUN/initrd.cpio"
rm -rf "$OV" "$RUN/overlay.cpio"

# ---- the second serial port: a Unix socket qemu listens on ---------------------------------------
SOCK="$RUN/uart.sock"
SOCKDIR=""
rm -f "$SOCK" "$RUN/console.log"
if [ ${#SOCK} -gt 100 ]; then # sun_path is 108 bytes: put the socket in a short dir, link to it
  SOCKDIR=$(mktemp -d /tmp/edgeplex-vm.XXXXXX)
  ln -s "$SOCKDIR/uart.sock" "$SOCK"
  QSOCK="$SOCKDIR/uart.sock"
else
  QSOCK="$SOCK"
fi
cleanup() { rm -f "$SOCK" "$RUN/qmp.sock" "$RUN/hs1.sock"; [ -z "$SOCKDIR" ] || rm -rf "$SOCKDIR"; }
trap cleanup EXIT

# ---- optional: QMP, and a chardev for a hotplugged serial card ------------------------------------
QMP_ARGS=()
if [ "${EDGEPLEX_VM_QMP:-0}" = 1 ]; then
  QDIR=$(dirname "$QSOCK")
  for s in qmp hs1; do
    rm -f "$RUN/$s.sock"
    [ "$QDIR" = "$RUN" ] || ln -s "$QDIR/$s.sock" "$RUN/$s.sock"
  done
  QMP_ARGS=(-qmp "unix:$QDIR/qmp.sock,server=on,wait=off"
    -chardev "socket,id=hs1c,path=$QDIR/hs1.sock,server=on,wait=off")
fi

# The uncompressed vmlinux boots ~6 s faster under TCG (PVH entry, no in-guest XZ decompression).
KERNEL="$OUT/vmlinuz"
[ -f "$OUT/vmlinux" ] && [ "${EDGEPLEX_VM_KERNEL:-}" != bzimage ] && KERNEL="$OUT/vmlinux"

APPEND="console=ttyS0 panic=-1 rdinit=/init edgeplex.timeout=$GUEST_TIMEOUT edgeplex.vivid=$VIVID ${EDGEPLEX_VM_APPEND:-}"
# shellcheck disable=SC2206 # word splitting of the extra qemu arguments is intended
EXTRA=(${EDGEPLEX_VM_QEMU_ARGS:-})

log "booting $(cat "$OUT/kver") ($(basename "$KERNEL"), TCG, ${MEM} MiB, timeout ${TIMEOUT}s); console: $RUN/console.log, UART ttyS1: $SOCK"
start=$(date +%s.%N)
set +e
# --foreground: stay in our process group, so killing this script's group also kills qemu.
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg -cpu max -m "$MEM" -smp 1 \
  -nodefaults -display none -no-reboot -nic none \
  -kernel "$KERNEL" -initrd "$RUN/initrd.cpio" -append "$APPEND" \
  -chardev "stdio,id=con0,signal=off,logfile=$RUN/console.log" -serial chardev:con0 \
  -chardev "socket,id=uart1,path=$QSOCK,server=on,wait=off" -serial chardev:uart1 \
  "${QMP_ARGS[@]}" "${EXTRA[@]}" </dev/null
rc=$?
set -e
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')

result=$(tr -d '\r' <"$RUN/console.log" 2>/dev/null | grep -o 'EDGEPLEX-VM-RESULT: .*' | tail -n1 || true)
if [ "$result" = "EDGEPLEX-VM-RESULT: PASS" ]; then
  log "PASS in ${secs}s (qemu exit status $rc)"
  exit 0
fi
{
  echo "tests/vm/run.sh: FAIL after ${secs}s: qemu exit status $rc$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo " (host timeout ${TIMEOUT}s)"), marker: ${result:-none}"
  echo "---- last 60 lines of $RUN/console.log ----"
  tail -n 60 "$RUN/console.log" 2>/dev/null | tr -d '\r'
  echo "----"
} >&2
[ $rc -eq 124 ] || [ $rc -eq 137 ] && exit 124
exit 1
