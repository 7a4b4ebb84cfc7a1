#!/bin/bash
# The experiment behind paced bursts (BENCHMARKS.md section 2, session 10):
# pgbench's write load (-R 1000 -c 8, single-row UPDATEs of random ids) on a
# 500k-row table for 20 s, while one backend works a duty cycle next to it,
# and the load's latency percentiles (from when due, as bench/bbm counts).
#
#   bench/bursts/run.sh MODE ON_MS OFF_MS
#
# MODE none: the load alone; cpu: a busy loop ON_MS, then sleep OFF_MS (no
# table); upd: one UPDATE of about ON_MS (copying v to v_big by id range,
# COMMIT), then sleep OFF_MS/ON_MS of what it took; burst: UPDATEs of about
# 10 ms, each committed, back to back for ON_MS, then sleep likewise.
# Needs DATABASE_URL (scripts/services start) and pgbench.
set -u
mode=$1 on=$2 off=$3
: "${DATABASE_URL:?run: eval \"\$(scripts/services start)\"}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
q() { psql "$DATABASE_URL" -qX "$@" >/dev/null; }
q -c "DROP TABLE IF EXISTS bench_bursts" \
  -c "CREATE TABLE bench_bursts (id integer PRIMARY KEY, v integer NOT NULL, v_big bigint, w integer NOT NULL DEFAULT 0)" \
  -c "INSERT INTO bench_bursts SELECT g, g FROM generate_series(1, 500000) g" -c "VACUUM ANALYZE bench_bursts"
q <<'SQL'
CREATE OR REPLACE PROCEDURE bench_bursts_work(onms int, offms int, stmtms int) LANGUAGE plpgsql AS $$
DECLARE lo int := 1; n int := 500; t timestamptz; t0 timestamptz; el float; tot float;
BEGIN
  LOOP
    t0 := clock_timestamp();
    LOOP
      t := clock_timestamp();
      UPDATE bench_bursts SET v_big = v WHERE id >= lo AND id < lo + n;
      COMMIT;
      el := extract(epoch FROM clock_timestamp() - t) * 1000;
      lo := lo + n;
      IF lo > 500000 THEN lo := 1; END IF;
      n := greatest(50, least(200000, (n * stmtms / greatest(el, 0.1))::int));
      tot := extract(epoch FROM clock_timestamp() - t0) * 1000;
      EXIT WHEN tot >= onms;
    END LOOP;
    PERFORM pg_sleep(tot * offms / onms / 1000.0);
  END LOOP;
END $$;
SQL
sync
case $mode in
none) work="SELECT 1" ;;
cpu) work="DO \$\$ DECLARE t timestamptz; BEGIN LOOP t := clock_timestamp(); WHILE clock_timestamp() < t + interval '$on ms' LOOP END LOOP; PERFORM pg_sleep($off / 1000.0); END LOOP; END \$\$" ;;
upd) work="CALL bench_bursts_work($on, $off, $on)" ;;
burst) work="CALL bench_bursts_work($on, $off, 10)" ;;
*) echo "mode: none, cpu, upd or burst" >&2; exit 2 ;;
esac
psql "$DATABASE_URL" -qX -c "SET application_name = 'bench_bursts_work'" -c "$work" >/dev/null 2>&1 &
sleep 1
printf '\\set id random(1, 500000)\nUPDATE bench_bursts SET w = w + 1 WHERE id = :id;\n' >load.sql
pgbench -n -f load.sql -R 1000 -c 8 -j 2 -T 20 -l "$DATABASE_URL" >pgbench.out 2>&1
q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_bursts_work'"
wait
# Log: client, transaction, latency us (from when due: it holds the
# schedule lag, the 7th field), script, epoch, us, schedule lag us.
cat pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR] = $1}
  END {printf "%s %s/%s: n=%d p50=%dus p90=%dus p99=%dus p99.9=%dus\n", "'"$mode"'", "'"$on"'", "'"$off"'", NR, a[int(NR*.5)], a[int(NR*.9)], a[int(NR*.99)], a[int(NR*.999)]}'
