#!/usr/bin/env bash
# report.sh - one command that measures a ds4cl host and writes a markdown
# report a user can post (made for Strix Halo, runs on any OpenCL device).
#
#   ports/strix-halo/report.sh [--device N|NAME] [--out FILE.md] [--quick]
#                              [--ctx-max N] [--gen N] [--model FILE.gguf]
#                              [--no-sweep] [--no-bench]
#
# Steps, each logged under <report>.d/ next to the report:
#   1. builds what it needs with make (ds4cl, ds4cl-matvec-bench, and unless
#      --no-bench ds4cl-bench; ds4cl-benchmodel when the model is missing);
#   2. machine facts: CPU, RAM, distro, kernel, the kernel parameters that
#      size GTT (amdgpu.*, ttm.*, amdttm.*, iommu), the TTM limits and GTT /
#      VRAM sizes the driver reports, GPU power level, platform profile,
#      transparent huge pages, ROCm and linux-firmware versions, OpenCL ICDs;
#   3. clinfo (device summary: the fields README.md "What to check" lists)
#      and `ds4cl --list-devices`;
#   4. ds4cl-matvec-bench: matvec GB/s per weight type against the copy and
#      stream-read bandwidth, plus (unless --no-sweep or --quick) a sweep of
#      work-group shapes (MV_LANES x MV_ROWS) for the q2 types;
#   5. ds4cl-bench on a 4-layer benchmark model with the real widths
#      (gguf/bench-q2.gguf, written by ds4cl-benchmodel when missing):
#      prefill / decode t/s per context frontier, the kernel profile and the
#      projected 43-layer numbers; a PNG plot when python3 is present;
#   6. "Projected numbers": the bandwidth ceiling and the matvec-bound
#      decode rate computed from this machine's measurements (README.md,
#      "Projected numbers", explains the arithmetic).
# A failing step is reported in the file (with its log tail) and the others
# still run; the exit status is 1 if any step failed, 2 on a bad command
# line.  Nothing here needs root; it changes no system setting.
set -euo pipefail

PROG=report.sh
ORIG_PWD=$PWD
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

usage() {
    printf 'usage:\n'
    sed -n '5,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    usage >&2
    exit 2
}

# ------------------------------------------------------------ options ---
DEVICE=""
OUT=""
QUICK=0
SWEEP=1
BENCH=1
CTX_MAX=""
GEN=""
MODEL=""
while [ $# -gt 0 ]; do
    case $1 in
        --device) [ $# -ge 2 ] || usage_error "missing value for $1"; DEVICE=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage_error "missing value for $1"; OUT=$2; shift 2 ;;
        --ctx-max) [ $# -ge 2 ] || usage_error "missing value for $1"; CTX_MAX=$2; shift 2 ;;
        --gen) [ $# -ge 2 ] || usage_error "missing value for $1"; GEN=$2; shift 2 ;;
        --model) [ $# -ge 2 ] || usage_error "missing value for $1"; MODEL=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --no-sweep) SWEEP=0; shift ;;
        --no-bench) BENCH=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown option: $1" ;;
    esac
done
# --quick: a short run (two frontiers, 16 tokens, no sweep) unless told otherwise.
if [ "$QUICK" = 1 ]; then
    CTX_MAX=${CTX_MAX:-4096}
    GEN=${GEN:-16}
    SWEEP=0
fi
CTX_MAX=${CTX_MAX:-16384}
GEN=${GEN:-64}
case $CTX_MAX in '' | *[!0-9]*) usage_error "--ctx-max wants a number of tokens, not '$CTX_MAX'" ;; esac
case $GEN in '' | *[!0-9]*) usage_error "--gen wants a number of tokens, not '$GEN'" ;; esac
CTX_START=2048
[ "$CTX_MAX" -ge "$CTX_START" ] || CTX_START=$CTX_MAX
if [ "$CTX_START" -lt 1 ] || [ "$GEN" -lt 1 ]; then usage_error "--ctx-max and --gen must be at least 1"; fi
STEP=$(( CTX_MAX > 16384 ? 4096 : 2048 ))

