//! The everyday SQL session a PostgreSQL user expects, over both the simple protocol (text
//! results, command tags) and the extended protocol (parameters, binary results, prepared
//! statements reused many times).

mod common;

use std::error::Error;

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use common::{batch, describe, expect_sqlstate, simple_counts, simple_rows, TestServer};

type BoxError = Box<dyn Error + Sync + Send>;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

const CREATE_ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, \
     balance numeric(12,2) DEFAULT 0, opened date)";

/// The session from the issue, over the simple protocol: every command tag and every row as text.
#[tokio::test]
async fn accounts_session_over_simple_protocol() {
    let server = TestServer::start();
    let client = server.client().await;
    assert_eq!(simple_counts(&client, CREATE_ACCOUNTS).await, vec![0]);

    let messages = client
        .simple_query(
            "INSERT INTO accounts VALUES (1, 'ada', 40, '2024-01-02'), \
             (2, 'bob', 100.5, '2024-02-03') RETURNING id",
        )
        .await
        .unwrap_or_else(|e| panic!("insert returning: {}", describe(&e)));
    let mut returned = Vec::new();
    let mut tags = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::Row(row) => returned.push(row.get(0).map(str::to_string)),
            SimpleQueryMessage::CommandComplete(n) => tags.push(n),
            _ => {}
        }
    }
    returned.sort();
    assert_eq!(returned, vec![s("1"), s("2")]);
    assert_eq!(tags, vec![2], "INSERT ... RETURNING reports INSERT 0 2");

    let updated = simple_counts(
        &client,
        "UPDATE accounts SET balance = balance + 10 \
         WHERE id IN (SELECT id FROM accounts WHERE owner = 'ada')",
    )
    .await;
    assert_eq!(updated, vec![1], "only ada's row matches the subquery");
    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, owner, balance, opened FROM accounts ORDER BY id"
        )
        .await,
        vec![
            vec![s("1"), s("ada"), s("50.00"), s("2024-01-02")],
            vec![s("2"), s("bob"), s("100.50"), s("2024-02-03")],
        ]
    );

    assert_eq!(
        simple_counts(&client, "DELETE FROM accounts WHERE balance < 60").await,
        vec![1]
    );
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO accounts (id, owner, balance) VALUES (3, 'bob', 25.25); \
             INSERT INTO accounts (id, owner) VALUES (4, 'cy')"
        )
        .await,
        vec![1, 1]
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT owner, sum(balance) FROM accounts GROUP BY owner ORDER BY owner"
        )
        .await,
        vec![vec![s("bob"), s("125.75")], vec![s("cy"), s("0.00")]],
        "cy's balance comes from DEFAULT 0"
    );
    assert_eq!(
        simple_rows(&client, "SELECT opened FROM accounts WHERE id = 4").await,
        vec![vec![None]]
    );
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![3],
        "SELECT reports its row count"
    );
}

/// The same session with parameters, binary results, and prepared statements executed many times.
#[tokio::test]
async fn accounts_session_over_extended_protocol() {
    let server = TestServer::start();
    let client = server.client().await;
    assert_eq!(client.execute(CREATE_ACCOUNTS, &[]).await.unwrap(), 0);

    let insert = client
        .prepare("INSERT INTO accounts (id, owner, balance, opened) VALUES ($1, $2, $3, $4) RETURNING id")
        .await
        .unwrap_or_else(|e| panic!("prepare insert: {}", describe(&e)));
    let opened = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
    for id in 1..=200_i64 {
        let owner = if id % 2 == 0 { "ada" } else { "bob" };
        let balance = Decimal::new(id * 100 + 1, 2);
        let rows = client
            .query(&insert, &[&id, &owner, &balance, &opened])
            .await
            .unwrap_or_else(|e| panic!("insert {id}: {}", describe(&e)));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i64>(0), id);
    }

    let by_id = client
        .prepare("SELECT owner, balance, opened FROM accounts WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=200_i64 {
        let rows = client.query(&by_id, &[&id]).await.unwrap();
        assert_eq!(rows.len(), 1, "row {id}");
        let owner: &str = rows[0].get(0);
        let balance: Decimal = rows[0].get(1);
        let got_opened: NaiveDate = rows[0].get(2);
        assert_eq!(owner, if id % 2 == 0 { "ada" } else { "bob" });
        assert_eq!(balance, Decimal::new(id * 100 + 1, 2));
        assert_eq!(got_opened, opened);
    }
    assert!(client.query(&by_id, &[&1000_i64]).await.unwrap().is_empty());

    let bump = client
        .prepare(
            "UPDATE accounts SET balance = balance + $1 \
             WHERE id IN (SELECT id FROM accounts WHERE owner = $2 AND id <= $3)",
        )
        .await
        .unwrap_or_else(|e| panic!("prepare update: {}", describe(&e)));
    let ten = Decimal::new(10, 0);
    assert_eq!(
        client
            .execute(&bump, &[&ten, &"ada", &4_i64])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        client
            .execute(&bump, &[&ten, &"nobody", &4_i64])
            .await
            .unwrap(),
        0
    );
    let rows = client
        .query(
            "SELECT id, balance FROM accounts WHERE id <= $1 ORDER BY id",
            &[&4_i64],
        )
        .await
        .unwrap();
    let got: Vec<(i64, Decimal)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, Decimal::new(101, 2)),
            (2, Decimal::new(1201, 2)),
            (3, Decimal::new(301, 2)),
            (4, Decimal::new(1401, 2)),
        ]
    );

    let delete = client
        .prepare("DELETE FROM accounts WHERE balance < $1")
        .await
        .unwrap();
    // Balances below 60: ids 1..=59 except ada's bumped 2 and 4 stay below too (12.01, 14.01).
    assert_eq!(
        client
            .execute(&delete, &[&Decimal::new(60, 0)])
            .await
            .unwrap(),
        59
    );
    assert_eq!(
        client
            .execute(&delete, &[&Decimal::new(60, 0)])
            .await
            .unwrap(),
        0
    );

    let rows = client
        .query(
            "SELECT owner, sum(balance), count(*) FROM accounts GROUP BY owner ORDER BY owner",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, Decimal, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // ids 60..=200: ada holds the 71 even ids, bob the 70 odd ones; balance = id + 0.01.
    let ada: i64 = (60..=200).filter(|i| i % 2 == 0).sum();
    let bob: i64 = (60..=200).filter(|i| i % 2 == 1).sum();
    assert_eq!(
        got,
        vec![
            ("ada".to_string(), Decimal::new(ada * 100 + 71, 2), 71),
            ("bob".to_string(), Decimal::new(bob * 100 + 70, 2), 70),
        ]
    );
}

