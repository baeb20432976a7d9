# Shared helpers for the project's scripts. Source it; do not run it.
# Everything lives under .tools/ (ignored by git) in the repository.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
RUN_DIR="${SERVICES_RUN_DIR:-$TOOLS/run}"
VENV="$TOOLS/mongoeco-venv"
MONGOECO_VERSION="${MONGOECO_VERSION:-4.11.0}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Every early `return` in these helpers says `return 0`: a bare `return`
# inside a trap handler returns the status of the command that fired the
# trap, so under `set -e` a cleanup on a failed run would stop half-way.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi
}

# The directory holding initdb/pg_ctl/postgres, installing PostgreSQL when
# no server binaries are present.
pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$(command -v initdb)")"; return 0
    fi
    log "installing PostgreSQL server binaries (apt-get install postgresql)"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >&2
    pg_bindir
}

# A Python >= 3.13 interpreter (pyenv's, not the failing shim), or fail
# with what to install.
python313() {
    local candidate root
    if [ -n "${MONGOECO_PYTHON:-}" ]; then echo "$MONGOECO_PYTHON"; return 0; fi
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in $(ls -d "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V -r) \
                     /usr/bin/python3.13 /usr/local/bin/python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
           && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    die "the MongoDB test server (mongoeco) needs Python >= 3.13: install it (e.g. 'pyenv install 3.13'), set MONGOECO_PYTHON, or set MONGODB_URL to a running MongoDB"
}

# The virtual environment with mongoeco[wire]; created on first use.
ensure_mongoeco() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import mongoeco.wire' 2>/dev/null; then
        echo "$VENV/bin/python"; return 0
    fi
    local py; py="$(python313)"
    log "creating $VENV with mongoeco[wire]==$MONGOECO_VERSION ($py)"
    mkdir -p "$TOOLS"
    "$py" -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "mongoeco[wire]==$MONGOECO_VERSION" >&2
    echo "$VENV/bin/python"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts an ephemeral PostgreSQL cluster in $1 (SCRAM auth, fsync off) and
# prints its superuser URL. Runs the server as `postgres` when root; the
# cluster then lives in a directory of its own under $TMPDIR (or /tmp), $1
# linking to it, because `postgres` may not be able to enter the checkout
# (a clone in a `mktemp -d` directory is root's alone).
start_postgres() {
    local dir="$1" password="$2" bindir port owner
    bindir="$(pg_bindir)"
    port="$(free_port)"
    stop_postgres "$dir"
    rm -rf "$dir"
    owner="$(id -un)"
    if [ "$(id -u)" = 0 ]; then
        owner=postgres
        local cluster
        cluster="$(mktemp -d "${TMPDIR:-/tmp}/dbmanager-pg.XXXXXX")"
        chmod 755 "$cluster"; chown postgres "$cluster"
        mkdir -p "$(dirname "$dir")"; ln -s "$cluster" "$dir"
        dir="$cluster"
    else
        mkdir -p "$dir"
    fi
    local run=(); [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    printf '%s\n' "$password" > "$dir/pwfile"; chown "$owner" "$dir/pwfile"; chmod 600 "$dir/pwfile"
    "${run[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pwfile" \
        -E UTF8 --locale=C.UTF-8 --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start >/dev/null || { cat "$dir/server.log" >&2; die "PostgreSQL did not start"; }
    echo "$port" > "$dir/port"
    echo "postgres://postgres:$password@127.0.0.1:$port/postgres"
}

# Stops the cluster of start_postgres. Never fails: it runs in EXIT traps.
stop_postgres() {
    local link="$1" dir bindir="" run=()
    dir="$(readlink -f "$link" 2>/dev/null || echo "$link")"
    if [ -d "$dir/data" ]; then
        bindir="$(pg_bindir)" || true
        if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
        "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    # A cluster kept outside the checkout goes with its link.
    if [ -L "$link" ]; then rm -rf "$dir" || true; rm -f "$link" || true; fi
    return 0
}

# Starts the mongoeco server with a SCRAM user and prints its URL.
start_mongoeco() {
    local dir="$1" user="$2" password="$3" py port pidfile
    py="$(ensure_mongoeco)"
    mkdir -p "$dir"
    port="$(free_port)"
    "$py" "$ROOT/scripts/mongoeco_server.py" --port "$port" --user "$user" --password "$password" \
        >"$dir/mongo.log" 2>&1 &
    echo $! > "$dir/mongo.pid"
    for _ in $(seq 1 100); do
        grep -q '^READY' "$dir/mongo.log" 2>/dev/null && break
        kill -0 "$(cat "$dir/mongo.pid")" 2>/dev/null || { cat "$dir/mongo.log" >&2; die "mongoeco server exited"; }
        sleep 0.1
    done
    grep -q '^READY' "$dir/mongo.log" || die "mongoeco server did not start"
    echo "mongodb://$user:$password@127.0.0.1:$port/?authSource=admin&authMechanism=SCRAM-SHA-256"
}

# Stops the server of start_mongoeco. Never fails: it runs in EXIT traps.
stop_mongoeco() {
    local dir="$1" pid
    [ -f "$dir/mongo.pid" ] || return 0
    pid="$(cat "$dir/mongo.pid" 2>/dev/null)" || true
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/mongo.pid" || true
    return 0
}

# The EXIT trap of a script that started servers in run directory $1:
# stops PostgreSQL and mongoeco and removes the directory, whatever the
# status the script is exiting with (errexit is off here, so one failing
# step cannot skip the rest). The script keeps its exit status.
stop_run() {
    set +e
    local dir="$1"
    stop_postgres "$dir/pg"
    stop_mongoeco "$dir"
    rm -rf "$dir"
    return 0
}
