# Sourced by scripts/test: the outside programs the tests run for real.
# Redis (tests/server/redis_servers.py starts its own servers on spare loopback ports).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server (Debian package) for the multi-node tests"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null
  else
    echo "error: redis-server is missing and cannot be installed here (need root and apt-get);" \
         "install Redis 7 (redis-server, redis-cli) and run again" >&2
    exit 1
  fi
fi
echo "== $(redis-server --version | cut -d' ' -f1-3)"
