#!/usr/bin/env bash
# Make sure the services the tests need are running on loopback:
#
#   Redis       127.0.0.1:6379, no persistence (plus the `redis-server` binary,
#               which tests use to start their own instances on free ports)
#   PostgreSQL  127.0.0.1:5432, trust auth for loopback TCP, superuser roles
#               `postgres` and `root`, database `test`
#   MariaDB     127.0.0.1:3306, user `root` with an empty password over TCP
#               from 127.0.0.1, database `test`
#   tools       the virtualenv /opt/larder-venv (schemathesis, redis-py,
#               requests); Chromium and playwright-core in /opt/larder-node
#               for the dashboard's browser test
#
# Idempotent: on a machine where all of that is already true it only checks
# and prints one line per step. Installs packages with apt-get when missing
# (CI runs as root on a fresh Debian; elsewhere sudo is used if available).
# SQLite needs nothing: sqlx builds it in.
set -euo pipefail

# The defaults are what DESIGN.md promises; the overrides exist to exercise
# this script against a throwaway instance without touching the shared ones.
REDIS_HOST=127.0.0.1
REDIS_PORT=${LARDER_SERVICES_REDIS_PORT:-6379}
REDIS_LOG=${LARDER_SERVICES_REDIS_LOG:-/var/log/redis/ci.log}
PG_HOST=127.0.0.1
PG_PORT=${LARDER_SERVICES_PG_PORT:-5432}
PG_CLUSTER=${LARDER_SERVICES_PG_CLUSTER:-main}
MY_HOST=127.0.0.1
MY_PORT=${LARDER_SERVICES_MYSQL_PORT:-3306}
WAIT_SECS=30

say() { echo "services: [${SECONDS}s] $*"; }
die() {
    echo "services: ERROR: $*" >&2
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi
as_root() { "${SUDO[@]}" "$@"; }

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    local extra=()
    [ "${APT_NO_RECOMMENDS:-0}" = 1 ] && extra=(--no-install-recommends)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${extra[@]}" "$@" >/dev/null
}

# ---------------------------------------------------------------- Redis ----

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    say "redis-server present ($(redis-server --version | awk '{print $3}' | sed 's/^v=//'))"
else
    apt_install redis-server
fi

redis_ping() {
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

if redis_ping; then
    say "redis answering on $REDIS_HOST:$REDIS_PORT"
else
    say "starting redis on $REDIS_HOST:$REDIS_PORT"
    as_root mkdir -p /var/lib/redis "$(dirname "$REDIS_LOG")"
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile "$REDIS_LOG"
    for _ in $(seq $((WAIT_SECS * 5))); do
        redis_ping && break
        sleep 0.2
    done
    if ! redis_ping; then
        as_root tail -n 30 "$REDIS_LOG" >&2 || true
        die "redis did not answer PING within ${WAIT_SECS}s"
    fi
    say "redis up"
fi

# ----------------------------------------------------------- PostgreSQL ----

if command -v pg_ctlcluster >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 &&
    command -v pg_isready >/dev/null 2>&1; then
    say "postgresql present"
else
    apt_install postgresql
fi

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }

pg_version() {
    local v
    v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    [ -n "$v" ] || v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
    [ -n "$v" ] || die "no PostgreSQL version found under /etc/postgresql or /usr/lib/postgresql"
    echo "$v"
}

PG_VER=$(pg_version)
PG_CONF_DIR=/etc/postgresql/$PG_VER/$PG_CLUSTER

