#!/usr/bin/env bash
# download.sh - fetches the published DeepSeek V4 Flash GGUFs for ds4cl.
#
#   gguf/download.sh q2|q4|q2-imatrix|q4-imatrix|mtp [--token T] [--dir D] [--verify]
#
# Design and invariants:
# - The model table below (name, bytes, sha256, file name) is the only source
#   of names.  The model argument must equal one of the five fixed names, so
#   no string from the command line ever becomes part of a path or a URL.
#   DS4CL_DOWNLOAD_MANIFEST replaces the table with a file of the same format
#   (the tests serve small fake files) and is validated just as strictly.
# - The file is fetched with curl into <file>.part, resuming (-C -) whatever
#   is already there, and resumed again when the connection drops or stalls.
#   Only after its size and sha256 match is it renamed to <file>, so a file
#   that carries the final name has been verified and a second run skips it.
# - The Hugging Face token (--token, else $HF_TOKEN, else the huggingface_hub
#   token file) must look like a bearer token ([A-Za-z0-9._~+/-]+=*).  It
#   reaches curl as a config read from stdin: never on a command line (ps),
#   never through a shell, never over plain http to another host.
# - gguf/ds4flash.gguf (next to this script) becomes a symlink to the main
#   model; mtp is only downloaded.  A ds4flash.gguf that is not a symlink is
#   never replaced.
# - set -euo pipefail, every expansion quoted, nothing eval'ed; strings from
#   the user are printed with %q.  Exit status: 0 done, 1 failed, 2 usage.
#
# Environment: DS4CL_GGUF_DIR (download directory; default this script's
# directory), DS4CL_HF_BASE (URL the file names are appended to), and
# DS4CL_DOWNLOAD_MANIFEST, DS4CL_RETRIES (default 5), DS4CL_RETRY_DELAY
# (seconds, default 3); HF_TOKEN, HF_TOKEN_PATH, HF_HOME, XDG_CACHE_HOME.
#
# The sizes and sha256 values are the Git LFS object ids that Hugging Face
# publishes for antirez/deepseek-v4-gguf (main).
set -euo pipefail

readonly DEFAULT_BASE="https://huggingface.co/antirez/deepseek-v4-gguf/resolve/main"
readonly LINK_NAME="ds4flash.gguf"

builtin_manifest() {
    cat <<'EOF'
# name       bytes         sha256                                                            file
q2           86720111200   31598c67c8b8744d3bcebcd19aa62253c6dc43cef3b8adf9f593656c9e86fd8c  DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf
q4           164633502304  39e5de72ac544fdd5ffaf83ec28e36aaf3341b145235488e67d59400bbb3af55  DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2.gguf
q2-imatrix   86720111488   efc7ed607ff27076e3e501fc3fefefa33c0ed8cf1eff483a2b7fdc0c2e616668  DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf
q4-imatrix   164633502592  a2a3b31eca06344b93d32b2095511c4d36f92739a68a599b22047b4b2335d859  DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2-imatrix.gguf
mtp          3807602400    afd481ee689dce9037f70f39085fcdae5a5b096d521cdad43b19fa52bf8f4083  DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf
EOF
}

usage() {
    cat <<'EOF'
usage: gguf/download.sh MODEL [--token TOKEN] [--dir DIR] [--verify]

Downloads a DeepSeek V4 Flash GGUF from huggingface.co/antirez/deepseek-v4-gguf,
resuming a partial download, checks its size and sha256, and points
gguf/ds4flash.gguf at it (the model build/ds4cl loads by default).

MODEL:
  q2-imatrix   2-bit routed experts, imatrix-tuned, 81 GiB (96-128 GB machines)
  q4-imatrix   4-bit routed experts, imatrix-tuned, 153 GiB (>= 256 GB machines)
  q2           2-bit routed experts, legacy quant, 81 GiB
  q4           4-bit routed experts, legacy quant, 153 GiB
  mtp          optional MTP speculative-decoding weights, 3.5 GiB (not linked)

Options:
  --token TOKEN  Hugging Face token; else $HF_TOKEN, else the huggingface_hub
                 token file ($HF_TOKEN_PATH or $HF_HOME/token).  Public files
                 need no token.
  --dir DIR      download directory (else $DS4CL_GGUF_DIR, else gguf/)
  --verify       re-check the sha256 of an already downloaded file
  -h, --help     this text

Run it again to resume an interrupted download.
EOF
}