/// A composite primary key orders the table: a plain scan returns rows in key order, and a
/// prefix of the key selects a contiguous range.
#[tokio::test]
async fn composite_primary_key_scans_in_key_order() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE events (tenant int, seq bigint, body text, PRIMARY KEY (tenant, seq))",
    )
    .await;
    let mut expected = Vec::new();
    for tenant in [3_i32, -1, 2, 0] {
        for seq in [10_i64, -5, 7, 1000, 0] {
            expected.push((tenant, seq));
        }
    }
    let insert = client
        .prepare("INSERT INTO events VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for (tenant, seq) in &expected {
        let body = format!("{tenant}/{seq}");
        client
            .execute(&insert, &[tenant, seq, &body])
            .await
            .unwrap_or_else(|e| panic!("insert {body}: {}", describe(&e)));
    }
    expected.sort();
    let rows = client
        .query("SELECT tenant, seq, body FROM events", &[])
        .await
        .unwrap();
    let got: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, expected, "a full scan returns primary-key order");
    for r in &rows {
        let body: &str = r.get(2);
        assert_eq!(
            body,
            format!("{}/{}", r.get::<_, i32>(0), r.get::<_, i64>(1))
        );
    }

    let rows = client
        .query("SELECT seq FROM events WHERE tenant = $1", &[&2_i32])
        .await
        .unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, vec![-5, 0, 7, 10, 1000]);
    assert_eq!(
        simple_counts(
            &client,
            "UPDATE events SET body = 'x' WHERE tenant = 0 AND seq = 7"
        )
        .await,
        vec![1]
    );
    expect_sqlstate(
        client
            .execute("INSERT INTO events VALUES (0, 7, 'dup')", &[])
            .await,
        "23505",
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT body FROM events WHERE tenant = 0 AND seq = 7"
        )
        .await,
        vec![vec![s("x")]]
    );
}

/// Rows of a table without a primary key are told apart by a hidden row id, so identical rows
/// are updated and deleted individually and all of them.
#[tokio::test]
async fn table_without_primary_key() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, "CREATE TABLE notes (body text, n int)").await;
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO notes VALUES ('x', 1), ('x', 1), ('y', 2), (NULL, NULL)"
        )
        .await,
        vec![4]
    );
    assert_eq!(
        simple_counts(&client, "UPDATE notes SET n = n + 10 WHERE body = 'x'").await,
        vec![2]
    );
    assert_eq!(
        simple_rows(&client, "SELECT body, n FROM notes ORDER BY body, n").await,
        vec![
            vec![s("x"), s("11")],
            vec![s("x"), s("11")],
            vec![s("y"), s("2")],
            vec![None, None],
        ]
    );
    assert_eq!(
        simple_counts(&client, "DELETE FROM notes WHERE n = 11").await,
        vec![2]
    );
    assert_eq!(
        simple_counts(&client, "DELETE FROM notes WHERE body IS NULL").await,
        vec![1]
    );
    assert_eq!(
        simple_rows(&client, "SELECT body, n FROM notes").await,
        vec![vec![s("y"), s("2")]]
    );
    let columns = client.prepare("SELECT * FROM notes").await.unwrap();
    let names: Vec<&str> = columns.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["body", "n"], "the hidden row id stays hidden");
}

#[tokio::test]
async fn insert_select_upsert_defaults_and_ddl() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    batch(
        &client,
        "INSERT INTO accounts VALUES (1, 'ada', 10, NULL), (2, 'bob', 20, NULL), (3, 'cy', 30, NULL)",
    )
    .await;

    // INSERT ... SELECT
    batch(
        &client,
        "CREATE TABLE archive (id bigint PRIMARY KEY, owner text, balance numeric(12,2))",
    )
    .await;
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO archive SELECT id, owner, balance FROM accounts WHERE id >= 2"
        )
        .await,
        vec![2]
    );
    assert_eq!(
        simple_rows(&client, "SELECT id, owner FROM archive ORDER BY id").await,
        vec![vec![s("2"), s("bob")], vec![s("3"), s("cy")]]
    );

    // ON CONFLICT (pk) DO NOTHING inserts only the new rows.
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO accounts (id, owner) VALUES (1, 'dup'), (4, 'dee') ON CONFLICT (id) DO NOTHING"
        )
        .await,
        vec![1]
    );
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO accounts (id, owner) VALUES (1, 'dup') ON CONFLICT (id) DO NOTHING"
        )
        .await,
        vec![0]
    );
    // ON CONFLICT (pk) DO UPDATE takes values from EXCLUDED.
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO accounts (id, owner, balance) VALUES (2, 'bobby', 99), (5, 'eve', 5) \
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, balance = EXCLUDED.balance"
        )
        .await,
        vec![2]
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, owner, balance FROM accounts ORDER BY id"
        )
        .await,
        vec![
            vec![s("1"), s("ada"), s("10.00")],
            vec![s("2"), s("bobby"), s("99.00")],
            vec![s("3"), s("cy"), s("30.00")],
            vec![s("4"), s("dee"), s("0.00")],
            vec![s("5"), s("eve"), s("5.00")],
        ]
    );

    // DEFAULT now() is evaluated at insert time.
    batch(
        &client,
        "CREATE TABLE audit (id int PRIMARY KEY, at timestamptz DEFAULT now(), note text DEFAULT 'none')",
    )
    .await;
    let before = Utc::now();
    batch(&client, "INSERT INTO audit (id) VALUES (1)").await;
    let after = Utc::now();
    let row = client
        .query_one("SELECT at, note FROM audit WHERE id = 1", &[])
        .await
        .unwrap_or_else(|e| panic!("read audit: {}", describe(&e)));
    let at: DateTime<Utc> = row.get(0);
    let slack = chrono::Duration::seconds(5);
    assert!(
        at >= before - slack && at <= after + slack,
        "now() default {at} outside [{before}, {after}]"
    );
    assert_eq!(row.get::<_, &str>(1), "none");

    // ALTER TABLE ADD COLUMN: old rows read NULL, or the column's default.
    batch(&client, "ALTER TABLE archive ADD COLUMN note text").await;
    batch(&client, "ALTER TABLE archive ADD COLUMN tier int DEFAULT 7").await;
    batch(
        &client,
        "INSERT INTO archive VALUES (9, 'zed', 1, 'new', 1)",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "SELECT id, note, tier FROM archive ORDER BY id").await,
        vec![
            vec![s("2"), None, s("7")],
            vec![s("3"), None, s("7")],
            vec![s("9"), s("new"), s("1")],
        ]
    );

    // TRUNCATE empties, DROP removes, IF EXISTS tolerates absence.
    batch(&client, "TRUNCATE archive").await;
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM archive").await,
        vec![vec![s("0")]]
    );
    batch(&client, "INSERT INTO archive (id) VALUES (1)").await;
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM archive").await,
        vec![vec![s("1")]]
    );
    batch(&client, "DROP TABLE archive").await;
    expect_sqlstate(client.simple_query("SELECT * FROM archive").await, "42P01");
    batch(&client, "DROP TABLE IF EXISTS archive").await;
    expect_sqlstate(client.simple_query("DROP TABLE archive").await, "42P01");
    batch(
        &client,
        "CREATE TABLE archive (id int PRIMARY KEY, other text)",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM archive").await,
        vec![vec![s("0")]],
        "a re-created table starts empty"
    );

    // A table in its own schema.
    batch(&client, "CREATE SCHEMA ledger").await;
    batch(
        &client,
        "CREATE TABLE ledger.entries (id int PRIMARY KEY, amount numeric(10,2))",
    )
    .await;
    batch(
        &client,
        "INSERT INTO ledger.entries VALUES (1, 2.5), (2, 3.25)",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "SELECT sum(amount) FROM ledger.entries").await,
        vec![vec![s("5.75")]]
    );
    expect_sqlstate(client.simple_query("SELECT * FROM entries").await, "42P01");
}

