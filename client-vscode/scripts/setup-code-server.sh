#!/usr/bin/env bash
# Install code-server 4.100.3 (the last release that runs on Node 20) into a cache directory outside
# the clone, so repeated e2e runs reuse it. Idempotent: does nothing when it is already installed.
#
# Needs the Debian packages: pkg-config libkrb5-dev libsecret-1-dev libx11-dev libxkbfile-dev ripgrep chromium
# Prints the code-server executable path on its last line.
set -euo pipefail

VERSION=4.100.3
CACHE="${AIDP_CACHE:-$HOME/.cache/aidp}"
DIR="$CACHE/code-server-$VERSION"
BIN="$DIR/node_modules/code-server/out/node/entry.js"
STAMP="$DIR/.installed"
# A native module that only exists when code-server's postinstall really ran (npm may skip scripts).
NATIVE="$DIR/node_modules/code-server/lib/vscode/node_modules/@vscode/spdlog/build/Release/spdlog.node"

# The pinned package.json and lock file; the stamp records the lock's hash so a change reinstalls.
PINNED="$(cd "$(dirname "$0")/../test/e2e/code-server" && pwd)"
LOCK_HASH="$(sha256sum "$PINNED/package-lock.json" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$LOCK_HASH" && -f "$BIN" && -f "$NATIVE" ]]; then
  echo "code-server $VERSION already installed in $DIR" >&2
  echo "$DIR/node_modules/.bin/code-server"
  exit 0
fi

for tool in node npm tar; do
  command -v "$tool" >/dev/null || { echo "setup-code-server: '$tool' not found" >&2; exit 1; }
done
RG="$(command -v rg || true)"
if [[ -z "$RG" ]]; then
  echo "setup-code-server: ripgrep (rg) not found; install the Debian package 'ripgrep'" >&2
  exit 1
fi

# @vscode/ripgrep's postinstall downloads ripgrep from GitHub, which is unreachable here. It looks in a
# cache first: seed that cache with a tarball holding the system's rg.
TMP="$(node -p 'require("os").tmpdir()')"
RG_CACHE="$TMP/vscode-ripgrep-cache-1.15.11"
RG_TGZ="$RG_CACHE/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"
if [[ ! -f "$RG_TGZ" ]]; then
  mkdir -p "$RG_CACHE"
  stage="$(mktemp -d)"
  cp "$RG" "$stage/rg"
  tar -czf "$RG_TGZ.partial" -C "$stage" rg
  mv "$RG_TGZ.partial" "$RG_TGZ"
  rm -rf "$stage"
fi

mkdir -p "$DIR"
echo "installing code-server $VERSION into $DIR (compiles native modules; takes minutes)" >&2
# code-server's postinstall runs nested `npm install`s that compile native modules. npm >= 11.x blocks
# dependency install scripts unless allowed; the environment variable reaches the nested installs too.
export npm_config_unsafe_perm=true npm_config_yes=true npm_config_dangerously_allow_all_scripts=true
cp "$PINNED/package.json" "$PINNED/package-lock.json" "$DIR/"
# On a cold npm cache, npm's tarball extraction sometimes races with itself ("Cannot cd into
# node_modules/<pkg>", npm/cli#4140; seen here on a fresh machine): try again from scratch.
for attempt in 1 2 3; do
  rm -rf "$DIR/node_modules"
  npm ci --prefix "$DIR" --no-audit --no-fund --loglevel=error >&2 && break
  [[ $attempt -lt 3 ]] || { echo "setup-code-server: npm ci failed $attempt times" >&2; exit 1; }
  echo "setup-code-server: npm ci failed (attempt $attempt of 3); trying again" >&2
done
for f in "$BIN" "$NATIVE"; do
  [[ -f "$f" ]] || { echo "setup-code-server: install finished but $f is missing (did code-server's postinstall run?)" >&2; exit 1; }
done
echo "$LOCK_HASH" > "$STAMP"
echo "$DIR/node_modules/.bin/code-server"
