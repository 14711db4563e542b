"""psycopg 3 in its default mode opens a block with BEGIN before the application's first
statement, so an application's own `BEGIN ISOLATION LEVEL SERIALIZABLE` arrives inside an
open block. PostgreSQL warns and still applies the level, as no query has run yet; the
on-call doctors' write skew must then fail with SerializationFailure, as it does there.
Exits non-zero on the first failed assert; prints "ok" otherwise."""
import sys

import psycopg
from psycopg import errors

dsn = sys.argv[1]

with psycopg.connect(dsn, autocommit=True) as setup:
    setup.execute("CREATE TABLE doctors (name text PRIMARY KEY, on_call boolean NOT NULL)")
    setup.execute("INSERT INTO doctors VALUES ('alice', true), ('bob', true)")

alice = psycopg.connect(dsn)
bob = psycopg.connect(dsn)
warnings = []
for conn in (alice, bob):
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
    conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
    level = conn.execute("SHOW transaction_isolation").fetchone()[0]
    assert level == "serializable", level
    on_call = conn.execute("SELECT count(*) FROM doctors WHERE on_call").fetchone()[0]
    assert on_call == 2, on_call
assert warnings.count("there is already a transaction in progress") == 2, warnings

alice.execute("UPDATE doctors SET on_call = false WHERE name = 'alice'")
bob.execute("UPDATE doctors SET on_call = false WHERE name = 'bob'")
alice.commit()
try:
    bob.commit()
    raise AssertionError("both doctors went off call: write skew under SERIALIZABLE")
except errors.SerializationFailure:
    pass

with psycopg.connect(dsn, autocommit=True) as check:
    on_call = check.execute("SELECT count(*) FROM doctors WHERE on_call").fetchone()[0]
    assert on_call == 1, on_call

# psycopg's own way of asking for the level works the same.
conn = psycopg.connect(dsn)
conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
level = conn.execute("SHOW transaction_isolation").fetchone()[0]
assert level == "serializable", level
conn.rollback()
print("ok")