/// The binary format of `interval`: microseconds, days, months.
#[derive(Debug, PartialEq)]
struct PgInterval {
    micros: i64,
    days: i32,
    months: i32,
}

impl ToSql for PgInterval {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.extend_from_slice(&self.micros.to_be_bytes());
        out.extend_from_slice(&self.days.to_be_bytes());
        out.extend_from_slice(&self.months.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for PgInterval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let raw: [u8; 16] = raw.try_into()?;
        let (micros, rest) = raw.split_at(8);
        let (days, months) = rest.split_at(4);
        Ok(PgInterval {
            micros: i64::from_be_bytes(micros.try_into()?),
            days: i32::from_be_bytes(days.try_into()?),
            months: i32::from_be_bytes(months.try_into()?),
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

#[derive(Debug, PartialEq)]
struct PgUuid([u8; 16]);

impl ToSql for PgUuid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for PgUuid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(PgUuid(raw.try_into()?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
}

/// JSON text; jsonb's binary form is the same text after a version byte.
#[derive(Debug, PartialEq)]
struct PgJson(String);

impl ToSql for PgJson {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for PgJson {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("jsonb without version byte 1".into()),
            }
        } else {
            raw
        };
        Ok(PgJson(std::str::from_utf8(text)?.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

const CREATE_TYPES: &str = "CREATE TABLE types (id int PRIMARY KEY, b boolean, i2 smallint, \
     i4 integer, i8 bigint, f4 real, f8 double precision, n numeric(10,3), t text, vc varchar(10), \
     c char(5), by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval, u uuid, \
     j json, jb jsonb)";

const UUID_TEXT: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
const UUID_BYTES: [u8; 16] = [
    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11,
];
const JSON_TEXT: &str = r#"{"a": [1, 2.5, "x"], "b": null}"#;

const TYPE_COLUMNS: [&str; 19] = [
    "b", "i2", "i4", "i8", "f4", "f8", "n", "t", "vc", "c", "by", "d", "tm", "ts", "tz", "iv", "u",
    "j", "jb",
];

/// The text PostgreSQL prints for each column of the row both tests write (timestamptz, whose
/// text depends on the session time zone, is compared as an instant).
fn expected_text() -> [Option<&'static str>; 19] {
    [
        Some("t"),
        Some("-32768"),
        Some("2147483647"),
        Some("-9223372036854775808"),
        Some("1.5"),
        Some("-3.25"),
        Some("12345.678"),
        Some("héllo\tworld ☃"),
        Some("abc"),
        Some("ab   "),
        Some("\\xdeadbeef"),
        Some("2024-02-29"),
        Some("13:14:15.123456"),
        Some("2024-02-29 13:14:15.5"),
        None,
        Some("1 mon 2 days 03:04:05"),
        Some(UUID_TEXT),
        Some(JSON_TEXT),
        Some(JSON_TEXT),
    ]
}

fn expected_instant() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2024, 2, 29)
        .unwrap()
        .and_hms_opt(13, 14, 15)
        .unwrap()
        .and_utc()
}

fn expected_interval() -> PgInterval {
    PgInterval {
        micros: (3 * 3600 + 4 * 60 + 5) * 1_000_000,
        days: 2,
        months: 1,
    }
}

/// Compares one binary value, recording a mismatch instead of stopping.
fn check_binary<'a, T>(
    mismatches: &mut Vec<String>,
    row: &'a tokio_postgres::Row,
    column: usize,
    want: T,
) where
    T: FromSql<'a> + PartialEq + std::fmt::Debug,
{
    let name = TYPE_COLUMNS[column];
    match row.try_get::<_, T>(column) {
        Ok(got) if got == want => {}
        Ok(got) => mismatches.push(format!("binary {name}: got {got:?}, want {want:?}")),
        Err(e) => mismatches.push(format!(
            "binary {name}: cannot decode as {} ({e}); server type {}",
            std::any::type_name::<T>(),
            row.columns()[column].type_()
        )),
    }
}

/// Reads row `id` through both protocols and returns every value that differs from PostgreSQL.
async fn check_types_row(client: &Client, id: i32, mismatches: &mut Vec<String>) {
    // Simple protocol: every value as PostgreSQL's text output.
    let sql = format!(
        "SELECT {} FROM types WHERE id = {id}",
        TYPE_COLUMNS.join(", ")
    );
    let rows = simple_rows(client, &sql).await;
    assert_eq!(rows.len(), 1, "row {id}");
    for ((name, got), want) in TYPE_COLUMNS.iter().zip(&rows[0]).zip(expected_text()) {
        if *name == "tz" {
            let text = got.clone().unwrap_or_default();
            let parsed = DateTime::parse_from_str(&format!("{text}00"), "%Y-%m-%d %H:%M:%S%.f%#z")
                .or_else(|_| DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%#z"));
            if parsed.map(|t| t.with_timezone(&Utc)) != Ok(expected_instant()) {
                mismatches.push(format!(
                    "text tz: got {text:?}, want 2024-02-29 13:14:15+00"
                ));
            }
        } else if got.as_deref() != want {
            mismatches.push(format!("text {name}: got {got:?}, want {want:?}"));
        }
    }

    // Extended protocol: every value in binary.
    let row = client
        .query_one(
            &format!(
                "SELECT {} FROM types WHERE id = $1",
                TYPE_COLUMNS.join(", ")
            ),
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("binary read of row {id}: {}", describe(&e)));
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    check_binary(mismatches, &row, 0, true);
    check_binary(mismatches, &row, 1, i16::MIN);
    check_binary(mismatches, &row, 2, i32::MAX);
    check_binary(mismatches, &row, 3, i64::MIN);
    check_binary(mismatches, &row, 4, 1.5_f32);
    check_binary(mismatches, &row, 5, -3.25_f64);
    check_binary(mismatches, &row, 6, Decimal::new(12_345_678, 3));
    check_binary(mismatches, &row, 7, "héllo\tworld ☃".to_string());
    check_binary(mismatches, &row, 8, "abc".to_string());
    check_binary(mismatches, &row, 9, "ab   ".to_string());
    check_binary(mismatches, &row, 10, vec![0xde_u8, 0xad, 0xbe, 0xef]);
    check_binary(mismatches, &row, 11, date);
    check_binary(
        mismatches,
        &row,
        12,
        NaiveTime::from_hms_micro_opt(13, 14, 15, 123_456).unwrap(),
    );
    check_binary(
        mismatches,
        &row,
        13,
        date.and_hms_milli_opt(13, 14, 15, 500).unwrap(),
    );
    check_binary(mismatches, &row, 14, expected_instant());
    check_binary(mismatches, &row, 15, expected_interval());
    check_binary(mismatches, &row, 16, PgUuid(UUID_BYTES));
    check_binary(mismatches, &row, 17, PgJson(JSON_TEXT.to_string()));
    check_binary(mismatches, &row, 18, PgJson(JSON_TEXT.to_string()));
}

/// Every listed type written as a literal (simple protocol) reads back identically through
/// both protocols. The interval is written by its own statement so that a rejected interval
/// literal does not hide the results of the other types.
#[tokio::test]
#[ignore = "known gaps: interval text input with a clock part, timestamp text trims no zeros, \
            NULL intervals encode as 00:00:00 (arrow-pg 0.16), uuid/json/varchar report as text"]
async fn types_round_trip_from_literals() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_TYPES).await;
    batch(
        &client,
        &format!(
            "INSERT INTO types VALUES (1, true, -32768, 2147483647, -9223372036854775808, 1.5, \
             -3.25, 12345.678, E'héllo\\tworld ☃', 'abc', 'ab', '\\xdeadbeef', '2024-02-29', \
             '13:14:15.123456', '2024-02-29 13:14:15.5', '2024-02-29 13:14:15+00', NULL, \
             '{UUID_TEXT}', '{JSON_TEXT}', '{JSON_TEXT}')"
        ),
    )
    .await;
    let mut mismatches = Vec::new();
    let interval = "UPDATE types SET iv = '1 mon 2 days 03:04:05' WHERE id = 1";
    if let Err(e) = client.batch_execute(interval).await {
        mismatches.push(format!("{interval}: {}", describe(&e)));
    }
    check_types_row(&client, 1, &mut mismatches).await;
    assert!(
        mismatches.is_empty(),
        "{} differences from PostgreSQL:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Every listed type written as a binary parameter (extended protocol) reads back identically
/// through both protocols.
#[tokio::test]
#[ignore = "known gaps: parameters of varchar/char/uuid/json/jsonb columns are described as text, \
            NULL intervals encode as 00:00:00 (arrow-pg 0.16)"]
async fn types_round_trip_from_binary_parameters() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_TYPES).await;
    let statement = client
        .prepare(&format!(
            "INSERT INTO types VALUES ({})",
            (1..=20)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("prepare insert: {}", describe(&e)));
    // The parameter types the server infers from the target columns.
    let declared: Vec<String> = statement.params().iter().map(Type::to_string).collect();
    let wanted = [
        "int4",
        "bool",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "text",
        "varchar",
        "bpchar",
        "bytea",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "json",
        "jsonb",
    ];
    let mut mismatches: Vec<String> = declared
        .iter()
        .zip(wanted)
        .zip(std::iter::once("id").chain(TYPE_COLUMNS))
        .filter(|((got, want), _)| got.as_str() != *want)
        .map(|((got, want), column)| format!("parameter for {column}: declared {got}, want {want}"))
        .collect();

    let id = 2_i32;
    let numeric = Decimal::new(12_345_678, 3);
    let bytes: &[u8] = &[0xde, 0xad, 0xbe, 0xef];
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let time = NaiveTime::from_hms_micro_opt(13, 14, 15, 123_456).unwrap();
    let timestamp = date.and_hms_milli_opt(13, 14, 15, 500).unwrap();
    let instant = expected_instant();
    let interval = expected_interval();
    let uuid = PgUuid(UUID_BYTES);
    let json = PgJson(JSON_TEXT.to_string());
    let params: Vec<&(dyn ToSql + Sync)> = vec![
        &id,
        &true,
        &i16::MIN,
        &i32::MAX,
        &i64::MIN,
        &1.5_f32,
        &-3.25_f64,
        &numeric,
        &"héllo\tworld ☃",
        &"abc",
        &"ab",
        &bytes,
        &date,
        &time,
        &timestamp,
        &instant,
        &interval,
        &uuid,
        &json,
        &json,
    ];
    match client.execute(&statement, &params).await {
        Ok(1) => check_types_row(&client, 2, &mut mismatches).await,
        Ok(n) => mismatches.push(format!("binary insert reported {n} rows")),
        Err(e) => mismatches.push(format!("binary insert: {}", describe(&e))),
    }
    assert!(
        mismatches.is_empty(),
        "{} differences from PostgreSQL:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn joins_aggregates_windows_and_ctes() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    batch(
        &client,
        "CREATE TABLE transfers (id bigint PRIMARY KEY, account_id bigint, amount numeric(12,2))",
    )
    .await;
    batch(
        &client,
        "INSERT INTO accounts VALUES (1, 'ada', 100, NULL), (2, 'bob', 50, NULL), \
         (3, 'ada', 10, NULL), (4, 'cy', 0, NULL)",
    )
    .await;
    batch(
        &client,
        "INSERT INTO transfers VALUES (10, 1, 5), (11, 1, 7.5), (12, 2, 1), (13, 3, 2), (14, 99, 1)",
    )
    .await;

    let rows = client
        .query(
            "SELECT a.owner, count(*), sum(t.amount) FROM accounts a \
             JOIN transfers t ON t.account_id = a.id GROUP BY a.owner ORDER BY a.owner",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("join: {}", describe(&e)));
    let got: Vec<(String, i64, Decimal)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ada".to_string(), 3, Decimal::new(1450, 2)),
            ("bob".to_string(), 1, Decimal::new(100, 2)),
        ]
    );

    assert_eq!(
        simple_rows(
            &client,
            "SELECT a.id, t.id FROM accounts a LEFT JOIN transfers t ON t.account_id = a.id \
             WHERE t.id IS NULL ORDER BY a.id"
        )
        .await,
        vec![vec![s("4"), None]]
    );

    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, row_number() OVER (PARTITION BY owner ORDER BY id), \
             sum(balance) OVER (PARTITION BY owner) FROM accounts ORDER BY id"
        )
        .await,
        vec![
            vec![s("1"), s("1"), s("110.00")],
            vec![s("2"), s("1"), s("50.00")],
            vec![s("3"), s("2"), s("110.00")],
            vec![s("4"), s("1"), s("0.00")],
        ]
    );

