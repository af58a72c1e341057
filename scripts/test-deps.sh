#!/usr/bin/env bash
# The real services the integration tests run, installed once per machine: PostgreSQL from Debian's packages
# and Redis, a Kafka broker from Maven Central (the tests start private servers of their own), the Lambda runtime
# interface emulator (Go module proxy) and the container
# tools (container-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(id -u)" != 0 ]]; then
  echo "test-deps: not root: tests that need system packages will skip (or fail under CI=true)" >&2
  exit 0
fi
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mvn >/dev/null || missing+=(maven)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v chromium >/dev/null || missing+=(chromium)             # the /docs page test (selenium, headless)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  echo "test-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/kafka.sh fetch || echo "test-deps: kafka fetch failed: kafka tests will skip (or fail under CI=true)" >&2
scripts/pubsub-emulator.sh build >/dev/null || echo "test-deps: pubsub-emulator build failed: pubsub tests will skip (or fail under CI=true)" >&2
scripts/lambda-rie.sh build >/dev/null || echo "test-deps: aws-lambda-rie build failed: lambda tests will skip (or fail under CI=true)" >&2
scripts/container-deps.sh
