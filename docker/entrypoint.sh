#!/usr/bin/env bash
# Entrypoint of the supremix-med GPU image.
#
# Dispatch on the first argument:
#   --flag ...                     python -m monai.bundle run --flag ...   (the default: run a bundle)
#   run|verify_metadata|... ...    python -m monai.bundle <subcommand> ... (any monai.bundle subcommand)
#   preprocess <module> ...        python -m preprocessing.<module> ...
#   <executable> ...               run as is (python, torchrun, bash, nvidia-smi, ...)
#   --help | -h | help             print the usage below
#
# Before dispatching it makes sure HOME and the library caches are writable: with
# `docker run --user $(id -u):$(id -g)` or Apptainer, the process may not own /home/app, so HOME falls
# back to a fresh directory under ${TMPDIR:-/tmp}. Cache variables the caller already set are kept.
#
# Environment:
#   SUPREMIX_PYTHON   interpreter for the bundle and preprocessing modes (default: python)
set -euo pipefail

readonly PROG="supremix-entrypoint"
# Subcommands exposed by `python -m monai.bundle` (monai/bundle/__main__.py).
readonly BUNDLE_SUBCOMMANDS=" run run_workflow verify_metadata verify_net_in_out ckpt_export onnx_export \
trt_export init_bundle download download_large_files "

usage() {
    cat <<'EOF'
supremix-med container: SupReMix deep regression on medical images, shipped as MONAI bundles.

Usage:
  IMAGE --config_file bundles/<name>/<workflow>.json [--key value ...]
        runs `python -m monai.bundle run` with these arguments (the default mode)
  IMAGE <monai.bundle subcommand> [args]   e.g. verify_metadata, ckpt_export, run_workflow
  IMAGE preprocess <module> [args]          runs `python -m preprocessing.<module>`, e.g. preprocess t1
  IMAGE <command> [args]                    runs any executable as is: python, torchrun, bash, ...
  IMAGE --help                              prints this text

Conventions: the code and bundles live in /opt/supremix-med (the working directory), inputs are
mounted read-only at /data, and every file a run writes goes to /output.

Examples:
  IMAGE --config_file bundles/ukb_brainage/train.json --dataset_dir /data --output_dir /output
  IMAGE --config_file bundles/ukb_brainage/inference.json --dataset_dir /data --ckpt_dir /models \
        --output_dir /output
  IMAGE torchrun --nproc_per_node=4 -m monai.bundle run \
        --config_file "['bundles/ukb_brainage/train.json','bundles/ukb_brainage/multi_gpu_train.json']" \
        --dataset_dir /data --output_dir /output
EOF
}

fail() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf "Run with --help for usage.\n" >&2
    exit 2
}

# True when directory $1 exists or can be created, and this process may write into it.
writable_dir() {
    mkdir -p -- "$1" 2>/dev/null && [[ -w $1 && -x $1 ]]
}

# Point HOME at a writable directory and derive unset cache variables from it.
prepare_home() {
    if [[ -z ${HOME:-} ]] || ! writable_dir "$HOME"; then
        local fallback
        if fallback=$(mktemp -d "${TMPDIR:-/tmp}/supremix-home.XXXXXX" 2>/dev/null); then
            printf '%s: HOME=%s is not writable; using %s for HOME and caches\n' \
                "$PROG" "${HOME:-<unset>}" "$fallback" >&2
            export HOME=$fallback
        else
            printf '%s: warning: neither HOME=%s nor %s is writable; caches may fail\n' \
                "$PROG" "${HOME:-<unset>}" "${TMPDIR:-/tmp}" >&2
            return 0
        fi
    fi
    export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}"
    export MPLCONFIGDIR="${MPLCONFIGDIR:-$XDG_CACHE_HOME/matplotlib}"
    export TORCH_HOME="${TORCH_HOME:-$XDG_CACHE_HOME/torch}"
    export NILEARN_DATA="${NILEARN_DATA:-$XDG_CACHE_HOME/nilearn_data}"
    export MONAI_DATA_DIRECTORY="${MONAI_DATA_DIRECTORY:-$XDG_CACHE_HOME/monai}"
    mkdir -p -- "$XDG_CACHE_HOME" "$MPLCONFIGDIR" "$TORCH_HOME" "$NILEARN_DATA" \
        "$MONAI_DATA_DIRECTORY" 2>/dev/null || true
    # getpass.getuser() (torch.compile, tensorboard) fails for a UID without a passwd entry.
    if [[ -z ${USER:-} ]]; then
        USER=$(id -un 2>/dev/null) || USER="uid$(id -u)"
        export USER
    fi
}

main() {
    if [[ $# -eq 0 ]]; then
        usage >&2
        exit 2
    fi
    case $1 in
        --help | -h | help)
            usage
            exit 0
            ;;
    esac

    prepare_home
    local python=${SUPREMIX_PYTHON:-python}

    if [[ $1 == -* ]]; then
        exec "$python" -m monai.bundle run "$@"
    fi
    if [[ $BUNDLE_SUBCOMMANDS == *" $1 "* ]]; then
        exec "$python" -m monai.bundle "$@"
    fi
    if [[ $1 == preprocess ]]; then
        [[ $# -ge 2 && $2 =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
            fail "expected 'preprocess <module> [args]' with a module of the preprocessing package (e.g. t1), got '${2:-}'"
        local module=$2
        shift 2
        exec "$python" -m "preprocessing.$module" "$@"
    fi
    if type -P -- "$1" >/dev/null; then
        exec "$@"
    fi
    fail "'$1' is neither an option of 'monai.bundle run' (those start with --), a monai.bundle subcommand, 'preprocess', nor an executable on PATH"
}

main "$@"