    assert_eq!(
        simple_rows(
            &client,
            "WITH rich AS (SELECT id, owner FROM accounts WHERE balance >= 50), \
             moved AS (SELECT account_id, sum(amount) AS total FROM transfers GROUP BY account_id) \
             SELECT r.owner, m.total FROM rich r JOIN moved m ON m.account_id = r.id ORDER BY r.id"
        )
        .await,
        vec![vec![s("ada"), s("12.50")], vec![s("bob"), s("1.00")]]
    );

    assert_eq!(
        simple_rows(
            &client,
            "SELECT owner FROM accounts WHERE id IN (SELECT account_id FROM transfers \
             WHERE amount > 1) AND EXISTS (SELECT 1 FROM transfers) ORDER BY owner, id"
        )
        .await,
        vec![vec![s("ada")], vec![s("ada")]]
    );
}

/// A primary-key equality is planned as a key-range scan, not a full scan plus filter.
#[tokio::test]
async fn explain_shows_key_range_scan() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    let plan = simple_rows(&client, "EXPLAIN SELECT * FROM accounts WHERE id = 1")
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<String>>()
        .join("\n");
    let lower = plan.to_lowercase();
    assert!(
        lower.contains("sluicescan") && lower.contains("range"),
        "EXPLAIN does not show a SluiceScan with a key range:\n{plan}"
    );
    // A prepared statement's plan is optimized before its parameter is known; the bound value
    // must still narrow the scan.
    let explain = client
        .prepare("EXPLAIN SELECT owner FROM accounts WHERE id = $1")
        .await
        .unwrap();
    let rows = client.query(&explain, &[&7i64]).await.unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(1)).collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("range=id = Int64(7)"),
        "a bound parameter does not narrow the scan:\n{plan}"
    );
    // The range is the whole key, so it applies the equality exactly: no filter re-checks it.
    assert!(
        !plan.contains("FilterExec"),
        "a point lookup re-checks its key:\n{plan}"
    );
}

