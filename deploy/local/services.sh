#!/usr/bin/env bash
# Real Kafka (KRaft), clickhouse-server and InfluxDB on loopback, without Docker.
#
#   deploy/local/services.sh install      fetch/build what is missing (apt, Maven, Go)
#   deploy/local/services.sh up           install if needed, start what is not running, wait
#   deploy/local/services.sh down         stop them (data is kept)
#   deploy/local/services.sh status       one line per service; exit 1 if any is down
#   deploy/local/services.sh reset        down, then delete data and logs
#   deploy/local/services.sh stop|start kafka|clickhouse|influxdb   one service (fault tests)
#
# Data, logs and pid files live under $QUIP_SERVICES_DIR (default: <repo>/.services).
# Downloads and builds are cached under $QUIP_CACHE_DIR (default: ~/.cache/quip).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${QUIP_SERVICES_DIR:-$REPO/.services}"
CACHE="${QUIP_CACHE_DIR:-$HOME/.cache/quip}"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
INFLUXDB_VERSION="v1.8.10"
INFLUXD="$CACHE/influxdb-$INFLUXDB_VERSION/influxd"
START_TIMEOUT_S="${QUIP_SERVICES_START_TIMEOUT_S:-90}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {
  local pidfile="$DATA/run/$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# ---------------------------------------------------------------- install
install_clickhouse() {
  if command -v clickhouse-server >/dev/null 2>&1; then return; fi
  log "installing Debian clickhouse-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
  # The package may start its own service on the default ports; ours owns them.
  $SUDO service clickhouse-server stop >/dev/null 2>&1 || true
}

install_kafka() {
  if [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then return; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (apt-get install maven)"
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$KAFKA_LIBS.partial"
  mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.partial" >/dev/null \
    || die "Maven could not resolve Kafka $KAFKA_VERSION (run the mvn command above without -q)"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.partial" "$KAFKA_LIBS"
}

install_influxdb() {
  if [ -x "$INFLUXD" ]; then return; fi
  command -v go >/dev/null 2>&1 || die "go not found: InfluxDB $INFLUXDB_VERSION is built with go install"
  log "building influxd $INFLUXDB_VERSION with go install (about a minute)"
  local gobin="$CACHE/influxdb-$INFLUXDB_VERSION.partial"
  mkdir -p "$gobin"
  GOBIN="$gobin" GOFLAGS=-mod=mod go install "github.com/influxdata/influxdb/cmd/influxd@$INFLUXDB_VERSION" >&2
  mkdir -p "$(dirname "$INFLUXD")" && mv "$gobin/influxd" "$INFLUXD" && rm -rf "$gobin"
}

install_all() {
  install_clickhouse
  install_kafka
  install_influxdb
}

render() {  # template -> file with @DATA@ and @CONF@ substituted
  sed -e "s#@DATA@#$DATA#g" -e "s#@CONF@#$DATA/conf#g" "$1" > "$2"
}

# ---------------------------------------------------------------- kafka
start_kafka() {
  if pid_alive kafka; then return; fi
  port_open 9092 && die "port 9092 is taken by a process this script did not start"
  mkdir -p "$DATA/kafka/data" "$DATA/kafka/log" "$DATA/conf" "$DATA/run"
  render "$HERE/kafka/server.properties.in" "$DATA/conf/server.properties"
  local java_opts=(-Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" -Dkafka.logs.dir="$DATA/kafka/log")
  if [ ! -f "$DATA/kafka/data/meta.properties" ]; then
    log "formatting Kafka storage"
    java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
      -t "quip-local-$(date +%s)" -c "$DATA/conf/server.properties" --standalone >/dev/null
  fi
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:9092"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC "${java_opts[@]}" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$DATA/conf/server.properties" >"$DATA/kafka/log/stdout.log" 2>&1 &
  echo $! > "$DATA/run/kafka.pid"
}

kafka_ready() { pid_alive kafka && port_open 9092 && grep -q "Kafka Server started" "$DATA/kafka/log/server.log" 2>/dev/null; }

# ---------------------------------------------------------------- clickhouse
start_clickhouse() {
  if pid_alive clickhouse; then return; fi
  port_open 9000 && die "port 9000 is taken by a process this script did not start"
  mkdir -p "$DATA/clickhouse/"{data,tmp,log,user_files,format_schemas} "$DATA/conf" "$DATA/run"
  render "$HERE/clickhouse/config.xml.in" "$DATA/conf/clickhouse.xml"
  cp "$HERE/clickhouse/users.xml" "$DATA/conf/users.xml"
  log "starting clickhouse-server on 127.0.0.1:9000/8123"
  # Started from its own directory (it writes status files to the cwd); `$!` must be the
  # server itself, not a subshell, or `down` would leave it running.
  pushd "$DATA/clickhouse" >/dev/null
  nohup clickhouse-server --config-file="$DATA/conf/clickhouse.xml" >"$DATA/clickhouse/log/stdout.log" 2>&1 &
  echo $! > "$DATA/run/clickhouse.pid"
  popd >/dev/null
}

clickhouse_ready() { pid_alive clickhouse && [ "$(curl -s --max-time 2 http://127.0.0.1:8123/ping)" = "Ok." ]; }

# ---------------------------------------------------------------- influxdb
start_influxdb() {
  if pid_alive influxdb; then return; fi
  port_open 8086 && die "port 8086 is taken by a process this script did not start"
  mkdir -p "$DATA/influxdb/log" "$DATA/conf" "$DATA/run"
  render "$HERE/influxdb/influxdb.conf.in" "$DATA/conf/influxdb.conf"
  log "starting influxd $INFLUXDB_VERSION on 127.0.0.1:8086"
  nohup "$INFLUXD" run -config "$DATA/conf/influxdb.conf" >"$DATA/influxdb/log/influxd.log" 2>&1 &
  echo $! > "$DATA/run/influxdb.pid"
}

influxdb_ready() {
  pid_alive influxdb && [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:8086/ping)" = "204" ]
}

influxdb_bootstrap() {  # the database behind bucket "quip" (1.8: bucket = database[/rp])
  curl -sf --max-time 5 -XPOST http://127.0.0.1:8086/query --data-urlencode "q=CREATE DATABASE quip" >/dev/null \
    || die "InfluxDB answered ping but refused CREATE DATABASE"
}

# ---------------------------------------------------------------- lifecycle
wait_ready() {
  local name="$1" deadline=$((SECONDS + START_TIMEOUT_S))
  until "${name}_ready"; do
    if ! pid_alive "$name"; then
      log "$name exited during startup; last log lines:"
      tail -n 30 "$(log_file "$name")" >&2 || true
      die "$name could not start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$(log_file "$name")" >&2 || true
      die "$name did not answer within ${START_TIMEOUT_S}s"
    fi
    sleep 0.5
  done
}

log_file() {
  case "$1" in
    kafka) echo "$DATA/kafka/log/server.log" ;;
    clickhouse) echo "$DATA/clickhouse/log/clickhouse-server.err.log" ;;
    influxdb) echo "$DATA/influxdb/log/influxd.log" ;;
  esac
}

