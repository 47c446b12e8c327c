#!/bin/sh
# An SSH upload (edgenas.device.transports.ssh): TMP FINAL SHA256 SIZE, the file's bytes on stdin.  Writes
# them to TMP (a hidden .NAME.edgenas-tmp-* sibling), checks their sha256 (the size where the device
# has no sha256sum) and renames TMP over FINAL; rename(2) is atomic, so FINAL holds the old file or
# the complete new one.  A host that dies mid-way closes stdin: cat ends, the check fails, TMP goes.
# Every failure removes TMP *before* saying why (stderr may be gone with the host).  A directory at
# FINAL is refused: mv would move the upload into it.  Exit 3 write, 4 sha256, 5 size, 6 rename.
t=$1 f=$2 want=$3 n=$4
no() { rm -f -- "$t"; echo "$2" >&2; exit "$1"; }
cat > "$t" || no 3 "cannot write $t"
if command -v sha256sum >/dev/null 2>&1; then
  s=$(sha256sum -- "$t") || no 3 "cannot read back $t"
  [ "${s%% *}" = "$want" ] || no 4 "sha256 of $t is ${s%% *}, expected $want"
else
  got=$(wc -c < "$t") || no 3 "cannot read back $t"
  [ "$got" -eq "$n" ] || no 5 "the upload is truncated ($got of $n bytes)"
fi
[ -d "$f" ] && no 6 "cannot move the upload into place: $f is a directory"
mv -f -- "$t" "$f" || no 6 "cannot move the upload into place at $f"
