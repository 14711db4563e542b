"""A migration the way Alembic, Django and friends run one: psycopg 3 in its default
(non-autocommit) mode, so every statement, the DDL included, runs inside the block psycopg
opens, and the migration's version row commits together with its tables. A failed migration
rolls back whole, leaving neither its tables nor its version row.
Exits non-zero on the first failed assert; prints "ok" otherwise."""
import sys

import psycopg
from psycopg import errors

dsn = sys.argv[1]

with psycopg.connect(dsn) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)")
    conn.execute("CREATE TABLE account (id bigint PRIMARY KEY, name text NOT NULL, email text)")
    conn.execute("CREATE INDEX ix_account_email ON account (email)")
    conn.execute("INSERT INTO alembic_version (version_num) VALUES ('0001')")
    conn.execute("INSERT INTO account VALUES (1, 'ada', 'ada@example.com')")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    # Another connection sees nothing of it before COMMIT.
    with psycopg.connect(dsn, autocommit=True) as other:
        try:
            other.execute("SELECT * FROM account")
            raise AssertionError("an uncommitted table was visible to another session")
        except errors.UndefinedTable:
            pass
    conn.commit()

# The second migration fails half-way: its ALTER and version bump roll back with it.
with psycopg.connect(dsn) as conn:
    conn.execute("ALTER TABLE account ADD COLUMN created_at timestamptz")
    conn.execute("UPDATE alembic_version SET version_num = '0002'")
    try:
        conn.execute("CREATE TABLE account (id bigint)")
        raise AssertionError("a second table named account was created")
    except errors.DuplicateTable:
        conn.rollback()

with psycopg.connect(dsn, autocommit=True) as check:
    assert check.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
    try:
        check.execute("SELECT created_at FROM account")
        raise AssertionError("the failed migration's column survived its rollback")
    except errors.UndefinedColumn:
        pass
    rows = check.execute("SELECT name FROM account WHERE email = 'ada@example.com'").fetchall()
    assert rows == [("ada",)], rows

print("ok")
