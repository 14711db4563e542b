"""A topic consumer written the way a psycopg user would: the driver's default
(non-autocommit) mode, a cursor declared FOR SUBSCRIBE, FETCH with a timeout,
and offsets committed in the same transaction as the consumer's own writes.
Prints "ok" on success; any failure raises."""

import sys
import threading
import time

import psycopg

dsn = sys.argv[1]

with psycopg.connect(dsn, autocommit=True) as admin:
    admin.execute("CREATE TOPIC clicks (id bigint NOT NULL, page text) WITH (partitions = 2)")
    admin.execute("CREATE TABLE seen (id bigint PRIMARY KEY)")
    admin.execute("INSERT INTO clicks VALUES (1, '/a'), (2, '/b'), (3, '/c')")

with psycopg.connect(dsn) as consumer:
    consumer.execute("DECLARE c CURSOR FOR SUBSCRIBE clicks GROUP 'web'")
    got = consumer.execute("FETCH 10 FROM c").fetchall()
    assert len(got) == 3, got
    columns = [d.name for d in consumer.execute("FETCH 1 FROM c WITH (timeout = '0s')").description]
    assert columns[:3] == ["_partition", "_offset", "_timestamp"], columns
    for row in got:
        consumer.execute("INSERT INTO seen VALUES (%s)", (row[3],))
    consumer.execute("COMMIT OFFSETS FOR c")
    consumer.commit()

    # A FETCH that waits is woken by another connection's insert.
    def produce():
        time.sleep(0.3)
        with psycopg.connect(dsn, autocommit=True) as producer:
            producer.execute("INSERT INTO clicks VALUES (4, '/d')")

    threading.Thread(target=produce).start()
    started = time.monotonic()
    late = consumer.execute("FETCH 10 FROM c WITH (timeout = '20s')").fetchall()
    assert [r[3] for r in late] == [4], late
    assert time.monotonic() - started < 10
    consumer.rollback()

with psycopg.connect(dsn, autocommit=True) as check:
    committed = check.execute(
        "SELECT sum(next_offset) FROM sluice_catalog.consumer_offsets WHERE group_name = 'web'"
    ).fetchone()[0]
    assert committed == 3, committed
    assert check.execute("SELECT count(*) FROM seen").fetchone()[0] == 3
    lag = check.execute(
        "SELECT sum(lag) FROM sluice_catalog.consumer_lag WHERE group_name = 'web'"
    ).fetchone()[0]
    assert lag == 1, lag

print("ok")
