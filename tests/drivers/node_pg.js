// node-postgres (`pg`) against Sluice, written the way a Node.js service would use it: a Pool
// for queries, parameterized statements (unnamed, extended protocol), a named prepared
// statement, a transaction on a checked-out client, errors by SQLSTATE, and a topic consumed
// with a group cursor whose FETCH waits and is woken by another connection's insert.
// Prints "ok" on success; any failure exits non-zero with the reason.
"use strict";

const assert = require("node:assert/strict");
const { Client, Pool } = require(process.env.SLUICE_NODE_PG || "pg");

const config = {
  host: "127.0.0.1",
  port: Number(process.argv[2]),
  user: "sluice",
  database: "sluice",
  connectionTimeoutMillis: 10000,
};

async function expectCode(promise, code) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.code, code, `expected SQLSTATE ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  assert.fail(`expected SQLSTATE ${code}, the statement succeeded`);
}

async function sessionBasics(pool) {
  await pool.query(
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, " +
      "total numeric(10,2), paid boolean, placed timestamptz, qty int)"
  );
  for (let i = 1; i <= 5; i++) {
    const r = await pool.query(
      "INSERT INTO orders VALUES ($1, $2, $3, $4, $5, $6)",
      [i, `c${i % 2}`, (i * 10.25).toFixed(2), i % 2 === 0, new Date(Date.UTC(2026, 0, i)), i]
    );
    assert.equal(r.rowCount, 1);
    assert.equal(r.command, "INSERT");
  }
  const rows = await pool.query(
    "SELECT id, customer, total, paid, placed, qty FROM orders WHERE id = $1",
    [2]
  );
  assert.equal(rows.rows.length, 1);
  const row = rows.rows[0];
  // pg returns int8 and numeric as strings (they do not fit a JS number), int4 as a number.
  assert.equal(row.id, "2");
  assert.equal(row.customer, "c0");
  assert.equal(row.total, "20.50");
  assert.equal(row.paid, true);
  assert.equal(row.placed.toISOString(), "2026-01-02T00:00:00.000Z");
  assert.equal(row.qty, 2);
  assert.deepEqual(
    rows.fields.map((f) => f.name),
    ["id", "customer", "total", "paid", "placed", "qty"]
  );

  // A named prepared statement: parsed once per connection, then bound and executed.
  const client = await pool.connect();
  try {
    for (const id of [1, 3, 5]) {
      const r = await client.query({
        name: "order_total",
        text: "SELECT total FROM orders WHERE id = $1",
        values: [id],
      });
      assert.equal(r.rows[0].total, (id * 10.25).toFixed(2));
    }
    const grouped = await client.query(
      "SELECT customer, count(*) AS n, sum(qty) AS q FROM orders GROUP BY customer ORDER BY customer"
    );
    assert.deepEqual(
      grouped.rows.map((r) => [r.customer, r.n, String(r.q)]),
      [
        ["c0", "2", "6"],
        ["c1", "3", "9"],
      ]
    );

    // A transaction: rolled back, then committed.
    await client.query("BEGIN");
    await client.query("DELETE FROM orders WHERE id = $1", [1]);
    const inside = await client.query("SELECT count(*) AS n FROM orders");
    assert.equal(inside.rows[0].n, "4");
    await client.query("ROLLBACK");
    const after = await pool.query("SELECT count(*) AS n FROM orders");
    assert.equal(after.rows[0].n, "5");

    await client.query("BEGIN");
    await client.query("UPDATE orders SET paid = true WHERE id = $1", [1]);
    await expectCode(client.query("INSERT INTO orders (id, customer) VALUES (2, 'dup')"), "23505");
    await expectCode(client.query("SELECT 1"), "25P02");
    await client.query("ROLLBACK");
    await client.query("BEGIN");
    await client.query("UPDATE orders SET paid = true WHERE id = $1", [1]);
    await client.query("COMMIT");
    const paid = await pool.query("SELECT paid FROM orders WHERE id = 1");
    assert.equal(paid.rows[0].paid, true);
  } finally {
    client.release();
  }

  await expectCode(pool.query("SELEC 1"), "42601");
  await expectCode(pool.query("SELECT * FROM missing"), "42P01");
  await expectCode(pool.query("INSERT INTO orders (id) VALUES ($1)", ["not a number"]), "22P02");
  await expectCode(pool.query("INSERT INTO orders (id) VALUES (9)"), "23502");
  // The pool's connections still work after the errors.
  const n = await pool.query("SELECT count(*)::int AS n FROM orders");
  assert.equal(n.rows[0].n, 5);
}

async function topicConsumer(pool) {
  await pool.query("CREATE TOPIC clicks (id bigint NOT NULL, page text) WITH (partitions = 2)");
  await pool.query("CREATE TABLE seen (id bigint PRIMARY KEY)");
  const appended = await pool.query(
    "INSERT INTO clicks VALUES ($1, $2), ($3, $4), ($5, $6) RETURNING _partition, _offset",
    [1, "/a", 2, "/b", 3, "/c"]
  );
  assert.equal(appended.rows.length, 3);

  const consumer = new Client(config);
  await consumer.connect();
  try {
    await consumer.query("BEGIN");
    await consumer.query("DECLARE c CURSOR FOR SUBSCRIBE clicks GROUP 'web'");
    const got = await consumer.query("FETCH 10 FROM c");
    assert.equal(got.rows.length, 3);
    assert.deepEqual(
      got.fields.slice(0, 3).map((f) => f.name),
      ["_partition", "_offset", "_timestamp"]
    );
    for (const row of got.rows) {
      await consumer.query("INSERT INTO seen VALUES ($1)", [row.id]);
    }
    await consumer.query("COMMIT OFFSETS FOR c");
    await consumer.query("COMMIT");

    // The cursor outlives the commit (subscription cursors are held, as psql users expect).
    // A FETCH that waits is woken by another connection's insert.
    await consumer.query("BEGIN");
    const producer = new Promise((resolve) => setTimeout(resolve, 300)).then(() =>
      pool.query("INSERT INTO clicks VALUES (4, '/d')")
    );
    const started = Date.now();
    const late = await consumer.query("FETCH 10 FROM c WITH (timeout = '20s')");
    await producer;
    assert.deepEqual(
      late.rows.map((r) => r.id),
      ["4"]
    );
    assert.ok(Date.now() - started < 10000, "FETCH was not woken by the insert");
    await consumer.query("ROLLBACK");
  } finally {
    await consumer.end();
  }

  const committed = await pool.query(
    "SELECT sum(next_offset)::int AS n FROM sluice_catalog.consumer_offsets WHERE group_name = $1",
    ["web"]
  );
  assert.equal(committed.rows[0].n, 3);
  const seen = await pool.query("SELECT count(*)::int AS n FROM seen");
  assert.equal(seen.rows[0].n, 3);
  const lag = await pool.query(
    "SELECT sum(lag)::int AS n FROM sluice_catalog.consumer_lag WHERE group_name = 'web'"
  );
  assert.equal(lag.rows[0].n, 1);
}

async function main() {
  const pool = new Pool({ ...config, max: 4 });
  try {
    await sessionBasics(pool);
    await topicConsumer(pool);
  } finally {
    await pool.end();
  }
  console.log("ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