# -------------------------------------------------------------- tools ---
need() {
    command -v "$1" > /dev/null 2>&1 || die "$1 not found: $2"
}
need make "install make (Debian/Ubuntu: apt install build-essential; Fedora: dnf install make gcc)"
need cc "install a C compiler (Debian/Ubuntu: apt install build-essential; Fedora: dnf install gcc)"
need clinfo "install clinfo (Debian/Ubuntu: apt install clinfo; Fedora: dnf install clinfo)"
need awk "install awk"
need sed "install sed"
HAVE_PY=0
if command -v python3 > /dev/null 2>&1; then HAVE_PY=1; fi

STAMP=$(date +%Y%m%d-%H%M%S)
if [ -z "$OUT" ]; then OUT="$ORIG_PWD/ds4cl-report-$STAMP.md"; fi
case $OUT in /*) ;; *) OUT="$ORIG_PWD/$OUT" ;; esac
WORK="${OUT%.md}.d"
mkdir -p "$WORK" || die "cannot create $WORK"
: > "$OUT" || die "cannot write $OUT"
FAILED=0
if [ -n "$DEVICE" ]; then export DS4CL_DEVICE="$DEVICE"; fi

cd "$ROOT"

# ------------------------------------------------------------ helpers ---
md() { printf '%s\n' "$@" >> "$OUT"; }

# Append a file as a fenced block (or a note when it is empty/missing).
md_file() {
    if [ -s "$1" ]; then
        md '```'
        cat "$1" >> "$OUT"
        md '```'
    else
        md "_(no output)_"
    fi
}

# run_step NAME LOG CMD...: run CMD with stdout+stderr into LOG; on failure
# note it in the report with the log tail and remember it.
run_step() {
    local name=$1 log=$2
    shift 2
    printf '%s: %s...\n' "$PROG" "$name" >&2
    local rc=0
    "$@" > "$log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then return 0; fi
    FAILED=1
    md "" "**$name failed (exit $rc)**: \`$*\`; last lines of its log:" '```'
    tail -n 25 "$log" >> "$OUT"
    md '```'
    printf '%s: %s failed (exit %d), see %s\n' "$PROG" "$name" "$rc" "$log" >&2
    return 1
}

# A CSV (header + rows, no quoted commas) as a markdown table.
csv_table() {
    awk -F, 'NR == 1 { h = "|"; s = "|"; for (i = 1; i <= NF; i++) { h = h " " $i " |"; s = s "---|" }
                       print h; print s; next }
             NF > 0 { r = "|"; for (i = 1; i <= NF; i++) r = r " " $i " |"; print r }' "$1" >> "$OUT"
}

# First line of a file, or "-" when it is missing/unreadable.
first_line() {
    local v=""
    if [ -r "$1" ]; then v=$(head -n 1 "$1" 2> /dev/null || true); fi
    printf '%s' "${v:--}"
}

# The value of a /proc/cpuinfo or /proc/meminfo style key.
proc_key() {
    awk -F: -v k="$2" '$1 ~ "^" k "[ \t]*$" { sub(/^[ \t]+/, "", $2); print $2; exit }' "$1" 2> /dev/null || true
}

# Sum of the files matching a glob pattern (sizes in bytes), or empty.
sum_files() {
    local total=0 found=0 f v
    for f in "$@"; do
        [ -r "$f" ] || continue
        v=$(head -n 1 "$f" 2> /dev/null || true)
        case $v in '' | *[!0-9]*) continue ;; esac
        total=$(( total + v ))
        found=1
    done
    [ "$found" = 1 ] && printf '%s' "$total"
    return 0
}

gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }

# Is the GGUF a benchmark model (ds4cl.bench_model in its header)?  grep -c
# reads all of head's output, so no SIGPIPE trips pipefail.
is_bench_model() {
    local n
    n=$(head -c 16777216 "$1" | LC_ALL=C grep -acF ds4cl.bench_model || true)
    [ "${n:-0}" -gt 0 ]
}

# --------------------------------------------------------------- build ---
TARGETS=(build/ds4cl build/ds4cl-matvec-bench)
if [ "$BENCH" = 1 ]; then TARGETS+=(build/ds4cl-bench); fi
JOBS=$(nproc 2> /dev/null || echo 2)
printf '%s: building %s...\n' "$PROG" "${TARGETS[*]}" >&2
if ! make -j"$JOBS" "${TARGETS[@]}" > "$WORK/make.log" 2>&1; then
    tail -n 20 "$WORK/make.log" >&2
    die "'make ${TARGETS[*]}' failed (full log: $WORK/make.log)"
fi

# ------------------------------------------------------------- machine ---
KERNEL=$(uname -r)
CPU=$(proc_key /proc/cpuinfo "model name")
MEM_KB=$(proc_key /proc/meminfo MemTotal | awk '{ print $1 }')
DISTRO=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2> /dev/null | tr -d '"' || true)
CMDLINE_GTT=$(tr ' ' '\n' < /proc/cmdline 2> /dev/null |
    grep -E '^(amdgpu\.|ttm\.|amdttm\.|amd_iommu|iommu|transparent_hugepage|hugepages)' | tr '\n' ' ' || true)
TTM_PAGES=$(first_line /sys/module/ttm/parameters/pages_limit)
TTM_POOL=$(first_line /sys/module/ttm/parameters/page_pool_size)
AMDTTM_PAGES=$(first_line /sys/module/amdttm/parameters/pages_limit)
case $TTM_PAGES in *[!0-9]*) TTM_PAGES="-" ;; esac
case $AMDTTM_PAGES in *[!0-9]*) AMDTTM_PAGES="-" ;; esac
GTT_TOTAL=$(sum_files /sys/class/drm/card*/device/mem_info_gtt_total)
VRAM_TOTAL=$(sum_files /sys/class/drm/card*/device/mem_info_vram_total)
DPM="-"
for f in /sys/class/drm/card*/device/power_dpm_force_performance_level; do
    if [ -r "$f" ]; then DPM=$(first_line "$f"); break; fi
