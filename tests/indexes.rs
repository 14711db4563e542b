//! Secondary indexes: CREATE INDEX builds online while other sessions write, every kind of
//! write keeps the entries exact, scans use the index (visible in EXPLAIN), and the index
//! survives a crash. "Exact" is checked by comparing every index lookup with the same
//! predicate written so that no index can serve it (`a + 0 = k`).

mod common;

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use common::{batch, describe, expect_sqlstate, simple_rows, TestServer};

async fn plan(client: &Client, sql: &str) -> String {
    simple_rows(client, &format!("EXPLAIN {sql}"))
        .await
        .into_iter()
        .map(|row| row[1].clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// For every value of `a` (and NULL-free values beyond), the ids the index returns equal the
/// ids a full scan returns.
async fn assert_index_exact(client: &Client, values: std::ops::Range<i32>) {
    assert!(
        plan(client, "SELECT id FROM t WHERE a = 3")
            .await
            .contains("index t_a"),
        "the lookup does not use the index:\n{}",
        plan(client, "SELECT id FROM t WHERE a = 3").await
    );
    for k in values {
        let by_index = simple_rows(
            client,
            &format!("SELECT id FROM t WHERE a = {k} ORDER BY id"),
        )
        .await;
        let by_scan = simple_rows(
            client,
            &format!("SELECT id FROM t WHERE a + 0 = {k} ORDER BY id"),
        )
        .await;
        assert_eq!(by_index, by_scan, "index and table disagree for a = {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_keeps_the_index_exact_and_it_survives_a_crash() {
    let mut server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE t (id bigint PRIMARY KEY, a int, note text);
         INSERT INTO t SELECT v, v % 7, 'n' || v FROM generate_series(1, 300) AS g(v);
         CREATE INDEX t_a ON t (a);",
    )
    .await;
    assert_index_exact(&client, 0..8).await;

    // Updates that change the indexed value, move rows to new keys, leave it alone.
    batch(
        &client,
        "UPDATE t SET a = a + 1 WHERE id % 3 = 0;
         UPDATE t SET id = id + 1000 WHERE id <= 20;
         UPDATE t SET note = 'touched' WHERE a = 2;
         DELETE FROM t WHERE a = 5;
         INSERT INTO t VALUES (5000, 5, 'new'), (5001, NULL, 'null');
         INSERT INTO t VALUES (1001, 6, 'x') ON CONFLICT (id) DO NOTHING;
         INSERT INTO t VALUES (9000, 6, 'x') ON CONFLICT (id) DO NOTHING;
         INSERT INTO t VALUES (1002, 0, 'x'), (9001, 1, 'y') ON CONFLICT (id) DO UPDATE SET a = excluded.a;",
    )
    .await;
    assert_index_exact(&client, 0..9).await;

    // COPY writes through the same path.
    let sink = client
        .copy_in::<_, Bytes>("COPY t (id, a, note) FROM STDIN")
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    let rows: String = (20_000..20_500)
        .map(|i| format!("{i}\t{}\tc\n", i % 4))
        .collect();
    let mut sink = pin!(sink);
    sink.send(Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 500);
    assert_index_exact(&client, 0..9).await;

    drop(client);
    server.kill9();
    server.start_again();
    let client = server.client().await;
    assert_index_exact(&client, 0..9).await;

    // DROP INDEX: the planner stops using it and the name is free again.
    batch(&client, "DROP INDEX t_a").await;
    assert!(plan(&client, "SELECT id FROM t WHERE a = 3")
        .await
        .contains("range=full"));
    batch(&client, "CREATE INDEX t_a ON t (a DESC)").await;
    assert_index_exact(&client, 0..9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_builds_online_while_others_write() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE t (id bigint PRIMARY KEY, a int, note text);
         INSERT INTO t SELECT v, v % 11, 'n' FROM generate_series(1, 6000) AS g(v);",
    )
    .await;
    // Writers insert, update and delete throughout the build; statements planned before a
    // definition change fail with 40001 and are retried, as a client would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let client = server.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = 100_000 * (w + 1) + i;
                let statements = [
                    format!("INSERT INTO t VALUES ({id}, {}, 'w')", i % 11),
                    format!("UPDATE t SET a = a + 1 WHERE id = {}", (i * 37) % 6000 + 1),
                    format!("DELETE FROM t WHERE id = {}", (i * 53) % 6000 + 1),
                ];
                for sql in &statements {
                    match client.batch_execute(sql).await {
                        Ok(()) => {}
                        Err(e) if e.code().map(|c| c.code()) == Some("40001") => {}
                        Err(e) => panic!("{sql}: {}", describe(&e)),
                    }
                }
            }
            i
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    batch(&client, "CREATE INDEX t_a ON t (a)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert!(written > 0, "the writers made no progress");
    assert_index_exact(&client, 0..25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_statements_report_postgres_errors() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE t (id int PRIMARY KEY, a int); CREATE INDEX t_a ON t (a);",
    )
    .await;
    expect_sqlstate(
        client.batch_execute("CREATE INDEX t_a ON t (id)").await,
        "42P07",
    );
    expect_sqlstate(
        client.batch_execute("CREATE INDEX t ON t (id)").await,
        "42P07",
    );
    expect_sqlstate(
        client.batch_execute("CREATE INDEX x ON t (nope)").await,
        "42703",
    );
    expect_sqlstate(
        client.batch_execute("CREATE INDEX x ON missing (a)").await,
        "42P01",
    );
    expect_sqlstate(
        client
            .batch_execute("CREATE UNIQUE INDEX x ON t (a) WHERE a > 0")
            .await,
        "0A000",
    );
    expect_sqlstate(
        client.batch_execute("CREATE INDEX x ON t ((a + 1))").await,
        "0A000",
    );
    expect_sqlstate(
        client
            .batch_execute("CREATE INDEX x ON t (a) WHERE a > 0")
            .await,
        "0A000",
    );
    expect_sqlstate(client.batch_execute("DROP INDEX nope").await, "42704");
    batch(
        &client,
        "CREATE INDEX IF NOT EXISTS t_a ON t (a); DROP INDEX IF EXISTS nope; CREATE INDEX ON t (a);",
    )
    .await;
    // The generated name follows PostgreSQL's pattern.
    batch(&client, "DROP INDEX t_a_idx").await;
    // DROP TABLE removes its indexes' names with it.
    batch(&client, "DROP TABLE t; CREATE TABLE t_a (x int)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_constraints_admit_one_of_concurrent_duplicates() {
    let server = TestServer::start();
    let setup = server.client().await;
    batch(
        &setup,
        "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE, org int, handle text, \
         CONSTRAINT users_org_handle UNIQUE (org, handle))",
    )
    .await;
    // Two sessions insert the same email at once, twenty times: one wins each.
    let (a, b) = (server.client().await, server.client().await);
    for round in 0..20 {
        let email = format!("u{round}@x");
        let insert = "INSERT INTO users (email, org, handle) VALUES ($1, 1, $2)";
        let handle_a = format!("a{round}");
        let handle_b = format!("b{round}");
        let (params_a, params_b): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 2]) =
            ([&email, &handle_a], [&email, &handle_b]);
        let (first, second) =
            tokio::join!(a.execute(insert, &params_a), b.execute(insert, &params_b));
        let outcomes = [first, second];
        let won = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        let lost = outcomes.into_iter().find_map(Result::err).unwrap();
        let db = lost.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "23505", "{}", describe(&lost));
        assert_eq!(
            db.message(),
            "duplicate key value violates unique constraint \"users_email_key\""
        );
        assert_eq!(
            db.detail(),
            Some(format!("Key (email)=({email}) already exists.").as_str())
        );
        assert_eq!(
            (db.schema(), db.table(), db.constraint()),
            (Some("public"), Some("users"), Some("users_email_key"))
        );
    }
    // A multi-column constraint; NULLs never collide; counts are of rows.
    let inserted = setup
        .execute(
            "INSERT INTO users (email, org, handle) VALUES (NULL, 1, NULL), (NULL, 1, NULL), ('n@x', 2, 'a0')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 3);
    expect_sqlstate(
        setup
            .execute(
                "UPDATE users SET org = 2, handle = 'a0' WHERE email = 'u1@x'",
                &[],
            )
            .await,
        "23505",
    );
    // Swapping values in one statement is not a duplicate.
    batch(
        &setup,
        "UPDATE users SET email = CASE email WHEN 'u0@x' THEN 'u1@x' ELSE 'u0@x' END \
         WHERE email IN ('u0@x', 'u1@x')",
    )
    .await;
    let rows = simple_rows(&setup, "SELECT count(*) FROM users").await;
    assert_eq!(rows[0][0].as_deref(), Some("23"));
    // Alembic's create_unique_constraint: an ALTER TABLE that builds the index.
    batch(
        &setup,
        "CREATE TABLE tags (id int PRIMARY KEY, label text, kind text); \
         INSERT INTO tags VALUES (1, 'a', 'x'), (2, 'b', 'x'); \
         ALTER TABLE tags ADD CONSTRAINT uq_tags_label UNIQUE (label)",
    )
    .await;
    let duplicate = setup
        .execute("INSERT INTO tags VALUES (3, 'a', 'y')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        duplicate.as_db_error().and_then(|e| e.constraint()),
        Some("uq_tags_label")
    );
    // Over duplicates the constraint is refused, as its index build is.
    expect_sqlstate(
        setup
            .batch_execute("ALTER TABLE tags ADD UNIQUE (kind)")
            .await,
        "23505",
    );
}
