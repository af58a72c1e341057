#!/usr/bin/env bash
# Builds the AWS Lambda Runtime Interface Emulator (aws-lambda-rie) from the Go module proxy, for the tests, the
# benchmark and the docs: it runs a Lambda function locally, as Lambda's runtime API drives it.
#   scripts/lambda-rie.sh build   prints one progress line on stderr and the binary's path on stdout.
# The module has no semver tags, so a pseudo-version is pinned. The binary is static (CGO_ENABLED=0): it also
# runs inside a container image mounted as a volume. Idempotent: rebuilt only when the version or Go changes.
set -euo pipefail
version=v0.0.0-20261030222936-bef5c4ba774d
module=github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie
bin_dir="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/bin"
bin="$bin_dir/aws-lambda-rie"

if [[ "${1:-}" != build ]]; then
  echo "usage: $0 build" >&2
  exit 2
fi
if ! command -v go >/dev/null; then
  echo "lambda-rie: go not found: needs Go >= 1.25 on PATH" >&2
  exit 127
fi
stamp="$(echo "$version $(go version)" | sha256sum | cut -c1-16)"
if [[ -x "$bin" && "$(cat "$bin.stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "lambda-rie: up to date ($bin)" >&2
else
  echo "lambda-rie: building $bin from $module@$version" >&2
  mkdir -p "$bin_dir"
  tmp="$(mktemp -d "$bin_dir/.rie.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags="-s -w" "$module@$version"
  mv -f "$tmp/aws-lambda-rie" "$bin" # atomic: a parallel test session never sees half a binary
  echo "$stamp" >"$bin.stamp"
fi
echo "$bin"
