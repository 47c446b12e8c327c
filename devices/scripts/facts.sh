#!/bin/sh
# What a device is, with nothing but a POSIX shell: phones and minimal boards may have no Python.
# $1 = the device's python (only looked up, never run).  One key=value per line, values on one line.
# Parsed by edgenas_device.facts.parse_facts_sh into the same dict the runner's `info` reports as
# "device"; boot_id and uptime are the clocks lock staleness is judged by (they never jump).
py=${1:-python3}
kv() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ' | cut -c1-256)"; }
kv arch "$(uname -m 2>/dev/null)"
kv kernel "$(uname -r 2>/dev/null)"
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091  # a system file, read in a subshell for PRETTY_NAME only
  kv os "$(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")"
elif command -v getprop >/dev/null 2>&1; then kv os "Android $(getprop ro.build.version.release)"
else kv os "$(uname -s 2>/dev/null)"; fi
kv cpu_model "$(grep -m1 -iE '^(model name|cpu model|hardware)[[:space:]]*:' /proc/cpuinfo 2>/dev/null \
  | sed 's/^[^:]*:[[:space:]]*//')"
kv board "$(tr -d '\000' 2>/dev/null < /proc/device-tree/model)"
kv cores_online "$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
kv cores_usable "$(nproc 2>/dev/null)"
kv mem_total_kib "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
kv mem_available_kib "$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)"
f=/sys/devices/system/cpu/cpu0/cpufreq
kv governor "$(cat "$f/scaling_governor" 2>/dev/null)"
kv freq_khz "$(cat "$f/scaling_cur_freq" 2>/dev/null)"
kv freq_max_khz "$(cat "$f/cpuinfo_max_freq" 2>/dev/null)"
t=
for z in /sys/class/thermal/thermal_zone*/temp; do
  v=$(cat "$z" 2>/dev/null) || continue
  case "$v" in ''|*[!0-9-]*) continue;; esac
  if [ -z "$t" ] || [ "$v" -gt "$t" ]; then t=$v; fi
done
kv temp_millic "$t"
kv boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
kv uptime "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)"
if command -v "$py" >/dev/null 2>&1; then kv python_path "$(command -v "$py")"; fi
