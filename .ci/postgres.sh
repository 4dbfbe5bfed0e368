# Sourced by .ci/run: start a PostgreSQL server on loopback for the shared-storage tuning test.
# Exports COMP_TEST_POSTGRES on success; on any failure it says why, and the test is skipped
# with that reason. Needs root (apt, the postgres user); elsewhere it only reports.
comp_start_postgres() {
    if [ "$(id -u)" != 0 ]; then comp_pg_reason="not root, not starting a server"; echo "postgres: $comp_pg_reason"; return 1; fi
    if ! command -v pg_ctlcluster >/dev/null; then
        echo "postgres: installing Debian's postgresql package"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
            || { comp_pg_reason="apt-get install postgresql failed"; echo "postgres: $comp_pg_reason"; return 1; }
    fi
    local cluster
    cluster=$(pg_lsclusters --no-header 2>/dev/null | head -1)
    if [ -z "$cluster" ]; then
        local version
        version=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$version" main >/dev/null || { comp_pg_reason="pg_createcluster failed"; echo "postgres: $comp_pg_reason"; return 1; }
        cluster=$(pg_lsclusters --no-header | head -1)
    fi
    set -- $cluster
    local version=$1 name=$2 port=$3
    pg_ctlcluster "$version" "$name" start 2>/dev/null || pg_ctlcluster "$version" "$name" status >/dev/null \
        || { comp_pg_reason="could not start cluster $version/$name"; echo "postgres: $comp_pg_reason"; return 1; }
    su postgres -c "psql -p $port -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='comp'\"" | grep -q 1 \
        || su postgres -c "psql -p $port -qc \"CREATE ROLE comp LOGIN PASSWORD 'comp'\"" >/dev/null
    su postgres -c "psql -p $port -qtAc \"SELECT 1 FROM pg_database WHERE datname='comp_tune'\"" | grep -q 1 \
        || su postgres -c "createdb -p $port -O comp comp_tune" \
        || { comp_pg_reason="could not create the database"; echo "postgres: $comp_pg_reason"; return 1; }
    export COMP_TEST_POSTGRES="postgresql://comp:comp@127.0.0.1:$port/comp_tune"
    echo "postgres: $version/$name on 127.0.0.1:$port"
}
comp_pg_reason=""
comp_start_postgres || export COMP_TEST_POSTGRES_SKIP="$comp_pg_reason"
