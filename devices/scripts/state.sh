#!/bin/sh
# The device's performance state, one tab-separated record a line, for hosts whose device has no
# Python (benchmark_model route): cpufreq per CPU (governor, cur/min/max kHz), thermal zones (milli-C,
# type), the Raspberry Pi throttle flags when vcgencmd exists, and the device clock in seconds.
# Parsed by edgenas.measure.benchmark_model.parse_state; run as `sh -c "$(cat state.sh)"`.
for d in /sys/devices/system/cpu/cpu[0-9]*/cpufreq; do
  [ -d "$d" ] || continue
  c=${d%/cpufreq}; c=${c##*/cpu}
  printf 'cpufreq\t%s\t%s\t%s\t%s\t%s\n' "$c" "$(cat "$d/scaling_governor" 2>/dev/null)" \
    "$(cat "$d/scaling_cur_freq" 2>/dev/null)" "$(cat "$d/scaling_min_freq" 2>/dev/null)" \
    "$(cat "$d/scaling_max_freq" 2>/dev/null)"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -d "$z" ] || continue
  printf 'thermal\t%s\t%s\t%s\n' "${z##*/}" "$(cat "$z/temp" 2>/dev/null)" "$(cat "$z/type" 2>/dev/null)"
done
if command -v vcgencmd >/dev/null 2>&1; then
  printf 'throttled\t%s\n' "$(vcgencmd get_throttled 2>/dev/null)"
fi
printf 'time\t%s\n' "$(date +%s)"