pg_ctl_main() { as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_CLUSTER" "$@"; }

wait_pg_ready() {
    for _ in $(seq $((WAIT_SECS * 5))); do
        pg_ready && return 0
        sleep 0.2
    done
    as_root tail -n 30 "/var/log/postgresql/postgresql-$PG_VER-$PG_CLUSTER.log" >&2 || true
    die "postgresql not ready on $PG_HOST:$PG_PORT within ${WAIT_SECS}s"
}

if pg_ready; then
    say "postgresql accepting connections on $PG_HOST:$PG_PORT"
else
    if [ ! -f "$PG_CONF_DIR/postgresql.conf" ]; then
        say "creating cluster $PG_VER/$PG_CLUSTER on port $PG_PORT"
        as_root pg_createcluster "$PG_VER" "$PG_CLUSTER" --port "$PG_PORT" >/dev/null
    fi
    say "starting postgresql $PG_VER/$PG_CLUSTER"
    pg_ctl_main start
    wait_pg_ready
    say "postgresql up"
fi

# Runs SQL as the superuser `postgres`: over loopback TCP when trust auth is
# there, otherwise over the Unix socket as the postgres OS user (peer auth).
pg_tcp() { psql -X -w -q -At -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"; }
pg_admin() {
    if pg_tcp -c 'select 1' >/dev/null 2>&1; then
        pg_tcp "$@"
    elif [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- psql -X -q -At -p "$PG_PORT" -d postgres "$@"
    else
        sudo -u postgres psql -X -q -At -p "$PG_PORT" -d postgres "$@"
    fi
}

if pg_tcp -c 'select 1' >/dev/null 2>&1; then
    say "postgresql trust auth on $PG_HOST works"
else
    hba=$(pg_admin -c 'show hba_file')
    [ -n "$hba" ] || die "could not find pg_hba.conf"
    say "adding loopback trust lines at the top of $hba"
    tmp=$(mktemp)
    {
        echo "# added by larder scripts/services.sh: trust loopback TCP (tests only)"
        echo "host all all 127.0.0.1/32 trust"
        echo "host all all ::1/128 trust"
        as_root cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    pg_ctl_main reload
    for _ in $(seq $((WAIT_SECS * 5))); do
        pg_tcp -c 'select 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    pg_tcp -c 'select 1' >/dev/null 2>&1 ||
        die "psql -h $PG_HOST -U postgres still fails after adding trust lines"
    say "postgresql trust auth on $PG_HOST works"
fi

for role in postgres root; do
    super=$(pg_admin -c "select rolsuper and rolcanlogin from pg_roles where rolname = '$role'")
    case "$super" in
    t) say "role $role exists (superuser)" ;;
    f)
        pg_admin -c "alter role \"$role\" with superuser login"
        say "role $role made superuser"
        ;;
    *)
        pg_admin -c "create role \"$role\" with superuser login"
        say "role $role created"
        ;;
    esac
done

if [ "$(pg_admin -c "select 1 from pg_database where datname = 'test'")" = "1" ]; then
    say "database test exists"
else
    pg_admin -c 'create database test owner postgres'
    say "database test created"
fi

# PostgreSQL with TLS: `sslmode=require` URLs are tested against this
# server. When `ssl` is off, a self-signed certificate is made in the data
# directory and `ssl = on` set with ALTER SYSTEM (a reload applies it).
if [ "$(pg_admin -c 'show ssl')" = "on" ]; then
    say "postgresql ssl on"
else
    data=$(pg_admin -c 'show data_directory')
    [ -n "$data" ] || die "could not find the PostgreSQL data directory"
    if ! as_root test -f "$data/larder-server.crt"; then
        say "making a self-signed certificate for postgresql in $data"
        as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
            -keyout "$data/larder-server.key" -out "$data/larder-server.crt" >/dev/null 2>&1 ||
            die "openssl could not make a certificate"
        as_root chown postgres:postgres "$data/larder-server.key" "$data/larder-server.crt"
        as_root chmod 600 "$data/larder-server.key"
    fi
    pg_admin -c "alter system set ssl_cert_file = '$data/larder-server.crt'"
    pg_admin -c "alter system set ssl_key_file = '$data/larder-server.key'"
    pg_admin -c "alter system set ssl = on"
    pg_admin -c "select pg_reload_conf()" >/dev/null
    for _ in $(seq $((WAIT_SECS * 5))); do
        [ "$(pg_admin -c 'show ssl')" = "on" ] && break
        sleep 0.2
    done
    [ "$(pg_admin -c 'show ssl')" = "on" ] || die "postgresql ssl is still off after the reload"
    say "postgresql ssl turned on"
fi

# -------------------------------------------------------------- MariaDB ----

if command -v mariadb >/dev/null 2>&1 && command -v mariadb-admin >/dev/null 2>&1 &&
    { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; }; then
    say "mariadb present"
else
    apt_install mariadb-server mariadb-client
fi

# As root with an empty password over TCP (what the tests use).
my_tcp() { mariadb --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -u root -N -B "$@"; }
my_login() { my_tcp -e 'SELECT 1' >/dev/null 2>&1; }
# The server answers (even if the login would be refused).
my_alive() { mariadb-admin --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -u root --connect-timeout=2 ping >/dev/null 2>&1; }
# As the administrator over the Unix socket (Debian's root@localhost uses
# unix_socket authentication), for setting up the TCP login.
my_socket() { as_root mariadb -u root -N -B "$@"; }

if my_login; then
    say "mariadb answering on $MY_HOST:$MY_PORT (root, no password)"
else
    if ! my_alive; then
        say "starting mariadb"
        as_root mkdir -p /run/mysqld
        as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
        if ! as_root service mariadb start >/dev/null 2>&1; then
            as_root sh -c 'nohup mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &'
        fi
        for _ in $(seq $((WAIT_SECS * 5))); do
            my_alive && break
            sleep 0.2
        done
        my_alive || die "mariadb did not answer on $MY_HOST:$MY_PORT within ${WAIT_SECS}s"
        say "mariadb up"
    fi
    if ! my_login; then
        say "letting root log in from $MY_HOST without a password"
        my_socket -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
            ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '';
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
            FLUSH PRIVILEGES;" || die "could not configure root@127.0.0.1 over the socket"
        my_login || die "root still cannot log in to mariadb over TCP from $MY_HOST"
    fi
    say "mariadb answering on $MY_HOST:$MY_PORT (root, no password)"
fi

if [ "$(my_tcp -e "SHOW DATABASES LIKE 'test'")" = "test" ]; then
    say "mariadb database test exists"
else
    my_tcp -e 'CREATE DATABASE IF NOT EXISTS test'
    say "mariadb database test created"
fi

# ---------------------------------------------------------- schemathesis ----

# scripts/schemathesis.sh runs schemathesis from this virtualenv; it is made
# once and kept (a later run only checks the version).
VENV=${LARDER_VENV:-/opt/larder-venv}
SCHEMATHESIS_VERSION=4.32.5
if [ -x "$VENV/bin/st" ] && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" = "$SCHEMATHESIS_VERSION" ]; then
    say "schemathesis $SCHEMATHESIS_VERSION present in $VENV"
else
    PY=$(command -v python3 || true)
    [ -n "$PY" ] || { apt_install python3; PY=$(command -v python3); }
    if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    say "making the virtualenv $VENV with schemathesis $SCHEMATHESIS_VERSION"
    as_root "$PY" -m venv "$VENV"
    as_root "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
        die "pip could not install schemathesis into $VENV"
    say "schemathesis $SCHEMATHESIS_VERSION installed in $VENV"
fi

# ------------------------------------------------- redis-py (RESP tests) ----
# scripts/resp_clients.sh drives `larder serve --resp` with redis-py from the
# virtualenv /opt/larder-venv (created here if absent), and with
# redis-benchmark (Debian's redis-tools, next to redis-cli).

LARDER_VENV=${LARDER_VENV:-/opt/larder-venv}
command -v redis-benchmark >/dev/null 2>&1 || apt_install redis-tools
if [ ! -x "$LARDER_VENV/bin/python" ]; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    say "creating the virtualenv $LARDER_VENV"
    as_root python3 -m venv "$LARDER_VENV"
fi
if "$LARDER_VENV/bin/python" -c 'import redis' >/dev/null 2>&1; then
    say "redis-py present in $LARDER_VENV ($("$LARDER_VENV/bin/python" -c 'import redis; print(redis.__version__)'))"
else
    say "installing redis-py into $LARDER_VENV"
    as_root "$LARDER_VENV/bin/pip" install -q 'redis>=5,<9'
fi

# ------------------------------------------ requests (Python examples) ----
# scripts/python_examples.sh runs examples/python with requests and redis-py
# from the same virtualenv.

if "$LARDER_VENV/bin/python" -c 'import requests' >/dev/null 2>&1; then
    say "requests present in $LARDER_VENV"
else
    say "installing requests into $LARDER_VENV"
    as_root "$LARDER_VENV/bin/pip" install -q 'requests>=2.31,<3'
fi

# ------------------------------ Chromium + playwright-core (dashboard) ----
# scripts/dashboard.sh drives the dashboard in Debian's headless Chromium
# with playwright-core (the npm package, without its browser downloads),
# installed once into $LARDER_NODE (default /opt/larder-node), outside the
# repository.

LARDER_NODE=${LARDER_NODE:-/opt/larder-node}
PLAYWRIGHT_VERSION=1.65.1
if command -v chromium >/dev/null 2>&1; then
    say "chromium present ($(chromium --version 2>/dev/null | awk '{print $2}'))"
else
    # The browser and its fonts only: recommends would pull in a desktop.
    APT_NO_RECOMMENDS=1 apt_install chromium fonts-liberation
fi
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
if [ "$(node -p "require('$LARDER_NODE/node_modules/playwright-core/package.json').version" 2>/dev/null)" = "$PLAYWRIGHT_VERSION" ]; then
    say "playwright-core $PLAYWRIGHT_VERSION present in $LARDER_NODE"
else
    say "installing playwright-core $PLAYWRIGHT_VERSION into $LARDER_NODE"
    as_root mkdir -p "$LARDER_NODE"
    # playwright-core downloads no browser; the test uses /usr/bin/chromium.
    (cd "$LARDER_NODE" && as_root npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION") ||
        die "npm could not install playwright-core into $LARDER_NODE"
fi