/// Key equalities the scan applies exactly still select what PostgreSQL selects: a bound NULL,
/// two different values for the key, a key that is absent, and a value the key cannot hold.
#[tokio::test]
async fn exact_key_lookups_select_what_the_predicate_selects() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    batch(
        &client,
        "INSERT INTO accounts (id, owner) VALUES (1, 'ada'), (2, 'bob')",
    )
    .await;
    let lookup = client
        .prepare("SELECT owner FROM accounts WHERE id = $1")
        .await
        .unwrap();
    let owners =
        |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    assert_eq!(
        owners(client.query(&lookup, &[&2i64]).await.unwrap()),
        ["bob"]
    );
    assert!(client.query(&lookup, &[&3i64]).await.unwrap().is_empty());
    let null: Option<i64> = None;
    assert!(client.query(&lookup, &[&null]).await.unwrap().is_empty());
    for (sql, expected) in [
        ("SELECT owner FROM accounts WHERE id = 1 AND id = 2", vec![]),
        (
            "SELECT owner FROM accounts WHERE id = 1 AND id = 1",
            vec![vec![s("ada")]],
        ),
        ("SELECT owner FROM accounts WHERE id = NULL", vec![]),
        ("SELECT owner FROM accounts WHERE id = 1.5", vec![]),
        (
            "SELECT owner FROM accounts WHERE id = 1.0",
            vec![vec![s("ada")]],
        ),
        (
            "SELECT owner FROM accounts WHERE id = 2 AND owner = 'ada'",
            vec![],
        ),
        (
            "SELECT owner FROM accounts WHERE id = 2 OR id = 1 ORDER BY owner",
            vec![vec![s("ada")], vec![s("bob")]],
        ),
    ] {
        assert_eq!(simple_rows(&client, sql).await, expected, "{sql}");
    }
    batch(&client, "UPDATE accounts SET owner = 'cy' WHERE id = 2").await;
    assert_eq!(
        owners(client.query(&lookup, &[&2i64]).await.unwrap()),
        ["cy"]
    );
    batch(&client, "DELETE FROM accounts WHERE id = 1").await;
    assert!(client.query(&lookup, &[&1i64]).await.unwrap().is_empty());
}

/// SQL-level PREPARE / EXECUTE / DEALLOCATE, as a psql user writes them: typed and untyped
/// parameters, DML, a transaction block, re-planning after DDL, and PostgreSQL's errors.
#[tokio::test]
async fn sql_prepare_execute_and_deallocate() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    batch(
        &client,
        "PREPARE add (bigint, text) AS INSERT INTO accounts (id, owner) VALUES ($1, $2); \
         EXECUTE add(1, 'ada'); EXECUTE add(2, 'bob'); EXECUTE add('3', 'cy' || '!')",
    )
    .await;
    batch(
        &client,
        "PREPARE owner_of AS SELECT owner FROM accounts WHERE id = $1",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "EXECUTE owner_of(3)").await,
        vec![vec![s("cy!")]]
    );
    assert!(simple_rows(&client, "EXECUTE owner_of(9)").await.is_empty());
    // The same statement through the extended protocol, with its own parameter.
    let rows = client
        .query("EXECUTE owner_of($1)", &[&2i64])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "bob");

    batch(
        &client,
        "BEGIN; EXECUTE add(4, 'dee'); ROLLBACK; PREPARE rename AS UPDATE accounts SET owner = $2 \
         WHERE id = $1; EXECUTE rename(1, 'ada2')",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "SELECT owner FROM accounts ORDER BY id").await,
        vec![vec![s("ada2")], vec![s("bob")], vec![s("cy!")]]
    );
    // Planned before the DDL, executed after it.
    batch(&client, "ALTER TABLE accounts ADD COLUMN note text").await;
    assert_eq!(
        simple_rows(&client, "EXECUTE owner_of(1)").await,
        vec![vec![s("ada2")]]
    );

    expect_sqlstate(
        client.batch_execute("PREPARE add AS SELECT 1").await,
        "42P05",
    );
    expect_sqlstate(client.batch_execute("EXECUTE nothing").await, "26000");
    expect_sqlstate(client.batch_execute("EXECUTE add(5)").await, "42601");
    expect_sqlstate(
        client.batch_execute("EXECUTE add('five', 'x')").await,
        "22P02",
    );
    batch(&client, "DEALLOCATE add").await;
    expect_sqlstate(client.batch_execute("EXECUTE add(6, 'x')").await, "26000");
    batch(&client, "DEALLOCATE ALL").await;
    expect_sqlstate(client.batch_execute("EXECUTE owner_of(1)").await, "26000");
    // A name only the protocol knows (psycopg deallocates its statements in SQL).
    batch(&client, "DEALLOCATE PREPARE _pg3_0").await;
    batch(&client, "PREPARE one AS SELECT 1; DISCARD ALL").await;
    expect_sqlstate(client.batch_execute("EXECUTE one").await, "26000");
}

