#!/usr/bin/env bash
# Before/after comparison of the library's benches: runs two builds' bench
# executables alternately (before, after, before, after, …) so that drift in
# the machine's load hits both alike, keeps every output, and prints the
# median of each figure per build with the change.
#
#   scripts/bench_compare.sh DIR_BEFORE DIR_AFTER OUT_DIR [ROUNDS] [BENCH…]
#
# DIR_* hold the bench executables named after their bench (hit_path,
# stampede, write_policies, near), e.g. copied from
# `cargo bench -p larder --no-run` of each commit (the paths it prints).
# ROUNDS defaults to 5; BENCH defaults to all four. Criterion benches run
# with `--measurement-time 3 --warm-up-time 1` (CRITERION_ARGS to change).
# Needs what the benches need (Redis, PostgreSQL; write_policies starts its
# own redis-server). Run it on a quiet machine: nothing else building.
set -euo pipefail

before=${1:?DIR_BEFORE}
after=${2:?DIR_AFTER}
out=${3:?OUT_DIR}
rounds=${4:-5}
shift $(( $# < 4 ? $# : 4 ))
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(hit_path stampede write_policies near)
criterion_args=${CRITERION_ARGS:---measurement-time 3 --warm-up-time 1 --noplot}

mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
    for bench in "${benches[@]}"; do
        for side in before after; do
            dir=$before
            [ "$side" = after ] && dir=$after
            exe="$dir/$bench"
            [ -x "$exe" ] || { echo "error: no executable $exe" >&2; exit 1; }
            log="$out/$bench.$side.$round.txt"
            echo "round $round/$rounds: $bench ($side)" >&2
            # Each side keeps its own criterion history, so criterion's
            # "change" lines never compare one build with the other.
            # shellcheck disable=SC2086
            CARGO_TARGET_DIR="$out/criterion-$side" "$exe" --bench $criterion_args >"$log" 2>&1 \
                || { echo "error: $bench ($side) failed, see $log" >&2; exit 1; }
        done
    done
done

python3 - "$out" "$rounds" "${benches[@]}" <<'PY'
import re, statistics, sys, pathlib
out, rounds, benches = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
unit = {"ps": 1e-12, "ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
def figures(text):
    """name -> value: criterion's median time (s), or a bench's own numbers."""
    found, name = {}, None
    for line in text.splitlines():
        # Criterion: "<id>  time: [lo mid hi]", or the id alone on the line
        # before when it is long.
        m = re.match(r"^(\S*)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m:
            found[f"{m.group(1) or name} time"] = float(m.group(2)) * unit[m.group(3)]
            continue
        if re.match(r"^\S+/\S+$", line.strip()) and not line.startswith(" "):
            name = line.strip()
        # write_policies: "<name>  N acks/s  p50 X ms  p99 Y ms".
        m = re.match(r"^(.+?)\s+(\d+)\s+acks/s\s+p50\s+(\S+) ms\s+p99\s+(\S+) ms", line)
        if m:
            found[f"{m.group(1).strip()} acks/s"] = float(m.group(2))
            found[f"{m.group(1).strip()} p99 ms"] = float(m.group(4))
        # stampede: "<name>  loads/expiry N  p50 X ms  p99 Y ms".
        m = re.match(r"^(.+?)\s+loads/expiry\s+(\S+)\s+p50\s+(\S+) ms\s+p99\s+(\S+) ms", line)
        if m:
            found[f"{m.group(1).strip()} loads/expiry"] = float(m.group(2))
            found[f"{m.group(1).strip()} p99 ms"] = float(m.group(4))
        # near's hit ratios: "  <name>  cold / all".
        m = re.match(r"^\s+(.+?)\s+(0\.\d+) / (0\.\d+)$", line)
        if m:
            found[f"hit ratio {m.group(1).strip()} cold"] = float(m.group(2))
            found[f"hit ratio {m.group(1).strip()} 1M"] = float(m.group(3))
    return found
for bench in benches:
    per = {"before": {}, "after": {}}
    for side in per:
        for r in range(1, rounds + 1):
            p = out / f"{bench}.{side}.{r}.txt"
            for k, v in figures(p.read_text(errors="replace")).items():
                per[side].setdefault(k, []).append(v)
    print(f"## {bench} (median of {rounds} alternating runs)")
    print(f"{'figure':<58} {'before':>12} {'after':>12} {'change':>8}")
    for k in per["before"]:
        if k not in per["after"]:
            continue
        b, a = statistics.median(per["before"][k]), statistics.median(per["after"][k])
        change = (a - b) / b * 100 if b else 0.0
        fmt = (lambda v: f"{v*1e6:.2f} µs") if k.endswith(" time") else (lambda v: f"{v:.3f}" if v < 10 else f"{v:.0f}")
        print(f"{k:<58} {fmt(b):>12} {fmt(a):>12} {change:>+7.1f}%")
    print()
PY