die() {
    printf 'download.sh: %s\n' "$1" >&2
    exit 1
}

usage_error() {
    printf 'download.sh: %s\n' "$1" >&2
    printf 'run gguf/download.sh --help for usage\n' >&2
    exit 2
}

# Prints the size of a file in bytes, following links (GNU stat, else BSD).
file_size() {
    stat -L -c %s -- "$1" 2>/dev/null || stat -L -f %z -- "$1"
}

sha256_of() {
    local out
    if command -v sha256sum >/dev/null 2>&1; then
        out=$(sha256sum -b -- "$1")
    else
        out=$(shasum -a 256 -b -- "$1")
    fi
    printf '%s\n' "${out%% *}"
}

# The patterns every outside string is held to.
readonly COUNT_RE='^(0|[1-9][0-9]{0,17})$'
readonly SHA_RE='^([0-9a-f]{64}|-)$'
readonly FILE_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'
readonly TOKEN_RE='^[A-Za-z0-9._~+/-]+=*$'
readonly URL_RE='^https?://[A-Za-z0-9._~:/?#@!$&()*+,;=%-]+$'

# A decimal count without sign or leading zeros, small enough for bash.
is_count() {
    [[ $1 =~ $COUNT_RE ]]
}

human_size() {
    awk -v b="$1" 'BEGIN {
        if (b >= 1073741824) printf "%.1f GiB", b / 1073741824
        else if (b >= 1048576) printf "%.1f MiB", b / 1048576
        else printf "%d bytes", b
    }'
}

# --- arguments ---------------------------------------------------------------

model=""
token=""
token_given=0
dir=""
verify=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help)
            usage
            exit 0
            ;;
        --token)
            [ $# -ge 2 ] || usage_error "--token needs a value"
            token=$2
            token_given=1
            shift 2
            ;;
        --token=*)
            token=${1#--token=}
            token_given=1
            shift
            ;;
        --dir)
            [ $# -ge 2 ] || usage_error "--dir needs a value"
            dir=$2
            [ -n "$dir" ] || usage_error "--dir needs a value"
            shift 2
            ;;
        --dir=*)
            dir=${1#--dir=}
            [ -n "$dir" ] || usage_error "--dir needs a value"
            shift
            ;;
        --verify)
            verify=1
            shift
            ;;
        -*)
            usage_error "$(printf 'unknown option %q' "$1")"
            ;;
        *)
            [ -z "$model" ] || usage_error "$(printf 'unexpected argument %q' "$1")"
            model=$1
            shift
            ;;
    esac
done

[ -n "$model" ] || usage_error "no model given (q2, q4, q2-imatrix, q4-imatrix or mtp)"
case "$model" in
    q2|q4|q2-imatrix|q4-imatrix|mtp) ;;
    *) usage_error "$(printf 'unknown model %q (q2, q4, q2-imatrix, q4-imatrix or mtp)' "$model")" ;;
esac

# --- the model table ---------------------------------------------------------

# Reads the manifest and sets want_size, want_sha ("-" when unknown) and
# file for $model.  Every line is validated, used or not.
read_manifest() {
    local name size sha fname extra lineno=0 found=0
    while IFS=$' \t' read -r name size sha fname extra; do
        lineno=$((lineno + 1))
        case "$name" in ''|'#'*) continue ;; esac
        case "$name" in
            q2|q4|q2-imatrix|q4-imatrix|mtp) ;;
            *) die "manifest line $lineno: unknown model name" ;;
        esac
        if ! is_count "$size" || [ "$size" -eq 0 ]; then die "manifest line $lineno: bad size"; fi
        [[ $sha =~ $SHA_RE ]] || die "manifest line $lineno: bad sha256"
        [[ $fname =~ $FILE_RE ]] || die "manifest line $lineno: bad file name"
        [ "$fname" != "$LINK_NAME" ] || die "manifest line $lineno: bad file name"
        [ -z "$extra" ] || die "manifest line $lineno: trailing fields"
        if [ "$name" = "$model" ]; then
            want_size=$size
            want_sha=$sha
            file=$fname
            found=1
        fi
    done
    [ "$found" -eq 1 ] || die "$(printf 'model %q is not in the manifest' "$model")"
}

want_size=""
want_sha=""
file=""
if [ -n "${DS4CL_DOWNLOAD_MANIFEST:-}" ]; then
    [ -f "$DS4CL_DOWNLOAD_MANIFEST" ] ||
        die "$(printf 'cannot read DS4CL_DOWNLOAD_MANIFEST %q' "$DS4CL_DOWNLOAD_MANIFEST")"
    read_manifest <"$DS4CL_DOWNLOAD_MANIFEST"