/// Prepared statements keep an optimized plan, yet `now()` is read at each execution and a
/// statement planned before a DDL sees the table as it is after it.
#[tokio::test]
async fn prepared_plans_stay_current() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, CREATE_ACCOUNTS).await;
    batch(
        &client,
        "INSERT INTO accounts (id, owner) VALUES (1, 'ada'), (2, 'bob')",
    )
    .await;
    let clock = client.prepare("SELECT now()").await.unwrap();
    let first: DateTime<Utc> = client.query_one(&clock, &[]).await.unwrap().get(0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second: DateTime<Utc> = client.query_one(&clock, &[]).await.unwrap().get(0);
    assert!(
        second > first,
        "now() did not advance: {first} then {second}"
    );
    let simple_clock = || async {
        let rows = simple_rows(&client, "SELECT now()::text").await;
        rows[0][0].clone().expect("now() is not null")
    };
    let first = simple_clock().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = simple_clock().await;
    assert!(
        second > first,
        "now() did not advance: {first} then {second}"
    );

    let point = client
        .prepare("SELECT * FROM accounts WHERE id = $1")
        .await
        .unwrap();
    for (id, owner) in [(1i64, "ada"), (2, "bob"), (1, "ada")] {
        let row = client.query_one(&point, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(1), owner);
    }
    assert!(client.query_opt(&point, &[&3i64]).await.unwrap().is_none());
    batch(
        &client,
        "ALTER TABLE accounts ADD COLUMN note text DEFAULT 'none'",
    )
    .await;
    // The client holds the old row description: PostgreSQL refuses such an execution.
    let error = client.query_one(&point, &[&2i64]).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );
    let narrow = client
        .prepare("SELECT owner FROM accounts WHERE id = $1")
        .await
        .unwrap();
    batch(&client, "ALTER TABLE accounts ADD COLUMN opened_by text").await;
    let row = client.query_one(&narrow, &[&2i64]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "bob");
    let fresh = client
        .prepare("SELECT * FROM accounts WHERE id = $1")
        .await
        .unwrap();
    let row = client.query_one(&fresh, &[&2i64]).await.unwrap();
    assert_eq!(row.get::<_, String>(4), "none");
}

/// A prepared read by key keeps its physical plan and binds each
/// execution's values into the scan: every execution reads its own key from
/// its own snapshot, and a `$n` outside the key (which cannot be kept)
/// still filters.
#[tokio::test]
async fn prepared_key_reads_bind_each_execution() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE pairs (a bigint, b bigint, v text NOT NULL, PRIMARY KEY (a, b))",
    )
    .await;
    batch(
        &client,
        "INSERT INTO pairs VALUES (1, 1, 'one-one'), (1, 2, 'one-two'), (2, 1, 'two-one')",
    )
    .await;
    let point = client
        .prepare("SELECT v FROM pairs WHERE a = $1 AND b = $2")
        .await
        .unwrap();
    let read = |a: Option<i64>, b: Option<i64>| {
        let (client, point) = (&client, &point);
        async move {
            client
                .query(point, &[&a, &b])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    for _ in 0..3 {
        assert_eq!(read(Some(1), Some(2)).await, ["one-two"]);
        assert_eq!(read(Some(2), Some(1)).await, ["two-one"]);
        assert_eq!(read(Some(1), Some(1)).await, ["one-one"]);
        assert!(read(Some(2), Some(2)).await.is_empty());
        assert!(read(None, Some(1)).await.is_empty());
    }

    // Each execution reads the snapshot of its moment, inside a block too.
    batch(&client, "BEGIN").await;
    batch(&client, "INSERT INTO pairs VALUES (2, 2, 'two-two')").await;
    assert_eq!(read(Some(2), Some(2)).await, ["two-two"]);
    batch(&client, "ROLLBACK").await;
    assert!(read(Some(2), Some(2)).await.is_empty());
    batch(
        &client,
        "UPDATE pairs SET v = 'changed' WHERE a = 1 AND b = 2",
    )
    .await;
    assert_eq!(read(Some(1), Some(2)).await, ["changed"]);

    // A filter and a limit above the scan, and a `$n` outside the key.
    let filtered = client
        .prepare("SELECT v FROM pairs WHERE a = $1 AND b = $2 AND v <> 'changed' LIMIT 1")
        .await
        .unwrap();
    let rows = client.query(&filtered, &[&1i64, &2i64]).await.unwrap();
    assert!(rows.is_empty());
    let rows = client.query(&filtered, &[&1i64, &1i64]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "one-one");
    let by_value = client
        .prepare("SELECT b FROM pairs WHERE a = $1 AND v = $2")
        .await
        .unwrap();
    for (v, b) in [("one-one", 1i64), ("changed", 2)] {
        let rows = client.query(&by_value, &[&1i64, &v]).await.unwrap();
        assert_eq!(rows.len(), 1, "{v}");
        assert_eq!(rows[0].get::<_, i64>(0), b);
    }
}

#[tokio::test]
async fn set_show_and_statement_timeout() {
    let server = TestServer::start();
    let client = server.client().await;

    let version = simple_rows(&client, "SHOW server_version").await;
    let version = version[0][0].clone().unwrap_or_default();
    assert!(
        version.starts_with("15") || version.starts_with("16"),
        "server_version {version:?}"
    );

    batch(&client, "SET statement_timeout = '50ms'").await;
    expect_timeout_within(
        &client,
        "SELECT count(*) FROM generate_series(1, 1000000000)",
        10,
    )
    .await;
    batch(&client, "SET statement_timeout = 0").await;
    assert_eq!(
        simple_rows(&client, "SELECT 1").await,
        vec![vec![s("1")]],
        "the session works after a cancelled statement"
    );
}

/// The types whose wire encoding already matches PostgreSQL round-trip exactly through the simple
/// protocol (text), the extended protocol (binary results) and binary parameters. The full list,
/// with the known gaps, is pinned by the two ignored `types_round_trip_*` tests.
#[tokio::test]
async fn supported_types_round_trip() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE st (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint, \
         f8 double precision, n numeric(10,3), t text, vc varchar(10), c char(5), by bytea, \
         d date, u uuid, j json)",
    )
    .await;
    batch(
        &client,
        &format!(
            "INSERT INTO st VALUES (1, true, -32768, 2147483647, -9223372036854775807, -3.25, \
             12345.678, 'héllo wörld ☃', 'abc', 'ab', '\\xdeadbeef', '2024-02-29', \
             '{UUID_TEXT}', '{JSON_TEXT}')"
        ),
    )
    .await;
    let text = simple_rows(
        &client,
        "SELECT b, i2, i4, i8, f8, n, t, vc, c, by, d, u, j FROM st",
    )
    .await;
    let want: Vec<Option<String>> = [
        "t",
        "-32768",
        "2147483647",
        "-9223372036854775807",
        "-3.25",
        "12345.678",
        "héllo wörld ☃",
        "abc",
        "ab   ",
        "\\xdeadbeef",
        "2024-02-29",
        UUID_TEXT,
        JSON_TEXT,
    ]
    .into_iter()
    .map(s)
    .collect();
    assert_eq!(text, vec![want]);

    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    client
        .execute(
            "INSERT INTO st (id, b, i2, i4, i8, f8, n, t, by, d) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &2_i32,
                &false,
                &7_i16,
                &8_i32,
                &9_i64,
                &1.5_f64,
                &Decimal::new(1, 3),
                &"x",
                &vec![1_u8, 2],
                &date,
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("insert with binary parameters: {}", describe(&e)));
    for (id, b, i2, i4, i8, f8, n, t, by) in [
        (
            1,
            true,
            -32768_i16,
            i32::MAX,
            -i64::MAX,
            -3.25,
            Decimal::new(12_345_678, 3),
            "héllo wörld ☃",
            vec![0xde_u8, 0xad, 0xbe, 0xef],
        ),
        (2, false, 7, 8, 9, 1.5, Decimal::new(1, 3), "x", vec![1, 2]),
    ] {
        let row = client
            .query_one(
                "SELECT b, i2, i4, i8, f8, n, t, by, d FROM st WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap_or_else(|e| panic!("binary read of row {id}: {}", describe(&e)));
        assert_eq!(row.get::<_, bool>(0), b, "row {id} b");
        assert_eq!(row.get::<_, i16>(1), i2, "row {id} i2");
        assert_eq!(row.get::<_, i32>(2), i4, "row {id} i4");
        assert_eq!(row.get::<_, i64>(3), i8, "row {id} i8");
        assert_eq!(row.get::<_, f64>(4), f8, "row {id} f8");
        assert_eq!(row.get::<_, Decimal>(5), n, "row {id} n");
        assert_eq!(row.get::<_, String>(6), t, "row {id} t");
        assert_eq!(row.get::<_, Vec<u8>>(7), by, "row {id} by");
        assert_eq!(row.get::<_, NaiveDate>(8), date, "row {id} d");
    }
}

