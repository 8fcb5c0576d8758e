#!/bin/sh
# Instructions PostgreSQL runs per call of one money function, counted by valgrind's
# callgrind on a single-user backend. The count is the same on every run, where timings
# on a shared or virtual machine move by 15-30%: use it to compare two versions of a
# function (sql/migrations/008_statement_costs.sql was measured this way).
#
#   sql/bench/movements/instructions.sh deposit [calls]     (or withdraw, buy, sell)
#   sql/bench/movements/instructions.sh deposit 20 16       (20 calls of movements()
#                                                            with 16 deposits each)
#
# Needs valgrind and PostgreSQL's server binaries (found through pg_config), nothing of
# Python. Run it as a user allowed to start postgres, not root (as root:
# su postgres -c 'sh sql/bench/movements/instructions.sh buy').
# It works in a scratch cluster in a temporary directory, listening on no TCP port, and
# deletes it at the end; DATABASE_URL's server is never touched.
#
# The figure is (instructions with N calls - instructions with none) / N: start-up,
# catalog loading and 20 unmeasured warm-up calls cancel out. With a batch size B, the
# figure is per movement: (instructions with N calls - with none) / (N * B). Each call is its own
# transaction, commit included (fsync off: callgrind counts instructions, not waits).
set -eu

kind=${1:?usage: instructions.sh deposit|withdraw|buy|sell [calls [batch]]}
calls=${2:-200}
batch=${3:-1}
case $kind in deposit | withdraw | buy | sell) ;; *) echo "unknown function: $kind" >&2; exit 2 ;; esac
[ "$batch" -ge 1 ] && [ "$batch" -le 32 ] || { echo "batch: 1 to 32" >&2; exit 2; }

bin=$(pg_config --bindir)
here=$(cd "$(dirname "$0")" && pwd)
migrations=$here/../../migrations
dir=$(mktemp -d)
trap '"$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir"' EXIT

"$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"$bin/pg_ctl" -D "$dir/data" -o "-c listen_addresses='' -k $dir" -l "$dir/log" -w start >/dev/null
"$bin/createdb" -h "$dir" -U postgres bench
export PGOPTIONS='-c search_path=exchange -c client_min_messages=warning'
psql="$bin/psql -q -X -v ON_ERROR_STOP=1 -h $dir -U postgres -d bench"
$psql -c 'CREATE SCHEMA exchange'
for migration in "$migrations"/[0-9][0-9][0-9]_*.sql; do  # as `exchange migrate` does
    $psql -1 -f "$migration" >/dev/null
done
$psql -f "$here/setup.sql" >/dev/null
"$bin/pg_ctl" -D "$dir/data" -w stop >/dev/null

# One call per line (single-user mode runs each line as a statement): setup.sql's users
# 1 to 256, a new idempotency key each time. With batch > 1, one movements() call per
# line, of as many movements (010_movement_batches.sql).
statements() {  # $1: measured calls
    echo "SET search_path = exchange"
    awk -v kind="$kind" -v n="$1" -v batch="$batch" 'BEGIN {
        q = "\047"
        for (i = 1; i <= 20 + n; i++) {
            if (batch == 1) {
                user = (i * 91) % 256 + 1
                key = (i <= 20 ? "warm-" : "call-") i
                if (kind == "buy" || kind == "sell")
                    printf "SELECT * FROM %s(%d, %sBTCUSDT%s, 0.0001, NULL, NULL, 50000.00, now(), NULL, %s%s%s)\n",
                           kind, user, q, q, q, key, q
                else
                    printf "SELECT * FROM %s(%d, %sUSDT%s, 1.25, %s%s%s)\n", kind, user, q, q, q, key, q
                continue
            }
            kinds = users = subjects = amounts = prices = ats = keys = ""
            for (j = 1; j <= batch; j++) {
                m = (i - 1) * batch + j
                sep = (j == 1 ? "" : ",")
                kinds = kinds sep q (kind == "withdraw" ? "withdrawal" : kind) q
                users = users sep ((m * 91) % 256 + 1)
                keys = keys sep q (i <= 20 ? "warm-" : "call-") m q
                trade = (kind == "buy" || kind == "sell")
                subjects = subjects sep q (trade ? "BTCUSDT" : "USDT") q
                amounts = amounts sep (trade ? "0.0001" : "1.25")
                prices = prices sep "50000.00"
                ats = ats sep "now()"
            }
            if (trade)
                printf "SELECT error_sqlstate, error_message FROM movements(ARRAY[%s], ARRAY[%s]::bigint[], ARRAY[%s], ARRAY[%s]::numeric[], NULL, NULL, ARRAY[%s]::numeric[], ARRAY[%s], NULL, ARRAY[%s]) WHERE error_sqlstate IS NOT NULL\n",
                       kinds, users, subjects, amounts, prices, ats, keys
            else
                printf "SELECT error_sqlstate, error_message FROM movements(ARRAY[%s], ARRAY[%s]::bigint[], ARRAY[%s], ARRAY[%s]::numeric[], NULL, NULL, NULL, NULL, NULL, ARRAY[%s]) WHERE error_sqlstate IS NOT NULL\n",
                       kinds, users, subjects, amounts, keys
        }
    }'
}

count() {  # $1: measured calls; prints the instructions of a whole single-user run
    rm -rf "$dir/run"
    cp -R "$dir/data" "$dir/run"
    statements "$1" > "$dir/statements.sql"
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$bin/postgres" --single -D "$dir/run" -c fsync=off -c autovacuum=off bench \
        < "$dir/statements.sql" > "$dir/output" 2>"$dir/valgrind"
    # A movement of a batch fails as a row (shown only when it fails), not an ERROR.
    if grep -q -e ERROR -e 'error_sqlstate = ' "$dir/output"; then
        grep -m 3 -e ERROR -e 'error_message = ' "$dir/output" >&2
        exit 1
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$dir/callgrind.out"
}

none=$(count 0)
some=$(count "$calls")
if [ "$batch" = 1 ]; then
    echo "$kind: $(( (some - none) / calls )) instructions per call ($calls calls)"
else
    echo "$kind: $(( (some - none) / (calls * batch) )) instructions per movement ($calls calls of $batch)"
fi