else
    read_manifest < <(builtin_manifest)
fi

# --- settings ----------------------------------------------------------------

base=${DS4CL_HF_BASE:-$DEFAULT_BASE}
base=${base%/}
[[ $base =~ $URL_RE ]] ||
    die "$(printf 'DS4CL_HF_BASE is not an http(s) URL: %q' "$base")"
url="$base/$file"

retries=${DS4CL_RETRIES:-5}
retry_delay=${DS4CL_RETRY_DELAY:-3}
if ! is_count "$retries" || [ "$retries" -lt 1 ] || [ "$retries" -gt 1000 ]; then
    die "DS4CL_RETRIES must be 1..1000"
fi
if ! is_count "$retry_delay" || [ "$retry_delay" -gt 3600 ]; then
    die "DS4CL_RETRY_DELAY must be 0..3600 seconds"
fi

# The token: --token, else $HF_TOKEN, else the huggingface_hub token file.
token_source="--token"
if [ "$token_given" -eq 0 ]; then
    if [ -n "${HF_TOKEN:-}" ]; then
        token=$HF_TOKEN
        token_source="HF_TOKEN"
    else
        hf_home=${HF_HOME:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/huggingface}
        token_file=${HF_TOKEN_PATH:-$hf_home/token}
        if [ -f "$token_file" ] && [ -r "$token_file" ]; then
            token=$(head -c 4096 -- "$token_file")
            token=${token%$'\n'}
            token=${token%$'\r'}
            token_source="the token file $(printf '%q' "$token_file")"
        fi
    fi
fi
if [ -n "$token" ]; then
    [[ ${#token} -le 1024 && $token =~ $TOKEN_RE ]] ||
        usage_error "the token from $token_source is not a valid Hugging Face token"
fi
# A token goes over TLS, or in the clear only to this machine.
if [ -n "$token" ]; then
    case "$base" in
        https://*|http://127.0.0.1:*|http://127.0.0.1/*|http://localhost:*|http://localhost/*) ;;
        *) die "refusing to send the token over plain http; use an https DS4CL_HF_BASE" ;;
    esac
fi

command -v curl >/dev/null 2>&1 || die "curl is not installed (Debian: apt-get install curl)"

script_dir=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
[ -n "$dir" ] || dir=${DS4CL_GGUF_DIR:-$script_dir}
[[ ! $dir =~ [[:cntrl:]] ]] || die "the download directory name contains control characters"
mkdir -p -- "$dir" || die "$(printf 'cannot create the directory %q' "$dir")"
dir=$(cd -P -- "$dir" && pwd) || die "$(printf 'cannot enter the directory %q' "$dir")"

out="$dir/$file"
part="$out.part"
lock="$out.lock"

# --- download ----------------------------------------------------------------

lock_taken=0
cleanup() {
    if [ "$lock_taken" -eq 1 ]; then
        rm -f -- "$lock"
    fi
}
trap cleanup EXIT

take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>>"$lock" || die "$(printf 'cannot create %q' "$lock")"
    flock -n 9 || die "$(printf 'another download of %q is running' "$file")"
    lock_taken=1
}

check_space() {
    local need=$1 avail
    avail=$(df -Pk -- "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }') || return 0
    is_count "$avail" || return 0
    if [ $((avail * 1024)) -lt "$need" ]; then
        die "not enough space in $(printf '%q' "$dir"): $(human_size "$need") more needed, $(human_size $((avail * 1024))) free"
    fi
}

# One curl run that appends to $part from its current length and prints the
# final HTTP status.  The token is handed over on stdin as a curl config line.
curl_once() {
    local args=(-q -f -L -C - --connect-timeout 30 --speed-limit 4096 --speed-time 60
                --proto '=http,https' --proto-redir '=http,https' -w '%{http_code}'
                -o "$part" --url "$url")
    if [ -t 2 ]; then
        args+=(--progress-bar)
    else
        args+=(-sS)
    fi
    if [ -n "$token" ]; then
        printf 'header = "Authorization: Bearer %s"\n' "$token" | curl -K - "${args[@]}"
    else
        curl "${args[@]}" </dev/null
    fi
}

# Ends the script for an HTTP error that retrying cannot fix; returns for
# the transient ones (timeouts, rate limits, server errors).
http_failure() {
    case "$1" in
        408|429|5[0-9][0-9]) return 0 ;;
        401|403)
            if [ -n "$token" ]; then
                die "HTTP $1: the server refused the token for $file"
            fi
            die "HTTP $1: $file needs a Hugging Face token (--token or HF_TOKEN)"
            ;;
        404) die "HTTP 404: $url was not found" ;;
        416) die "$(printf 'HTTP 416: the server has fewer bytes than %q; remove it and run again' "$part")" ;;
        *) die "HTTP $1 for $url" ;;
    esac
}

