//! COPY moves data in and out losslessly: 100,000 rows in text and in CSV format, full of NULLs,
//! tabs, backslashes, quotes, commas, newlines and non-ASCII text, come back out byte for byte.
//! A malformed line fails the whole COPY with a data error and the connection carries on.

mod common;

use std::pin::pin;

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use common::{describe, simple_rows, TestServer};

const ROWS: i64 = 100_000;

/// Values chosen to exercise every escaping rule of both formats.
const SPECIALS: &[&str] = &[
    "tab\there",
    "back\\slash",
    "trailing\\",
    "quote\"d",
    "it's",
    "comma,separated",
    "new\nline",
    "carriage\rreturn",
    "crlf\r\nend",
    "unicode ☃ 日本語 é 🦀",
    "",
    " padded ",
    "\\N",
    "\\.",
    "NULL",
    "\"",
    ",",
];

struct Row {
    id: i64,
    name: Option<String>,
    n: Option<i32>,
    note: Option<String>,
}

fn rows() -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut ids: Vec<i64> = (1..=ROWS).collect();
    // Loading out of key order makes the sort on the way out a real check.
    ids.shuffle(&mut rng);
    ids.into_iter()
        .map(|id| {
            let name = match rng.random_range(0..10) {
                0 => None,
                1..=3 => Some(SPECIALS[rng.random_range(0..SPECIALS.len())].to_string()),
                _ => Some(format!("name-{id}")),
            };
            let n = if rng.random_range(0..5) == 0 {
                None
            } else {
                Some(rng.random::<i32>())
            };
            let note = match rng.random_range(0..4) {
                0 => None,
                1 => Some(format!(
                    "{}{}",
                    SPECIALS[rng.random_range(0..SPECIALS.len())],
                    SPECIALS[rng.random_range(0..SPECIALS.len())]
                )),
                _ => Some("plain".to_string()),
            };
            Row { id, name, n, note }
        })
        .collect()
}

/// PostgreSQL's text COPY encoding of one value.
fn text_field(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "\\N".to_string();
    };
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// PostgreSQL's CSV COPY encoding: NULL is an empty unquoted field; a value is quoted when it is
/// empty or holds the delimiter, a quote or a line break.
fn csv_field(value: Option<&str>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    if value.is_empty() || value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn encode(rows: &[Row], field: fn(Option<&str>) -> String, sep: &str) -> Vec<String> {
    rows.iter()
        .map(|r| {
            let n = r.n.map(|n| n.to_string());
            [
                field(Some(&r.id.to_string())),
                field(r.name.as_deref()),
                field(n.as_deref()),
                field(r.note.as_deref()),
            ]
            .join(sep)
        })
        .collect()
}

/// Splits CSV output into records, keeping line breaks inside quoted fields.
fn csv_records(data: &str) -> Vec<String> {
    let mut records = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in data.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '\n' if !quoted => records.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    assert!(
        current.is_empty(),
        "CSV output ends mid-record: {current:?}"
    );
    records
}

fn sorted_by_id(mut records: Vec<String>, sep: char) -> Vec<String> {
    records.sort_by_key(|r| {
        r.split(sep)
            .next()
            .and_then(|id| id.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("record without a numeric id: {r:?}"))
    });
    records
}

async fn copy_in(client: &Client, sql: &str, data: &[u8]) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    let mut sink = pin!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    sink.as_mut().finish().await
}

async fn copy_out(client: &Client, sql: &str) -> String {
    let stream = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let chunks: Vec<Bytes> = stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    String::from_utf8(chunks.concat()).expect("COPY output is UTF-8")
}

async fn round_trip(
    client: &Client,
    table: &str,
    format: &str,
    lines: Vec<String>,
    split: fn(&str) -> Vec<String>,
    sep: char,
) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, n int, note text)"
        ))
        .await
        .unwrap_or_else(|e| panic!("create {table}: {}", describe(&e)));
    let mut data = lines.join("\n");
    data.push('\n');
    let copied = copy_in(
        client,
        &format!("COPY {table} FROM STDIN{format}"),
        data.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("COPY {table} FROM STDIN{format}: {}", describe(&e)));
    assert_eq!(copied, ROWS as u64, "COPY reports every row");
    assert_eq!(
        simple_rows(client, &format!("SELECT count(*) FROM {table}")).await,
        vec![vec![Some(ROWS.to_string())]]
    );

    let out = copy_out(client, &format!("COPY {table} TO STDOUT{format}")).await;
    let got = sorted_by_id(split(&out), sep);
    let expected = sorted_by_id(lines, sep);
    assert_eq!(got.len(), expected.len(), "COPY TO returns every row");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "COPY TO{format} differs from what was loaded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_text_round_trip() {
    let server = TestServer::start();
    let client = server.client().await;
    let lines = encode(&rows(), text_field, "\t");
    round_trip(
        &client,
        "copy_text",
        "",
        lines,
        |out| out.lines().map(str::to_string).collect(),
        '\t',
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_csv_round_trip() {
    let server = TestServer::start();
    let client = server.client().await;
    let lines = encode(&rows(), csv_field, ",");
    round_trip(
        &client,
        "copy_csv",
        " (FORMAT csv)",
        lines,
        csv_records,
        ',',
    )
    .await;
}

#[tokio::test]
async fn malformed_copy_fails_whole_and_session_survives() {
    let server = TestServer::start();
    let client = server.client().await;
    client
        .batch_execute("CREATE TABLE target (id int PRIMARY KEY, n int CHECK (n <> 13))")
        .await
        .unwrap_or_else(|e| panic!("create: {}", describe(&e)));

    let cases: [(&str, &[&str]); 5] = [
        ("1\t10\n2\tabc\n", &["22P02"]),
        ("1\t10\n3\t1\t2\n", &["22P04"]),
        ("1\t10\n4\n", &["22P04"]),
        ("1\t10\n5\t99999999999\n", &["22003"]),
        ("1\t10\n6\t13\n", &["23514"]),
    ];
    for (data, codes) in cases {
        let err = match copy_in(&client, "COPY target FROM STDIN", data.as_bytes()).await {
            Ok(n) => panic!("COPY of {data:?} must fail, but it loaded {n} rows"),
            Err(e) => e,
        };
        assert!(
            err.code().is_some_and(|c| codes.contains(&c.code())),
            "COPY of {data:?}: expected SQLSTATE {codes:?}, got {}",
            describe(&err)
        );
        if codes == ["23514"] {
            assert_eq!(
                err.as_db_error().and_then(|e| e.constraint()),
                Some("target_n_check"),
                "a check violation names its constraint"
            );
        }
        assert_eq!(
            simple_rows(&client, "SELECT count(*) FROM target").await,
            vec![vec![Some("0".to_string())]],
            "a failed COPY writes none of its rows ({data:?})"
        );
    }

    let loaded = copy_in(&client, "COPY target FROM STDIN", b"1\t10\n2\t\\N\n")
        .await
        .unwrap_or_else(|e| panic!("valid COPY after errors: {}", describe(&e)));
    assert_eq!(loaded, 2);
    assert_eq!(
        simple_rows(&client, "SELECT id, n FROM target ORDER BY id").await,
        vec![
            vec![Some("1".to_string()), Some("10".to_string())],
            vec![Some("2".to_string()), None],
        ]
    );
}