/// A query that computes for a long time inside one batch of a join, over a Sluice table, is still
/// interrupted by statement_timeout on time, and the session carries on. (The load also names
/// generate_series' column after its alias, as PostgreSQL does.)
#[tokio::test]
async fn cpu_bound_join_is_interrupted_by_statement_timeout() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE big (id bigint PRIMARY KEY, v bigint); \
         INSERT INTO big SELECT g, g % 97 FROM generate_series(1, 20000) g",
    )
    .await;
    batch(&client, "SET statement_timeout = '300ms'").await;
    expect_timeout_within(
        &client,
        "SELECT count(*) FROM big a, big b WHERE a.v + b.v = 7",
        3,
    )
    .await;
    assert_eq!(simple_rows(&client, "SELECT 1").await, vec![vec![s("1")]]);
}

/// Runs `sql` and expects it to be cancelled by statement_timeout (57014) within `seconds`.
async fn expect_timeout_within(client: &tokio_postgres::Client, sql: &str, seconds: u64) {
    let started = std::time::Instant::now();
    expect_sqlstate(client.simple_query(sql).await, "57014");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(seconds),
        "the timeout fired only after {:?}",
        started.elapsed()
    );
}

/// Subqueries correlated by inequality, which DataFusion cannot turn into joins, run once per
/// outer row (SluiceApply), in the select list, in WHERE and in ORDER BY positions; select items
/// that DataFusion would name alike (`a, a`, two subqueries) are all returned.
#[tokio::test]
async fn correlated_subqueries_and_repeated_select_items() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE t1 (a int, b int, c int);
         INSERT INTO t1 VALUES (1, 10, 7), (2, 20, 5), (3, NULL, 9), (4, 30, 1);",
    )
    .await;
    let rows = simple_rows(
        &client,
        "SELECT a, a, (SELECT count(*) FROM t1 AS x WHERE x.b < t1.b),
                (SELECT count(*) FROM t1 AS x WHERE x.c > t1.c),
                EXISTS (SELECT 1 FROM t1 AS x WHERE x.b > t1.b)
           FROM t1 ORDER BY 1",
    )
    .await;
    let expected: Vec<Vec<Option<String>>> = [
        ["1", "1", "0", "1", "t"],
        ["2", "2", "1", "2", "t"],
        ["3", "3", "0", "0", "f"],
        ["4", "4", "2", "3", "f"],
    ]
    .iter()
    .map(|row| row.iter().map(|v| Some(v.to_string())).collect())
    .collect();
    assert_eq!(rows, expected);
    let rows = simple_rows(
        &client,
        "SELECT a FROM t1 WHERE (SELECT count(*) FROM t1 AS x WHERE x.b < t1.b) >= 1
            AND NOT EXISTS (SELECT 1 FROM t1 AS x WHERE x.c < t1.c - 3) ORDER BY a",
    )
    .await;
    assert_eq!(rows, vec![vec![Some("4".to_string())]]);
    let plan = simple_rows(
        &client,
        "EXPLAIN SELECT (SELECT count(*) FROM t1 AS x WHERE x.b < t1.b) FROM t1",
    )
    .await;
    assert!(
        format!("{plan:?}").contains("SluiceApply"),
        "plan without the apply operator: {plan:?}"
    );
}