fetch() {
    local attempt=1 rc have code
    while :; do
        have=0
        [ ! -e "$part" ] || have=$(file_size "$part")
        if [ "$have" -gt "$want_size" ]; then
            die "$(printf '%q is larger than the expected %s bytes; remove it and run again' "$part" "$want_size")"
        fi
        [ "$have" -lt "$want_size" ] || return 0
        check_space $((want_size - have))
        if [ "$have" -gt 0 ]; then
            printf 'resuming %s at %s of %s\n' "$file" "$(human_size "$have")" "$(human_size "$want_size")"
        else
            printf 'downloading %s (%s)\n' "$file" "$(human_size "$want_size")"
        fi
        rc=0
        code=$(curl_once) || rc=$?
        case "$rc" in
            0) return 0 ;;
            22) http_failure "$code" ;;
            33) die "$(printf 'the server cannot resume; remove %q and run again' "$part")" ;;
            23) die "$(printf 'cannot write %q (disk full or not writable?)' "$part")" ;;
        esac
        if [ "$attempt" -ge "$retries" ]; then
            die "gave up after $attempt attempts (curl exit $rc, HTTP $code); run again to resume"
        fi
        printf 'download interrupted (curl exit %s, HTTP %s); resuming in %s s (%s/%s)\n' \
            "$rc" "$code" "$retry_delay" "$attempt" "$retries" >&2
        attempt=$((attempt + 1))
        sleep "$retry_delay"
    done
}

check_sha() {
    local path=$1 got
    [ "$want_sha" != "-" ] || {
        printf 'no published sha256 for %s: checked its size only\n' "$file"
        return 0
    }
    printf 'checking the sha256 of %s (%s)\n' "$file" "$(human_size "$want_size")"
    got=$(sha256_of "$path")
    [ "$got" = "$want_sha" ]
}

if [ -e "$out.aria2" ]; then
    die "$(printf 'found an aria2 download in progress (%q); finish or remove it first' "$out.aria2")"
fi

take_lock
if [ -e "$out" ] || [ -L "$out" ]; then
    [ -f "$out" ] || die "$(printf '%q exists and is not a regular file' "$out")"
    have=$(file_size "$out")
    [ "$have" = "$want_size" ] ||
        die "$(printf '%q has %s bytes, expected %s; remove it and run again' "$out" "$have" "$want_size")"
    if [ "$verify" -eq 1 ]; then
        check_sha "$out" || die "$(printf '%q does not match its sha256; remove it and run again' "$out")"
    fi
    printf 'already downloaded: %s\n' "$out"
else
    fetch
    [ -f "$part" ] || die "the server sent no data for $file"
    have=$(file_size "$part")
    if [ "$have" != "$want_size" ]; then
        rm -f -- "$part"
        die "the server sent $have bytes of $file, expected $want_size; removed the download"
    fi
    if ! check_sha "$part"; then
        rm -f -- "$part"
        die "$file does not match its published sha256; removed the download"
    fi
    mv -f -- "$part" "$out"
    printf 'saved %s\n' "$out"
fi

# --- the ds4flash.gguf link --------------------------------------------------

if [ "$model" = "mtp" ]; then
    printf 'mtp weights are optional and not linked; %s is unchanged\n' "$script_dir/$LINK_NAME"
    exit 0
fi

link="$script_dir/$LINK_NAME"
if [ -e "$link" ] && [ ! -L "$link" ]; then
    die "$(printf '%q exists and is not a symlink; left it alone (the download is at %q)' "$link" "$out")"
fi
if [ "$dir" = "$script_dir" ]; then
    target=$file
else
    target=$out
fi
ln -sfn -- "$target" "$link" || die "$(printf 'cannot create the link %q' "$link")"
printf '%s -> %s\n' "$link" "$target"
printf 'done: build/ds4cl now loads it by default\n'
