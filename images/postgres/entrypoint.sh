#!/bin/sh
# PostgreSQL for compose.yaml: a cluster made at first start in $PGDATA (a volume), with the
# superuser's password from POSTGRES_PASSWORD and a database POSTGRES_DB (default: sandbar)
# owned by POSTGRES_USER (default: sandbar); then the server in the foreground, on every
# address, password (scram-sha-256) logins only from the network.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-sandbar}
db=${POSTGRES_DB:-sandbar}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # Set up on a private socket, so that no client (nor a health check) sees this server.
  init=$(mktemp -d)
  pg_ctl --pgdata="$PGDATA" --wait start \
    --options="-c listen_addresses='' -c unix_socket_directories=$init" >/dev/null
  if [ "$db" != postgres ]; then
    createdb --host="$init" --username="$user" --owner="$user" "$db"
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
  rmdir "$init"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