/// An INSERT of plain literals is typed like COPY text instead of being planned by
/// DataFusion; the same values written through expressions (`(literal)`, which DataFusion
/// plans) must read back identically, and a value either path refuses gets the same error.
#[tokio::test]
async fn literal_inserts_read_back_like_planned_inserts() {
    let server = TestServer::start();
    let client = server.client().await;
    let columns = "(id int PRIMARY KEY, i2 smallint, i8 bigint, f8 float8, n numeric(10,2), \
                   t text NOT NULL, v varchar(4), c char(3), b boolean)";
    batch(&client, &format!("CREATE TABLE lit {columns}")).await;
    batch(&client, &format!("CREATE TABLE planned {columns}")).await;
    batch(&client, &format!("CREATE TABLE multi {columns}")).await;
    let rows = [
        "1, 7, 9007199254740993, 1.5, 9.99, 'ada', 'abcd', 'ab', true",
        "2, -7, '-12', '1e3', '9.999', '', NULL, NULL, false",
        "3, '32767', -9223372036854775808, -0.25, 12, 'it''s', 'x', 'abc', NULL",
        "4, NULL, 0, 'NaN', '-1.5', 'line', '', '', true",
    ];
    for row in rows {
        let planned: Vec<String> = row.split(", ").map(|v| format!("({v})")).collect();
        let tags = simple_counts(&client, &format!("INSERT INTO lit VALUES ({row})")).await;
        assert_eq!(tags, vec![1]);
        batch(
            &client,
            &format!("INSERT INTO planned VALUES ({})", planned.join(", ")),
        )
        .await;
    }
    // All rows in one statement: the rows after the first are scanned rather than parsed
    // (planner::values_scan), and must read back the same.
    let all: Vec<String> = rows.iter().map(|row| format!("({row})")).collect();
    let tags = simple_counts(
        &client,
        &format!("INSERT INTO multi VALUES {};", all.join(",\n  ")),
    )
    .await;
    assert_eq!(tags, vec![4]);
    let read = |table: &str| format!("SELECT * FROM {table} ORDER BY id");
    assert_eq!(
        simple_rows(&client, &read("lit")).await,
        simple_rows(&client, &read("planned")).await
    );
    assert_eq!(
        simple_rows(&client, &read("multi")).await,
        simple_rows(&client, &read("planned")).await
    );
    assert_eq!(
        simple_rows(&client, "SELECT n, c, v FROM lit WHERE id = 1").await,
        vec![vec![s("9.99"), s("ab "), s("abcd")]]
    );
    // Scanned rows the shortcut leaves to DataFusion (a date, a number into a text
    // column): the statement's whole tree is built from them and planned as usual.
    batch(
        &client,
        "CREATE TABLE dated (id int PRIMARY KEY, d date, t text)",
    )
    .await;
    let tags = simple_counts(
        &client,
        "INSERT INTO dated VALUES (1, '2026-01-01', 'a'), (2, '2026-12-06', 2.5), (3, NULL, -3)",
    )
    .await;
    assert_eq!(tags, vec![3]);
    assert_eq!(
        simple_rows(&client, "SELECT id, d, t FROM dated ORDER BY id").await,
        vec![
            vec![s("1"), s("2026-01-01"), s("a")],
            vec![s("2"), s("2026-12-06"), s("2.5")],
            vec![s("3"), None, s("-3")]
        ]
    );

    // Several rows in one statement, with and without a column list.
    assert_eq!(
        simple_counts(
            &client,
            "INSERT INTO lit (t, id) VALUES ('five', 5), ('six', 6), ('seven', 7)"
        )
        .await,
        vec![3]
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, t, i8 FROM lit WHERE id >= 5 ORDER BY id"
        )
        .await,
        vec![
            vec![s("5"), s("five"), None],
            vec![s("6"), s("six"), None],
            vec![s("7"), s("seven"), None]
        ]
    );

    // Refusals: the same SQLSTATE whichever way the value is written, and nothing written.
    for (columns, literal, planned, code) in [
        ("(id, t)", "(8, NULL)", "(8, (NULL))", "23502"),
        (
            "(id, t, v)",
            "(8, 'x', 'toolong')",
            "(8, 'x', ('toolong'))",
            "22001",
        ),
        ("(id, t)", "(1, 'dup')", "(1, ('dup'))", "23505"),
    ] {
        let sql = |values: &str| format!("INSERT INTO lit {columns} VALUES {values}");
        expect_sqlstate(client.batch_execute(&sql(literal)).await, code);
        expect_sqlstate(client.batch_execute(&sql(planned)).await, code);
    }
    expect_sqlstate(
        client
            .batch_execute("INSERT INTO lit (id, t) VALUES (9, 'ok'), ('x', 'bad')")
            .await,
        "22P02",
    );
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM lit").await,
        vec![vec![s("7")]]
    );

    // The extended protocol: a literal INSERT prepared once runs each time it is executed.
    let insert = client
        .prepare("INSERT INTO lit (id, t) VALUES (10, 'again')")
        .await
        .unwrap();
    assert_eq!(client.execute(&insert, &[]).await.unwrap(), 1);
    expect_sqlstate(client.execute(&insert, &[]).await, "23505");

    // Parameters, as a driver's statement cache sends them: typed by their columns (as
    // DataFusion types them for the same statement with RETURNING, which it plans), and
    // converted as a planned INSERT converts them.
    let values = "($1, $2, $3, $4, $5, $6, $7, $8), ($9, 'fixed', NULL, NULL, $5, -0.5, NULL, $8)";
    let columns = "(id, t, v, c, i8, f8, i2, b)";
    let shortcut = client
        .prepare(&format!("INSERT INTO lit {columns} VALUES {values}"))
        .await
        .unwrap();
    let planned = client
        .prepare(&format!(
            "INSERT INTO planned {columns} VALUES {values} RETURNING id"
        ))
        .await
        .unwrap();
    assert_eq!(shortcut.params(), planned.params());
    assert_eq!(shortcut.params()[0], tokio_postgres::types::Type::INT4);
    assert_eq!(shortcut.params()[4], tokio_postgres::types::Type::INT8);
    let run = |id: i32, t: Option<&'static str>, v: &'static str| {
        let (shortcut, planned, client) = (&shortcut, &planned, &client);
        async move {
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 9] =
                [&id, &t, &v, &"a", &-42i64, &2.5f64, &7i16, &true, &(id + 1)];
            (
                client.execute(shortcut, &args).await,
                client
                    .query(planned, &args)
                    .await
                    .map(|rows| rows.len() as u64),
            )
        }
    };
    let (a, b) = run(20, Some("twenty"), "four").await;
    assert_eq!((a.unwrap(), b.unwrap()), (2, 2));
    let (a, b) = run(22, Some("x"), "toolong").await;
    expect_sqlstate(a, "22001");
    expect_sqlstate(b, "22001");
    let (a, b) = run(24, None, "ok").await;
    expect_sqlstate(a, "23502");
    expect_sqlstate(b, "23502");
    let (a, b) = run(20, Some("again"), "dup").await;
    expect_sqlstate(a, "23505");
    expect_sqlstate(b, "23505");
    let read = |table: &str| format!("SELECT * FROM {table} WHERE id >= 20 ORDER BY id");
    let written = simple_rows(&client, &read("lit")).await;
    assert_eq!(written, simple_rows(&client, &read("planned")).await);
    assert_eq!(
        written,
        vec![
            vec![
                s("20"),
                s("7"),
                s("-42"),
                s("2.5"),
                None,
                s("twenty"),
                s("four"),
                s("a  "),
                s("t")
            ],
            vec![
                s("21"),
                None,
                s("-42"),
                s("-0.5"),
                None,
                s("fixed"),
                None,
                None,
                s("t")
            ],
        ]
    );
}
