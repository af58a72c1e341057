#!/usr/bin/env bash
# An Apache Kafka broker for the integration tests and benchmarks, built only from Maven Central's jars (no
# Apache download site is reachable here), so it needs just `mvn` to fetch and a Java 17+ `java` to run.
#   scripts/kafka.sh fetch                       jars into $CONVEYOR_CACHE/kafka-$KAFKA_VERSION/libs (once)
#   scripts/kafka.sh start DIR PORT [CTRL_PORT]  one KRaft node (broker+controller) on 127.0.0.1:PORT, data in
#                                                DIR, in the foreground (the last step execs java: signal it)
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
# The slf4j->log4j2 binding; being nearer in Maven's tree it also picks log4j-api/core: keep it at the log4j2
# version that kafka-server $KAFKA_VERSION names (2.25.5 for 4.4.0).
LOG4J_VERSION=2.25.5
HOME_DIR="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/kafka-$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"

fetch() {
  [[ -f "$LIBS/.complete" ]] && return 0
  echo "kafka: fetching kafka_2.13 $KAFKA_VERSION and its dependencies from Maven Central into $LIBS" >&2
  local tmp status=0
  tmp="$(mktemp -d)"
  # A throwaway pom: the broker (kafka_2.13 holds kafka.Kafka and kafka.tools.StorageTool) and an slf4j binding,
  # which its pom leaves out: the broker logs through slf4j 1.7, and without one it would log nothing at all.
  cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.conveyor</groupId><artifactId>kafka-libs</artifactId><version>0</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS"
  mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" \
    >"$tmp/mvn.log" 2>&1 || status=$?
  if ((status != 0)); then
    # Maven's log on stderr, then one plain last line with its first error (what the test fixture reports).
    sed 's/\x1b\[[0-9;]*m//g' "$tmp/mvn.log" | tail -n 30 >&2
    echo "kafka: mvn failed: $(sed 's/\x1b\[[0-9;]*m//g' "$tmp/mvn.log" | grep -m1 '\[ERROR\]' | cut -c1-300)" >&2
    rm -rf "$tmp"
    exit "$status"
  fi
  rm -rf "$tmp"
  touch "$LIBS/.complete" # written last: an interrupted fetch is redone, not half-used
}

start() {
  local dir="${1:?usage: kafka.sh start DIR PORT [CONTROLLER_PORT]}" port="${2:?PORT}"
  local ctrl="${3:-$((port + 1))}"
  fetch
  command -v java >/dev/null || { echo "kafka: java not found (Java 17+ needed)" >&2; exit 1; }
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  # Rewritten each start so that a reused DIR may change ports; the node id and the data stay. A static voter
  # list (not controller.quorum.bootstrap.servers) so that `format` needs no --standalone and ports may change.
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  # Quiet: INFO and up to DIR/server.log (read it when the broker fails), nothing on the terminal.
  cat >"$dir/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.state.name=state.change.logger
logger.state.level=WARN
EOF
  local jvm=(java -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS/*")
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    # A cluster id is 16 random bytes in base64url (22 chars); one starting with '-' would read as an option.
    local id
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' 'ab' | cut -c1-22)"
    "${jvm[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >>"$dir/server.log" 2>&1 ||
      { tail -n 20 "$dir/server.log" >&2; exit 1; }
  fi
  exec "${jvm[@]}" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
  fetch) fetch ;;
  start) shift; start "$@" ;;
  *) echo "usage: $0 fetch | start DIR PORT [CONTROLLER_PORT]" >&2; exit 2 ;;
esac