stop_one() {
  local name="$1" pidfile="$DATA/run/$1.pid"
  if ! pid_alive "$name"; then rm -f "$pidfile"; return; fi
  local pid; pid="$(cat "$pidfile")"
  log "stopping $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "$name ignored SIGTERM for 30s, killing"; kill -9 "$pid" || true; fi
  rm -f "$pidfile"
}

start_one() {
  case "$1" in
    kafka) install_kafka; start_kafka; wait_ready kafka ;;
    clickhouse) install_clickhouse; start_clickhouse; wait_ready clickhouse ;;
    influxdb) install_influxdb; start_influxdb; wait_ready influxdb; influxdb_bootstrap ;;
    *) die "unknown service $1 (kafka, clickhouse, influxdb)" ;;
  esac
}

status() {
  local rc=0 name
  for name in kafka clickhouse influxdb; do
    if "${name}_ready"; then
      printf '%-11s up    pid %s\n' "$name" "$(cat "$DATA/run/$name.pid")"
    else
      printf '%-11s down\n' "$name"; rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  install) install_all ;;
  up)
    install_all
    start_kafka; start_clickhouse; start_influxdb
    wait_ready kafka; wait_ready clickhouse; wait_ready influxdb; influxdb_bootstrap
    status
    ;;
  down) for name in kafka clickhouse influxdb; do stop_one "$name"; done ;;
  status) status ;;
  reset) for name in kafka clickhouse influxdb; do stop_one "$name"; done; rm -rf "$DATA" ;;
  start) start_one "${2:?service name}" ;;
  stop) stop_one "${2:?service name}" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
