# Sourced by scripts/test: the outside programs the tests run for real (Redis, Cassandra,
# SeaweedFS).
# Redis (tests/server/redis_servers.py starts its own servers on spare loopback ports) and
# Cassandra 5.0 (tests/cassandra_node.py starts one node on spare loopback ports, from the
# jars scripts/cassandra-fetch gets from Maven Central; Java 17 runs it).
apt_install() {  # apt_install WHAT PACKAGE...
  echo "== installing $1 (Debian packages: ${*:2})"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q "${@:2}" >/dev/null
  else
    echo "error: $1 is missing and cannot be installed here (need root and apt-get);" \
         "install ${*:2} and run again" >&2
    exit 1
  fi
}
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt_install "Redis for the multi-node tests" redis-server
fi
echo "== $(redis-server --version | cut -d' ' -f1-3)"
if [ ! -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]; then
  apt_install "Java 17 for the Cassandra tests" openjdk-17-jre-headless
fi
if ! command -v mvn >/dev/null; then
  apt_install "Maven to fetch Cassandra" maven
fi
CASSANDRA_LIB="$(scripts/cassandra-fetch)" || { echo "error: could not fetch Cassandra" >&2; exit 1; }
echo "== Cassandra $(basename "$(dirname "$CASSANDRA_LIB")") jars in $CASSANDRA_LIB"
# SeaweedFS (tests/media starts `weed server -s3` on spare loopback ports): built from the Go
# module proxy once (~11 min on one core), cached.
if ! command -v go >/dev/null; then
  apt_install "Go to build SeaweedFS for the media tests" golang-go
fi
WEED="$(scripts/seaweedfs-fetch)" || { echo "error: could not build SeaweedFS" >&2; exit 1; }
echo "== SeaweedFS weed in $WEED"
# The web app (clients/web) builds with Node.js and npm (20+; packages pinned by its
# package-lock.json); its browser tests (tests/web) drive Debian's Chromium with the
# Playwright driver from the dev extra (no browser download).
if ! command -v npm >/dev/null; then
  apt_install "Node.js and npm for the web app" nodejs npm
fi
echo "== Node.js $(node --version)"
if [ ! -x /usr/bin/chromium ]; then
  apt_install "Chromium for the browser tests" chromium
fi
echo "== $(/usr/bin/chromium --version 2>/dev/null || echo 'Chromium (version unknown)')"
# promtool checks and unit-tests deploy/prometheus/alerts.yml (the Prometheus daemon is not
# run); systemd-analyze verifies deploy/chatd.service (tests/deploy).
if ! command -v promtool >/dev/null; then
  apt_install "promtool for the alert rule tests" prometheus
fi
if ! command -v systemd-analyze >/dev/null; then
  apt_install "systemd-analyze for the unit file test" systemd
fi
