#!/bin/sh
# Take the device lock: LOCKDIR RECORD.  mkdir is atomic on every filesystem, so one holder wins.
# The record the host passes is "token host pid ttl_s"; the device appends its boot id and uptime in
# whole seconds, because staleness must come from clocks that never jump: a Pi has no RTC and NTP moves
# its wall clock by hours after boot, while boot id + uptime only change with a reboot.
# Prints one line: "acquired BOOT UPTIME" or "held BOOT UPTIME OWNER-RECORD" ("-" for an unknown value).
d=$1
rec=$2
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) || boot=-
[ -n "$boot" ] || boot=-
up=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
up=${up%%.*}
[ -n "$up" ] || up=-
mkdir -p "$(dirname "$d")" || exit 2
if mkdir "$d" 2>/dev/null; then
  printf '%s %s %s\n' "$rec" "$boot" "$up" > "$d/owner.tmp" && mv "$d/owner.tmp" "$d/owner" || exit 2
  echo "acquired $boot $up"
  exit 0
fi
if [ ! -d "$d" ]; then
  echo "cannot create $d" >&2
  exit 2
fi
owner=$(head -c 512 "$d/owner" 2>/dev/null | head -n 1)
echo "held $boot $up ${owner:--}"
