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

# A third migration declares what ORM models declare: a serial key, a foreign key with
# ON DELETE CASCADE, UNIQUE and CHECK constraints; the application then sees PostgreSQL's
# errors with the constraint named in psycopg's diagnostics.
with psycopg.connect(dsn) as conn:
    conn.execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, "
        "account_id bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE, "
        "ref varchar(20) UNIQUE, amount numeric(10,2) CHECK (amount > 0))"
    )
    conn.execute("ALTER TABLE account ADD CONSTRAINT account_name_nonempty CHECK (name <> '')")
    conn.execute("UPDATE alembic_version SET version_num = '0003'")
    conn.commit()

with psycopg.connect(dsn) as conn:
    order_id = conn.execute(
        "INSERT INTO orders (account_id, ref, amount) VALUES (1, 'A-1', 9.50) RETURNING id"
    ).fetchone()[0]
    conn.commit()
    for sql, error, constraint in [
        ("INSERT INTO orders (account_id, amount) VALUES (42, 1)", errors.ForeignKeyViolation, "orders_account_id_fkey"),
        ("INSERT INTO orders (account_id, ref, amount) VALUES (1, 'A-1', 1)", errors.UniqueViolation, "orders_ref_key"),
        ("INSERT INTO orders (account_id, amount) VALUES (1, -3)", errors.CheckViolation, "orders_amount_check"),
        ("UPDATE account SET name = '' WHERE id = 1", errors.CheckViolation, "account_name_nonempty"),
    ]:
        try:
            conn.execute(sql)
            raise AssertionError(f"{sql} was accepted")
        except error as e:
            assert e.diag.constraint_name == constraint, (sql, e.diag.constraint_name)
            conn.rollback()
    # An upsert on the unique column, as ORMs write one.
    cur = conn.execute(
        "INSERT INTO orders (account_id, ref, amount) VALUES (1, 'A-1', 2) ON CONFLICT (ref) DO NOTHING"
    )
    assert cur.rowcount == 0, cur.rowcount
    conn.execute(
        "INSERT INTO orders (account_id, ref, amount) VALUES (1, 'A-1', 3) "
        "ON CONFLICT (ref) DO UPDATE SET amount = excluded.amount"
    )
    assert conn.execute("SELECT amount FROM orders WHERE ref = 'A-1'").fetchone()[0] == 3
    conn.commit()
    # Deleting the account takes its orders with it, in the same transaction.
    conn.execute("DELETE FROM account WHERE id = 1")
    assert conn.execute("SELECT count(*) FROM orders WHERE id = %s", (order_id,)).fetchone() == (0,)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)

print("ok")
