#!/usr/bin/env python3
"""What a mark costs PostgreSQL, per schema layout and mark shape, without Kafka: the same
backlog selected (with payloads) and marked in batches by a server-side procedure, as the
bench's `pgfloor`, once per variant, each in a fresh database of one PostgreSQL the script
starts itself (integration/harness). Prints PostgreSQL CPU s per 100,000 rows, rows/s and the
share of marks that were HOT updates (pg_stat_user_tables.n_tup_hot_upd / n_tup_upd).

  integration/bench/markcost.py [--rows 200000] [--batch 1000,5000] [--variants a,b,...]
                                [--pg-set KEY=VALUE ...]

Variants (the schema is every file of schema/ in order, then):
  current     as migrated: marks leave events_pending_idx and enter events_published_at_idx
  no-pubidx   without events_published_at_idx (retention by id, schema 0010)
  range       as no-pubidx, marked with one id range per batch instead of an id list
  hot-bound   the bound of HOT marks: no index on a column the mark changes (neither the
              pending index nor the published_at one) and fillfactor 50 (a page keeps room for a new version of each of its rows: the
              old ones become prunable only when the mark commits); pending rows read
              through the primary key from the lowest pending id the procedure remembers.
              Not a layout the relay can use as it is (see README "Database cost").
Every variant selects the same rows with the same payload bytes; the marks set
published_at = now() and last_error = NULL as the relay's do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import Postgres  # noqa: E402
from harness.servers import REPO_DIR, ServerError  # noqa: E402

import load  # noqa: E402
import procstat  # noqa: E402
from bench import parse_pg_set, pg_conf, pg_settings_shown, pg_settings_text  # noqa: E402

FILLFACTOR = 50
VARIANTS = ("current", "no-pubidx", "range", "hot-bound")

PROC = r"""
CREATE OR REPLACE PROCEDURE bench.mark_variant(p_batch int, p_mode text, INOUT marked bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    bytes bigint;
    low bigint := 0;
BEGIN
    LOOP
        IF p_mode = 'hot-bound' THEN
            SELECT array_agg(id), sum(length(payload)) INTO ids, bytes FROM (
                SELECT id, payload FROM outbox.events
                WHERE id >= low AND published_at IS NULL AND dead_lettered_at IS NULL
                ORDER BY id LIMIT p_batch FOR UPDATE) b;
        ELSE
            SELECT array_agg(id), sum(length(payload)) INTO ids, bytes FROM (
                SELECT id, payload FROM outbox.events
                WHERE published_at IS NULL AND dead_lettered_at IS NULL
                ORDER BY id LIMIT p_batch FOR UPDATE) b;
        END IF;
        EXIT WHEN ids IS NULL;
        IF p_mode = 'range' THEN
            UPDATE outbox.events SET published_at = now(), last_error = NULL
            WHERE id BETWEEN ids[1] AND ids[cardinality(ids)]
              AND published_at IS NULL AND dead_lettered_at IS NULL;
        ELSE
            -- the relay's mark (pg_store.cc kMarkPublishedSql), event ids not checked
            -- (EXECUTE: planned for each batch's array, as the relay's prepared statement
            -- is; a PL/pgSQL generic plan of it costs ten times more on a fresh table)
            EXECUTE 'UPDATE outbox.events e SET published_at = coalesce(e.published_at, now()), '
                    'last_error = NULL FROM unnest($1) AS g(id) '
                    'WHERE e.id = ANY($1) AND e.id = g.id AND e.dead_lettered_at IS NULL' USING ids;
        END IF;
        low := ids[cardinality(ids)] + 1;
        marked := marked + cardinality(ids);
        COMMIT;
    END LOOP;
END $$;
"""


def apply_schema(c) -> None:
    # the roles `outbox-relay migrate` creates before the schema's grants
    for role in ("outbox_relay", "outbox_writer"):
        c.execute(f"DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    for f in sorted((REPO_DIR / "schema").glob("0*.sql")):
        c.execute(f.read_text())


def run_variant(pg, name: str, rows: int, batch: int, vacuum: bool) -> dict:
    db = f"markcost_{name.replace('-', '_')}_{batch}"
    pg.drop_database(db)
    pg.create_database(db)
    try:
        with pg.connect(db, autocommit=True) as c:
            apply_schema(c)
            if name != "current":
                c.execute("DROP INDEX outbox.events_published_at_idx")
            if name == "hot-bound":
                c.execute("DROP INDEX outbox.events_pending_idx")
                c.execute(f"ALTER TABLE outbox.events SET (fillfactor = {FILLFACTOR})")
            load.install(c)
            c.execute(PROC)
            load.fill(c, "events", rows, 1000, 10_000, 200)
            if vacuum:
                c.execute("VACUUM ANALYZE outbox.events")
            c.execute("SELECT pg_stat_reset()")
            meter = procstat.CpuMeter(lambda: pg.pid).start()
            t = time.monotonic()
            marked = c.execute("CALL bench.mark_variant(%s, %s)", (batch, name)).fetchone()[0]
            secs = time.monotonic() - t
            cpu = meter.seconds()
            time.sleep(0.6)  # statistics are sent at most every 500 ms (PGSTAT_MIN_INTERVAL)
            upd, hot = c.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                 "WHERE relid = 'outbox.events'::regclass").fetchone()
            wal = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        if marked != rows:
            raise RuntimeError(f"{name}: marked {marked} of {rows}")
        return {"variant": name, "batch": batch, "rows_per_s": rows / secs, "seconds": secs,
                "pg_cpu_s_per_100k": cpu / rows * 1e5, "hot_share": hot / upd if upd else 0.0,
                "wal_lsn_end": wal}
    finally:
        pg.drop_database(db)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", default="1000")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--vacuum", action="store_true",
                    help="VACUUM ANALYZE the backlog first (by default it is drained fresh, hint bits "
                         "unset, as after a burst and as the bench's drain)")
    ap.add_argument("--rounds", type=int, default=2, help="each variant this many times, interleaved")
    ap.add_argument("--pg-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the PostgreSQL the script starts, as postgresql.conf takes it, "
                         "e.g. max_wal_size=4GB (repeatable); printed at the start")
    args = ap.parse_args(argv)
    try:
        settings = parse_pg_set(args.pg_set)
    except ValueError as e:
        ap.error(f"--pg-set: {e}")
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="outbox-markcost."))
    work.chmod(0o755)
    pg = Postgres(work / "servers", conf=pg_conf(settings))
    try:
        pg.start()
    except ServerError as e:
        hint = " (with --pg-set: its log names the setting it refused)" if settings else ""
        print(f"markcost: PostgreSQL did not start{hint}:\n{e}", file=sys.stderr)
        return 2
    try:
        import os
        with pg.connect("postgres", autocommit=True) as c:
            version = c.execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {version}{pg_settings_text(pg_settings_shown(pg, settings))}")
        print(f"load average at start: {os.getloadavg()}")
        results = []
        for rnd in range(args.rounds):
            for batch in (int(b) for b in args.batch.split(",")):
                for v in variants:
                    r = run_variant(pg, v, args.rows, batch, args.vacuum)
                    results.append(r)
                    print(f"round {rnd + 1} {v:>10} batch {batch:>5}: {r['rows_per_s']:>8,.0f} rows/s, "
                          f"PostgreSQL {r['pg_cpu_s_per_100k']:.2f} CPU s / 100k, "
                          f"HOT {r['hot_share']:.0%}", flush=True)
        print(f"load average at end: {os.getloadavg()}")
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
