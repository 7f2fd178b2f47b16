#!/usr/bin/env bash
# Backup and restore of the thermal bridge's MySQL/MariaDB database (deploy/README.md).
#
#   deploy/backup.sh backup  [DIR]    dump to DIR/thermal-<UTC time>.sql.gz (default
#                                     /var/backups/thermal-bridge), while the services run
#   deploy/backup.sh restore FILE     load such a dump back (stop the services first)
#
# The connection comes from a MySQL option file (never from the command line, where `ps` would
# show a password): THERMAL_BACKUP_DEFAULTS, default /etc/thermal-bridge/backup.cnf, mode 0600:
#   [client]
#   host=127.0.0.1
#   user=thermal
#   password=...
# and the database name from THERMAL_BACKUP_DATABASE (default: thermal).
set -euo pipefail

defaults=${THERMAL_BACKUP_DEFAULTS:-/etc/thermal-bridge/backup.cnf}
database=${THERMAL_BACKUP_DATABASE:-thermal}
dump=$(command -v mariadb-dump || command -v mysqldump)
client=$(command -v mariadb || command -v mysql)

if [[ ! -r $defaults ]]; then
    echo "backup: cannot read the option file $defaults (THERMAL_BACKUP_DEFAULTS)" >&2
    exit 2
fi

case "${1:-}" in
backup)
    dir=${2:-/var/backups/thermal-bridge}
    mkdir -p "$dir"
    umask 077 # the dump holds users' password hashes and keys: readable by its owner only
    file="$dir/thermal-$(date -u +%Y%m%dT%H%M%SZ).sql.gz"
    # --single-transaction: one consistent InnoDB snapshot without locking the tables, so the
    # bridge keeps ingesting; --hex-blob: PNGs and grids survive any client character set.
    "$dump" --defaults-extra-file="$defaults" --single-transaction --quick --hex-blob \
        --routines --triggers --databases "$database" | gzip -6 >"$file.partial"
    mv "$file.partial" "$file"
    echo "$file"
    ;;
restore)
    file=${2:?usage: backup.sh restore FILE}
    # The dump creates the database if it is missing and replaces each of its tables.
    gzip -dc "$file" | "$client" --defaults-extra-file="$defaults"
    echo "restored $database from $file"
    ;;
*)
    echo "usage: backup.sh backup [DIR] | restore FILE" >&2
    exit 2
    ;;
esac
