"""psycopg 3 in its default mode (not autocommit: BEGIN before the first statement) against
Sluice: commit keeps, rollback discards, conn.transaction() blocks, and a write conflict
surfaces as psycopg.errors.SerializationFailure. Exits non-zero on the first failed assert."""
import sys

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

dsn = sys.argv[1]

with psycopg.connect(dsn, autocommit=True) as setup:
    setup.execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(12,2))"
    )
observer = psycopg.connect(dsn, autocommit=True)


def count():
    return observer.execute("SELECT count(*) FROM accounts").fetchone()[0]


conn = psycopg.connect(dsn)
cur = conn.cursor()
cur.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (1, "ada", 100))
cur.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (2, "bob", 50))
assert conn.info.transaction_status == TransactionStatus.INTRANS, conn.info.transaction_status
assert count() == 0, "uncommitted rows visible to another session"
conn.commit()
assert conn.info.transaction_status == TransactionStatus.IDLE
assert count() == 2

cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (1,))
cur.execute("SELECT sum(balance) FROM accounts")
assert str(cur.fetchone()[0]) == "140.00"
conn.rollback()
cur.execute("SELECT id, owner, balance FROM accounts ORDER BY id")
rows = [(i, o, str(b)) for i, o, b in cur.fetchall()]
assert rows == [(1, "ada", "100.00"), (2, "bob", "50.00")], rows
conn.commit()

# An error fails the transaction until rollback.
try:
    cur.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (1, "dup", 0))
    raise AssertionError("duplicate key accepted")
except errors.UniqueViolation:
    pass
assert conn.info.transaction_status == TransactionStatus.INERROR
try:
    cur.execute("SELECT 1")
    raise AssertionError("statement ran in a failed transaction")
except errors.InFailedSqlTransaction:
    pass
conn.rollback()

with conn.transaction():
    cur.execute("DELETE FROM accounts WHERE id = %s", (2,))
assert count() == 1

# Two writers of one row: the second commit fails and can be retried.
other = psycopg.connect(dsn)
cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
other.execute("UPDATE accounts SET balance = balance + 2 WHERE id = 1")
conn.commit()
try:
    other.commit()
    raise AssertionError("conflicting commit accepted")
except errors.SerializationFailure:
    pass
other.execute("UPDATE accounts SET balance = balance + 2 WHERE id = 1")
other.commit()
balance = observer.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()[0]
assert str(balance) == "103.00", balance
print("ok")
