#!/usr/bin/env bash
# Fetches the pinned Claude Code CLI (npm @anthropic-ai/claude-code-linux-x64)
# into a cache by version, checks the tarball against the integrity pinned
# here (not the one npm reports: that would trust the registry twice), and
# unpacks the binary as an SDK directory the helper's installSdk accepts:
#   <cache>/sdk/<version>/claude
# A second run with the binary in place does nothing. Prints the SDK
# directory (<cache>/sdk) on stdout; everything else goes to stderr.
#
# Usage: tests/agent/fetch-claude.sh [cache-root]
#   cache-root defaults to ${XDG_CACHE_HOME:-~/.cache}/cowork-microvm/claude-code
set -euo pipefail

PACKAGE=@anthropic-ai/claude-code-linux-x64
VERSION=2.1.328
INTEGRITY='sha512-KuzL+dBHgDCFTHJxwW+xuBJdVKfBsesGx2BBcTOG9sYDGoAD7b1hUV8rsTS4xjoJsB2SmeGraGjBiFuhrYuC9w=='

root=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/cowork-microvm/claude-code}
cache=$root/$VERSION
bin=$cache/sdk/$VERSION/claude

if [ -x "$bin" ]; then
    echo "$cache/sdk"
    exit 0
fi

command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 2; }
mkdir -p "$cache"
# Tests run in parallel: one fetches, the others wait and find it cached.
exec 9>"$cache/.lock"
flock 9
if [ -x "$bin" ]; then
    echo "$cache/sdk"
    exit 0
fi
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

# npm pack only downloads (no install scripts run). Few retries: an
# unreachable registry should fail in seconds, not minutes.
(cd "$work" && npm pack --loglevel=error --fetch-retries=1 \
    --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
    "$PACKAGE@$VERSION" >/dev/null) >&2
tgz=$(ls "$work"/*.tgz)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "integrity mismatch for $PACKAGE@$VERSION: got $got" >&2
    exit 1
fi

# The package holds the executable at package/claude.
tar -xzf "$tgz" -C "$work" package/claude
chmod 0755 "$work/package/claude"
mkdir -p "$cache/sdk/$VERSION"
# Rename into place last, so an interrupted run never leaves a partial binary
# that the next run would take for the cached one.
mv "$work/package/claude" "$bin"
echo "$cache/sdk"