done
PROFILE=$(first_line /sys/firmware/acpi/platform_profile)
if command -v powerprofilesctl > /dev/null 2>&1; then
    PROFILE="$PROFILE (power-profiles-daemon: $(powerprofilesctl get 2> /dev/null || echo '?'))"
fi
THP=$(first_line /sys/kernel/mm/transparent_hugepage/enabled)
ROCM=$(first_line /opt/rocm/.info/version)
FIRMWARE="-"
if command -v dpkg-query > /dev/null 2>&1; then
    FIRMWARE=$(dpkg-query -W -f='${Version}' linux-firmware 2> /dev/null || echo "-")
elif command -v rpm > /dev/null 2>&1; then
    FIRMWARE=$(rpm -q --qf '%{VERSION}-%{RELEASE}' linux-firmware 2> /dev/null || echo "-")
fi
ICDS=""
for f in /etc/OpenCL/vendors/*.icd; do
    if [ -e "$f" ]; then ICDS="$ICDS$(basename "$f") "; fi
done

md "# ds4cl report, $(date -u '+%Y-%m-%d %H:%M UTC')" ""
md "Made by \`ports/strix-halo/report.sh\` at ds4cl $(git -C "$ROOT" describe --always --dirty 2> /dev/null || echo '?')." ""
md "## Machine" ""
md "| | |" "|---|---|"
md "| CPU | ${CPU:--} ($(nproc 2> /dev/null || echo '?') threads) |"
md "| RAM | $(gib $(( ${MEM_KB:-0} * 1024 ))) |"
md "| distribution | ${DISTRO:--} |"
md "| kernel | $KERNEL |"
md "| GTT-related kernel parameters | ${CMDLINE_GTT:-none} |"
if [ "$TTM_PAGES" != "-" ]; then
    md "| ttm.pages_limit / page_pool_size | $TTM_PAGES / $TTM_POOL pages ($(gib $(( TTM_PAGES * 4096 )))) |"
fi
if [ "$AMDTTM_PAGES" != "-" ]; then
    md "| amdttm.pages_limit (amdgpu-dkms) | $AMDTTM_PAGES pages ($(gib $(( AMDTTM_PAGES * 4096 )))) |"
fi
if [ -n "$GTT_TOTAL" ]; then md "| GTT size (amdgpu) | $(gib "$GTT_TOTAL") |"; fi
if [ -n "$VRAM_TOTAL" ]; then md "| VRAM carve-out (BIOS UMA) | $(gib "$VRAM_TOTAL") |"; fi
md "| GPU power level | $DPM |" "| platform profile | $PROFILE |"
md "| transparent huge pages | $THP |" "| ROCm | $ROCM |" "| linux-firmware | ${FIRMWARE:--} |"
md "| OpenCL ICDs | ${ICDS:--} |" "| DS4CL_TUNING | ${DS4CL_TUNING:-unset} |" ""
if [ -n "$GTT_TOTAL" ] && [ "$GTT_TOTAL" -lt $(( 100 * 1073741824 )) ]; then
    md "> **Warning**: the GPU can map only $(gib "$GTT_TOTAL") (GTT): the q2 model (80.8 GiB) plus its" \
       "> context does not fit.  See ports/strix-halo/README.md, \"Kernel parameters\"." ""
fi

# -------------------------------------------------------------- opencl ---
md "## OpenCL" ""
if run_step "clinfo" "$WORK/clinfo.txt" clinfo; then
    clinfo -l > "$WORK/clinfo-list.txt" 2>&1 || true
    md_file "$WORK/clinfo-list.txt"
    awk '/^NULL platform behavior/ { exit } { print }' "$WORK/clinfo.txt" |
        grep -E '^ +(Platform Name|Platform Version|Device Name|Device Board Name|Device Version|Driver Version|Device OpenCL C Version|Device Type|Max compute units|Max clock frequency|Max work group size|Preferred work group size multiple \(device\)|Wavefront width|Max number of sub-groups|Global memory size|Max memory allocation|Local memory size|Unified memory for Host and Device|Half-precision Floating-point support|Device Extensions)( \(AMD\))?  ' |
        sed -E 's/^ +//; s/  +/: /' > "$WORK/clinfo-summary.txt" || true
    md "" "<details><summary>clinfo summary (full output in the report folder)</summary>" ""
    md_file "$WORK/clinfo-summary.txt"
    md "" "</details>" ""
fi
md "\`ds4cl --list-devices\`:" ""
if run_step "ds4cl --list-devices" "$WORK/devices.txt" build/ds4cl --list-devices; then
    md_file "$WORK/devices.txt"
fi
md ""

# -------------------------------------------------------------- matvec ---
md "## Matvec bandwidth (ds4cl-matvec-bench)" ""
MV_CSV="$WORK/matvec.csv"
COPY_GBS=""
STREAM_GBS=""
if run_step "ds4cl-matvec-bench" "$MV_CSV" build/ds4cl-matvec-bench --csv --tokens 8; then
    # Drop the quoted device column so the rest splits on commas.
    grep -E '^"' "$MV_CSV" | sed -E 's/^"[^"]*",//' > "$WORK/matvec-rows.csv" || true
    {
        echo "type,MiB,us/matvec,GB/s,x copy,x stream,us/matmul(8 tok),matmul GB/s"
        awk -F, '{ printf "%s,%.1f,%.1f,%.1f,%.2f,%.2f,%.1f,%.1f\n", $1, $4 / 1048576, $5, $6, $9, $10, $12, $13 }' \
            "$WORK/matvec-rows.csv"
    } > "$WORK/matvec-table.csv"
    COPY_GBS=$(awk -F, 'NR == 1 { print $7 }' "$WORK/matvec-rows.csv")
    STREAM_GBS=$(awk -F, 'NR == 1 { print $8 }' "$WORK/matvec-rows.csv")
    md "Device: $(grep -m 1 -E '^"' "$MV_CSV" | sed -E 's/^"([^"]*)".*/\1/'); copy ${COPY_GBS:-?} GB/s" \
       "(read + write), stream read ${STREAM_GBS:-?} GB/s; ncols 4096.  GB = 10^9 bytes." ""
    csv_table "$WORK/matvec-table.csv"
    md ""
