#!/usr/bin/env bash
# Builds and runs tools/pubsub-emulator (Google's in-memory fake Pub/Sub, pstest), for the tests and the docs.
#   scripts/pubsub-emulator.sh build          prints one progress line on stderr and the binary's path on stdout.
#   scripts/pubsub-emulator.sh start [PORT]   builds if needed, then serves on 127.0.0.1:PORT (8085) in the
#                                             foreground (the last step execs the emulator: signal it to stop).
#                                             Clients: PUBSUB_EMULATOR_HOST=127.0.0.1:PORT.
# Idempotent: a stamp file holds a hash of the sources and the Go version; the build (about a minute
# with empty Go caches, ~600 MB of modules; a second or so with warm ones) runs only when that hash changes.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." # the checkout, also when called through a symlink
src=tools/pubsub-emulator
bin_dir="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/bin"
bin="$bin_dir/pubsub-emulator"

case "${1:-}" in
build | start) ;;
*)
  echo "usage: $0 build | start [PORT]" >&2
  exit 2
  ;;
esac

if ! command -v go >/dev/null; then
  # Debian's golang-go is too old for pubsub v2 (it needs the Go that go.mod names); the machine image ships one.
  echo "pubsub-emulator: go not found: needs Go >= $(sed -n 's/^go //p' "$src/go.mod") on PATH" >&2
  exit 127
fi
stamp="$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" <(go version) | sha256sum | cut -c1-16)"
if [[ -x "$bin" && "$(cat "$bin.stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "pubsub-emulator: up to date ($bin)" >&2
else
  echo "pubsub-emulator: building $bin (first build downloads modules: a minute or two)" >&2
  mkdir -p "$bin_dir"
  tmp="$(mktemp "$bin.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  # GOTOOLCHAIN=local: fail plainly rather than download a newer Go; -mod=readonly: go.mod/go.sum stay as pinned.
  (cd "$src" && GOTOOLCHAIN=local go build -mod=readonly -buildvcs=false -trimpath -ldflags="-s -w" -o "$tmp" .)
  mv -f "$tmp" "$bin" # atomic: a parallel test session never sees half a binary
  echo "$stamp" >"$bin.stamp"
fi
if [[ "$1" == start ]]; then
  exec "$bin" --host 127.0.0.1 --port "${2:-8085}"
fi
echo "$bin"