fi
if [ "$SWEEP" = 1 ] && [ -n "$STREAM_GBS" ]; then
    md "### Work-group shape sweep (q2 types, GB/s)" "" \
       "Each shape rebuilds the kernels with \`--options \"-DMV_LANES=L -DMV_ROWS=R -DMV_Q8X=Q\"\` (Q=1: int8" \
       "activations, cl/matvec_q8x.cl); the best shape can be" \
       "made the default with \`DS4CL_TUNING\` (README.md, \"Benchmarks\")." ""
    {
        echo "MV_LANES x MV_ROWS (int8),Q8_0,Q2_K,IQ2_XXS,F16"
        for shape in "8 4 0" "8 8 0" "16 4 0" "16 2 0" "32 2 0" "4 16 0" "8 32 0" "8 16 1" "8 32 1"; do
            read -r lanes rows q8x <<< "$shape"
            log="$WORK/sweep-${lanes}x$rows-q$q8x.csv"
            printf '%s: sweep MV_LANES=%s MV_ROWS=%s MV_Q8X=%s...\n' "$PROG" "$lanes" "$rows" "$q8x" >&2
            if build/ds4cl-matvec-bench --csv --types q8_0,q2_k,iq2_xxs,f16 \
                --options "-DMV_LANES=$lanes -DMV_ROWS=$rows -DMV_Q8X=$q8x" > "$log" 2>&1; then
                grep -E '^"' "$log" | sed -E 's/^"[^"]*",//' |
                    awk -F, -v s="$lanes x $rows q8x $q8x" '{ g[$1] = $6 }
                        END { printf "%s,%s,%s,%s,%s\n", s, g["Q8_0"], g["Q2_K"], g["IQ2_XXS"], g["F16"] }'
            else
                echo "$lanes x $rows q8x $q8x,failed (see $(basename "$log")),,,"
            fi
        done
    } > "$WORK/sweep.csv"
    csv_table "$WORK/sweep.csv"
    md ""
fi

# --------------------------------------------------------------- bench ---
if [ "$BENCH" = 1 ]; then
    md "## ds4cl-bench" ""
    if [ -z "$MODEL" ]; then
        MODEL=gguf/bench-q2.gguf
        if [ ! -f "$MODEL" ]; then
            if run_step "make build/ds4cl-benchmodel" "$WORK/make-benchmodel.log" \
                make build/ds4cl-benchmodel; then
                run_step "ds4cl-benchmodel" "$WORK/benchmodel.txt" \
                    build/ds4cl-benchmodel --mix q2 --layers 4 -o "$MODEL" || true
            fi
        fi
    fi
    case $MODEL in /*) ;; *) if [ ! -f "$MODEL" ] && [ -f "$ORIG_PWD/$MODEL" ]; then MODEL="$ORIG_PWD/$MODEL"; fi ;; esac
    if [ -f "$MODEL" ]; then
        md "Model \`$(basename "$MODEL")\`, context $CTX_START..$CTX_MAX step $STEP, $GEN greedy tokens per frontier." ""
        BENCH_ARGS=(-m "$MODEL" --ctx-start "$CTX_START" --ctx-max "$CTX_MAX" --step-incr "$STEP" -n "$GEN"
            --csv "$WORK/bench.csv" --profile)
        if is_bench_model "$MODEL"; then BENCH_ARGS+=(--proj-csv "$WORK/proj.csv"); fi
        if run_step "ds4cl-bench" "$WORK/bench.txt" build/ds4cl-bench "${BENCH_ARGS[@]}"; then
            md "Measured on this model (its layers, not 43):" ""
            csv_table "$WORK/bench.csv"
            if [ -s "$WORK/proj.csv" ]; then
                md "" "**Projected** to the 43-layer model from the measured per-layer times:" ""
                csv_table "$WORK/proj.csv"
            fi
            if [ "$HAVE_PY" = 1 ] && python3 bench/plot_bench.py "$WORK/bench.png" "$WORK/bench.csv" \
                --title "ds4cl-bench $(basename "$MODEL"), $(head -n 1 "$WORK/devices.txt" 2> /dev/null | cut -c1-60)" \
                > "$WORK/plot.txt" 2>&1; then
                md "" "![ds4cl-bench](./$(basename "$WORK")/bench.png)"
            elif [ "$HAVE_PY" = 0 ]; then
                md "" "_(no plot: python3 not found)_"
            fi
            md "" "<details><summary>kernel profile</summary>" ""
            md_file "$WORK/bench.txt"
            md "" "</details>"
        fi
    else
        FAILED=1
        md "**No benchmark model**: $MODEL is missing and could not be written."
    fi
    md ""
fi

# ----------------------------------------------------------- projection ---
md "## Projected numbers" ""
md "How these are derived: ports/strix-halo/README.md, \"Projected numbers\"." ""
if [ -n "$STREAM_GBS" ]; then
    awk -F, -v copy="$COPY_GBS" -v stream="$STREAM_GBS" '
        { g[$1] = $6 }
        END {
            bpt = 9.56                                   # GB of weights per decoded token, q2 (model.md 8)
            printf "- Bandwidth ceiling: %.1f GB/s stream read / %.2f GB per token = **%.1f t/s**", stream, bpt, stream / bpt
            printf " (at 60%%: %.1f, at 85%%: %.1f).\n", 0.60 * stream / bpt, 0.85 * stream / bpt
            q8 = g["Q8_0"]; f16 = g["F16"]; iq2 = g["IQ2_XXS"]; q2k = g["Q2_K"]
            if (q8 > 0 && f16 > 0 && iq2 > 0 && q2k > 0) {
                t = 6.599 / q8 + 1.132 / f16 + 1.116 / iq2 + 0.710 / q2k
                printf "- Matvec-bound decode from the measured per-type rates: 6.599 GB / %.1f (Q8_0) + 1.132 / %.1f (F16)", q8, f16
                printf " + 1.116 / %.1f (IQ2_XXS) + 0.710 / %.1f (Q2_K) = %.2f ms per token = **%.1f t/s**", iq2, q2k, 1000 * t, 1 / t
                printf " (weights only: no attention, no launch overhead; an upper bound for these kernels).\n"
            }
        }' "$WORK/matvec-rows.csv" >> "$OUT"
else
    md "_(no matvec measurement: nothing to project from)_"
fi
md "- Peers on Strix Halo: ds4 (ROCm/HIP) 16.1 t/s decode and 214 t/s prefill at 2K context (antirez/ds4 PR #863);" \
   "  llama.cpp HIP 14.8 t/s decode (llama.cpp PR #23863)." ""

printf '%s: report written to %s\n' "$PROG" "$OUT" >&2
if [ "$FAILED" = 1 ]; then
    printf '%s: some steps failed; the report says which\n' "$PROG" >&2
    exit 1
fi
exit 0
