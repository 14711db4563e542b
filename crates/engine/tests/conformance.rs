//! One conformance suite for every [`Engine`]: each case below runs against
//! a fresh `MemoryEngine` and a fresh `RocksEngine` in a temporary
//! directory, so the two implementations cannot drift apart. RocksDB-only
//! behaviour (reopening, stats) is at the end.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::thread;

use rand::Rng;

use sluice_engine::{
    Durability, Engine, KeyRange, Keyspace, MemoryEngine, RocksConfig, RocksEngine, WriteBatch,
};

fn memory_engine() -> (Arc<dyn Engine>, Option<tempfile::TempDir>) {
    (MemoryEngine::new(), None)
}

fn rocks_engine() -> (Arc<dyn Engine>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut config = RocksConfig::new(dir.path().join("db"));
    config.block_cache_bytes = 8 << 20;
    let engine = RocksEngine::open(config).expect("open rocksdb");
    (engine, Some(dir))
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $case() {
                    let (engine, _dir) = super::memory_engine();
                    super::$case(engine);
                }
            )*
        }
        mod rocks {
            $(
                #[test]
                fn $case() {
                    let (engine, _dir) = super::rocks_engine();
                    super::$case(engine);
                }
            )*
        }
    };
}

conformance!(
    put_get_delete,
    keyspaces_are_separate,
    batch_applies_in_order_and_across_keyspaces,
    batches_are_atomic_to_concurrent_snapshots,
    delete_range_removes_half_open_range,
    scan_honours_every_bound_combination_and_limit,
    scan_pages_with_resume_after,
    snapshot_does_not_see_later_writes,
    snapshot_outlives_engine_handle_and_crosses_threads,
    prefix_ranges_include_ff_prefixes,
);

fn put(engine: &dyn Engine, keyspace: Keyspace, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(keyspace, key, value);
    engine.write(batch, Durability::Buffered).expect("write");
}

fn get(engine: &dyn Engine, keyspace: Keyspace, key: &[u8]) -> Option<Vec<u8>> {
    engine.get(keyspace, key).expect("get")
}

fn keys(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.clone()).collect()
}

/// A written value is read back, overwritten, and gone after a delete;
/// empty values are values, not absence.
fn put_get_delete(engine: Arc<dyn Engine>) {
    let e = engine.as_ref();
    assert_eq!(get(e, Keyspace::Data, b"a"), None);
    put(e, Keyspace::Data, b"a", b"1");
    assert_eq!(get(e, Keyspace::Data, b"a"), Some(b"1".to_vec()));
    put(e, Keyspace::Data, b"a", b"2");
    assert_eq!(get(e, Keyspace::Data, b"a"), Some(b"2".to_vec()));
    put(e, Keyspace::Data, b"empty", b"");
    assert_eq!(get(e, Keyspace::Data, b"empty"), Some(Vec::new()));

    let mut batch = WriteBatch::new();
    batch.delete(Keyspace::Data, b"a".to_vec());
    batch.delete(Keyspace::Data, b"never-written".to_vec());
    engine.write(batch, Durability::Sync).unwrap();
    assert_eq!(get(e, Keyspace::Data, b"a"), None);
    assert_eq!(get(e, Keyspace::Data, b"empty"), Some(Vec::new()));
    engine.sync().unwrap();
}

/// The same key in each keyspace holds its own value, and scans and
/// deletes stay within one keyspace.
fn keyspaces_are_separate(engine: Arc<dyn Engine>) {
    let e = engine.as_ref();
    for ks in Keyspace::ALL {
        put(e, ks, b"k", ks.name().as_bytes());
    }
    for ks in Keyspace::ALL {
        assert_eq!(get(e, ks, b"k"), Some(ks.name().as_bytes().to_vec()));
        assert_eq!(e.scan(ks, &KeyRange::all(), 10).unwrap().len(), 1);
    }
    let mut batch = WriteBatch::new();
    batch.delete(Keyspace::Meta, b"k".to_vec());
    batch.delete_range(Keyspace::RaftLog, b"".to_vec(), b"z".to_vec());
    e.write(batch, Durability::Sync).unwrap();
    assert_eq!(get(e, Keyspace::Data, b"k"), Some(b"data".to_vec()));
    assert_eq!(get(e, Keyspace::RaftLog, b"k"), None);
    assert_eq!(get(e, Keyspace::Meta, b"k"), None);
}

/// Operations in one batch apply in order: a later op sees an earlier one.
fn batch_applies_in_order_and_across_keyspaces(engine: Arc<dyn Engine>) {
    let e = engine.as_ref();
    let mut batch = WriteBatch::new();
    batch.put(Keyspace::Data, b"x", b"1");
    batch.put(Keyspace::Meta, b"applied", b"7");
    batch.delete(Keyspace::Data, b"x".to_vec());
    batch.put(Keyspace::Data, b"y", b"1");
    batch.delete_range(Keyspace::Data, b"y".to_vec(), b"z".to_vec());
    batch.put(Keyspace::Data, b"y", b"2");
    batch.put(Keyspace::RaftLog, b"entry", b"e");
    assert_eq!(batch.len(), 7);
    e.write(batch, Durability::Sync).unwrap();
    assert_eq!(get(e, Keyspace::Data, b"x"), None);
    assert_eq!(get(e, Keyspace::Data, b"y"), Some(b"2".to_vec()));
    assert_eq!(get(e, Keyspace::Meta, b"applied"), Some(b"7".to_vec()));
    assert_eq!(get(e, Keyspace::RaftLog, b"entry"), Some(b"e".to_vec()));
    e.write(WriteBatch::new(), Durability::Sync).unwrap();
}

/// A snapshot never sees half a batch, whichever keyspaces it spans.
fn batches_are_atomic_to_concurrent_snapshots(engine: Arc<dyn Engine>) {
    let writer = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || {
            for i in 0u32..300 {
                let v = i.to_be_bytes();
                let mut batch = WriteBatch::new();
                batch.put(Keyspace::Data, b"row", v);
                batch.put(Keyspace::Meta, b"applied", v);
                batch.delete(Keyspace::RaftLog, i.wrapping_sub(1).to_be_bytes().to_vec());
                batch.put(Keyspace::RaftLog, v, v);
                let durability = if i % 2 == 0 {
                    Durability::Buffered
                } else {
                    Durability::Sync
                };
                engine.write(batch, durability).unwrap();
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() || checked == 0 {
        let snap = engine.snapshot();
        let data = snap.get(Keyspace::Data, b"row").unwrap();
        let meta = snap.get(Keyspace::Meta, b"applied").unwrap();
        assert_eq!(data, meta);
        let log = snap.scan(Keyspace::RaftLog, &KeyRange::all(), 10).unwrap();
        match data {
            None => assert!(log.is_empty()),
            Some(v) => assert_eq!(log, vec![(v.clone(), v)]),
        }
        checked += 1;
    }
    writer.join().unwrap();
    assert_eq!(
        get(engine.as_ref(), Keyspace::Data, b"row"),
        Some(299u32.to_be_bytes().to_vec())
    );
}

/// `delete_range` removes `[start, end)`: start included, end kept, keys
/// outside untouched; an empty or inverted range deletes nothing.
fn delete_range_removes_half_open_range(engine: Arc<dyn Engine>) {
    let e = engine.as_ref();
    for k in [&b"a"[..], b"b", b"b\x00", b"ba", b"c", b"d"] {
        put(e, Keyspace::Data, k, b"v");
    }
    let mut batch = WriteBatch::new();
    batch.delete_range(Keyspace::Data, b"b".to_vec(), b"c".to_vec());
    batch.delete_range(Keyspace::Data, b"d".to_vec(), b"d".to_vec());
    batch.delete_range(Keyspace::Data, b"z".to_vec(), b"a".to_vec());
    e.write(batch, Durability::Sync).unwrap();
    let left = keys(&e.scan(Keyspace::Data, &KeyRange::all(), 100).unwrap());
    assert_eq!(left, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);

    // A range deletion followed by a put of a key inside it, in a later batch.
    let mut batch = WriteBatch::new();
    batch.delete_range(Keyspace::Data, b"".to_vec(), b"\xff".to_vec());
    e.write(batch, Durability::Buffered).unwrap();
    assert!(e
        .scan(Keyspace::Data, &KeyRange::all(), 100)
        .unwrap()
        .is_empty());
    put(e, Keyspace::Data, b"c", b"again");
    assert_eq!(get(e, Keyspace::Data, b"c"), Some(b"again".to_vec()));
}

const SCAN_KEYS: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"a",
    b"a\x00",
    b"ab",
    b"b",
    b"b\xff",
    b"\xff\xff",
];

/// Bounds that fall on keys, between keys, and outside every key.
const SCAN_BOUNDS: [&[u8]; 9] = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"a",
    b"a\x00",
    b"aa",
    b"b",
    b"c",
    b"\xff\xff\xff",
];

fn bounds() -> Vec<Bound<Vec<u8>>> {
    let mut out = vec![Bound::Unbounded];
    for b in SCAN_BOUNDS {
        out.push(Bound::Included(b.to_vec()));
        out.push(Bound::Excluded(b.to_vec()));
    }
    out
}

/// Every start bound against every end bound, compared with the model
/// (`KeyRange::contains` over a sorted map), at several limits, on the
/// engine and on a snapshot. Inverted ranges are empty, never an error.
fn scan_honours_every_bound_combination_and_limit(engine: Arc<dyn Engine>) {
    let mut model = BTreeMap::new();
    let mut batch = WriteBatch::new();
    for (i, k) in SCAN_KEYS.iter().enumerate() {
        batch.put(Keyspace::Data, *k, vec![i as u8]);
        model.insert(k.to_vec(), vec![i as u8]);
    }
    // Neighbours in other keyspaces must never leak into the scan.
    batch.put(Keyspace::Meta, b"a", b"meta");
    batch.put(Keyspace::RaftLog, b"a\x00", b"log");
    engine.write(batch, Durability::Sync).unwrap();
    let snap = engine.snapshot();

    for start in bounds() {
        for end in bounds() {
            let range = KeyRange {
                start: start.clone(),
                end: end.clone(),
            };
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| range.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for limit in [0, 1, 2, 100, usize::MAX] {
                let want: Vec<_> = want.iter().take(limit).cloned().collect();
                let got = engine.scan(Keyspace::Data, &range, limit).unwrap();
                assert_eq!(got, want, "engine scan {range:?} limit {limit}");
                let got = snap.scan(Keyspace::Data, &range, limit).unwrap();
                assert_eq!(got, want, "snapshot scan {range:?} limit {limit}");
            }
        }
    }
}

/// Paging with `resume_after` visits every key once, in order, for any page
/// size, including pages that end exactly at the range's end.
fn scan_pages_with_resume_after(engine: Arc<dyn Engine>) {
    let mut batch = WriteBatch::new();
    let all: Vec<Vec<u8>> = (0u16..50).map(|i| i.to_be_bytes().to_vec()).collect();
    for k in &all {
        batch.put(Keyspace::RaftLog, k.clone(), b"v");
    }
    engine.write(batch, Durability::Sync).unwrap();
    let snap = engine.snapshot();

    let range = KeyRange::half_open(5u16.to_be_bytes().to_vec(), 45u16.to_be_bytes().to_vec());
    let want: Vec<Vec<u8>> = all[5..45].to_vec();
    for page in [1, 3, 10, 40, 41] {
        let mut seen = Vec::new();
        let mut next = range.clone();
        let mut pages = 0;
        loop {
            let got = snap.scan(Keyspace::RaftLog, &next, page).unwrap();
            assert!(got.len() <= page);
            seen.extend(keys(&got));
            pages += 1;
            match got.last() {
                Some((last, _)) if got.len() == page => next = range.resume_after(last),
                _ => break,
            }
        }
        assert_eq!(seen, want, "page size {page}");
        assert_eq!(pages, want.len() / page + 1, "page size {page}");
    }
}

/// A snapshot keeps reading the state it was taken at while the engine
/// moves on through puts, deletes and range deletes.
fn snapshot_does_not_see_later_writes(engine: Arc<dyn Engine>) {
    let e = engine.as_ref();
    put(e, Keyspace::Data, b"a", b"1");
    put(e, Keyspace::Data, b"b", b"1");
    put(e, Keyspace::Meta, b"m", b"1");
    let snap = engine.snapshot();

    let mut batch = WriteBatch::new();
    batch.put(Keyspace::Data, b"a", b"2");
    batch.delete(Keyspace::Meta, b"m".to_vec());
    batch.delete_range(Keyspace::Data, b"b".to_vec(), b"c".to_vec());
    batch.put(Keyspace::Data, b"new", b"2");
    e.write(batch, Durability::Sync).unwrap();
    let later = engine.snapshot();

    assert_eq!(snap.get(Keyspace::Data, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(snap.get(Keyspace::Data, b"b").unwrap(), Some(b"1".to_vec()));
    assert_eq!(snap.get(Keyspace::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    assert_eq!(snap.get(Keyspace::Data, b"new").unwrap(), None);
    assert_eq!(
        keys(&snap.scan(Keyspace::Data, &KeyRange::all(), 10).unwrap()),
        vec![b"a".to_vec(), b"b".to_vec()]
    );

    assert_eq!(
        later.get(Keyspace::Data, b"a").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(later.get(Keyspace::Meta, b"m").unwrap(), None);
    assert_eq!(
        keys(&later.scan(Keyspace::Data, &KeyRange::all(), 10).unwrap()),
        vec![b"a".to_vec(), b"new".to_vec()]
    );
    // The engine itself reads the latest state.
    assert_eq!(get(e, Keyspace::Data, b"b"), None);
}

/// A snapshot is `'static + Send + Sync`: it can move to another thread and
/// keep reading after every engine handle is dropped.
fn snapshot_outlives_engine_handle_and_crosses_threads(engine: Arc<dyn Engine>) {
    put(engine.as_ref(), Keyspace::Data, b"k", b"v");
    let snap = engine.snapshot();
    put(engine.as_ref(), Keyspace::Data, b"k", b"w");
    drop(engine);
    let reader = thread::spawn(move || {
        (
            snap.get(Keyspace::Data, b"k").unwrap(),
            snap.scan(Keyspace::Data, &KeyRange::all(), 5).unwrap(),
        )
    });
    let (value, pairs) = reader.join().unwrap();
    assert_eq!(value, Some(b"v".to_vec()));
    assert_eq!(pairs, vec![(b"k".to_vec(), b"v".to_vec())]);
}

/// `KeyRange::prefix` selects exactly the keys that start with the prefix,
/// including prefixes that end in (or are all) 0xff, whose successor is
/// shorter or does not exist.
fn prefix_ranges_include_ff_prefixes(engine: Arc<dyn Engine>) {
    let stored: [&[u8]; 10] = [
        b"",
        b"\x01",
        b"\x01\xff",
        b"\x01\xff\x00",
        b"\x02",
        b"\xfe\xff",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"\xff\xff\x01",
    ];
    let mut batch = WriteBatch::new();
    for k in stored {
        batch.put(Keyspace::Data, k, b"v");
    }
    engine.write(batch, Durability::Sync).unwrap();
    let snap = engine.snapshot();
    let prefixes: [&[u8]; 7] = [
        b"",
        b"\x01",
        b"\x01\xff",
        b"\xfe",
        b"\xff",
        b"\xff\xff",
        b"\xff\xff\xff",
    ];
    for prefix in prefixes {
        let want: Vec<Vec<u8>> = stored
            .iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| k.to_vec())
            .collect();
        let range = KeyRange::prefix(prefix);
        assert_eq!(
            keys(&engine.scan(Keyspace::Data, &range, 100).unwrap()),
            want,
            "prefix {prefix:?}"
        );
        assert_eq!(
            keys(&snap.scan(Keyspace::Data, &range, 100).unwrap()),
            want,
            "prefix {prefix:?}"
        );
    }
}

// RocksDB only.

/// Data written with `Durability::Sync` (and buffered data followed by a
/// clean close) is there after the engine is dropped and reopened.
#[test]
fn rocks_reopen_keeps_written_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let engine = RocksEngine::open(RocksConfig::new(&path)).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Keyspace::Data, b"synced", b"1");
        batch.put(Keyspace::Meta, b"vote", b"term-3");
        engine.write(batch, Durability::Sync).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Keyspace::RaftLog, b"buffered", b"2");
        engine.write(batch, Durability::Buffered).unwrap();
    }
    let engine = RocksEngine::open(RocksConfig::new(&path)).unwrap();
    assert_eq!(
        engine.get(Keyspace::Data, b"synced").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        engine.get(Keyspace::Meta, b"vote").unwrap(),
        Some(b"term-3".to_vec())
    );
    assert_eq!(
        engine.get(Keyspace::RaftLog, b"buffered").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(engine.get(Keyspace::Data, b"buffered").unwrap(), None);
}

/// The database stays locked while any snapshot holds it, and opens again
/// once the last one is gone.
#[test]
fn rocks_closes_when_last_snapshot_drops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let engine = RocksEngine::open(RocksConfig::new(&path)).unwrap();
    let snap = engine.snapshot();
    drop(engine);
    let err = RocksEngine::open(RocksConfig::new(&path)).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    drop(snap);
    RocksEngine::open(RocksConfig::new(&path)).unwrap();
}

/// A column family this version does not know (a newer version's) does not
/// stop the database from opening.
#[test]
fn rocks_opens_with_unknown_column_family() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, &path, ["data", "from_the_future"]).unwrap();
        db.put_cf(db.cf_handle("data").unwrap(), b"k", b"v")
            .unwrap();
    }
    let engine = RocksEngine::open(RocksConfig::new(&path)).unwrap();
    assert_eq!(
        engine.get(Keyspace::Data, b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

/// Opening a path that is a file reports a storage error naming the path.
#[test]
fn rocks_open_failure_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-dir");
    std::fs::write(&path, b"x").unwrap();
    let err = RocksEngine::open(RocksConfig::new(&path)).unwrap_err();
    assert!(
        matches!(err, sluice_engine::Error::Storage(ref msg) if msg.contains("not-a-dir")),
        "{err}"
    );
    assert!(!err.is_disk_full());
}

/// Stats report the documented RocksDB figures, and they reflect writes.
#[test]
fn rocks_stats_report_named_figures() {
    let (engine, _dir) = rocks_engine();
    let mut batch = WriteBatch::new();
    for i in 0u32..1000 {
        batch.put(Keyspace::Data, i.to_be_bytes(), vec![7u8; 100]);
    }
    engine.write(batch, Durability::Sync).unwrap();
    let stats: BTreeMap<String, f64> = engine.stats().into_iter().collect();
    for name in [
        "rocksdb_estimate_live_data_size_bytes",
        "rocksdb_block_cache_usage_bytes",
        "rocksdb_memtable_size_bytes",
        "rocksdb_running_compactions",
        "rocksdb_estimate_num_keys",
    ] {
        assert!(stats.contains_key(name), "missing {name} in {stats:?}");
    }
    assert!(stats["rocksdb_memtable_size_bytes"] > 0.0, "{stats:?}");
    assert!(stats["rocksdb_estimate_num_keys"] >= 1000.0, "{stats:?}");
}

/// A full disk surfaces as a storage error that `is_disk_full` recognises,
/// carrying RocksDB's own text, instead of a panic or a silent loss.
/// Needs a small filesystem, e.g. as root:
/// `mount -t tmpfs -o size=8m tmpfs /mnt/small`, then run with
/// `SLUICE_TEST_SMALL_FS=/mnt/small` and `--ignored`.
#[test]
#[ignore = "needs SLUICE_TEST_SMALL_FS pointing at a small filesystem"]
fn rocks_disk_full_is_reported() {
    let root = std::env::var_os("SLUICE_TEST_SMALL_FS").expect("SLUICE_TEST_SMALL_FS is not set");
    let dir = tempfile::tempdir_in(root).unwrap();
    let mut config = RocksConfig::new(dir.path().join("db"));
    config.write_buffer_bytes = 1 << 20;
    let engine = RocksEngine::open(config).unwrap();
    // Incompressible values, so that flushed tables fill the disk too.
    let mut rng = rand::rng();
    let err = (0u32..100_000)
        .find_map(|i| {
            let mut value = vec![0u8; 64 << 10];
            rng.fill(&mut value[..]);
            let mut batch = WriteBatch::new();
            batch.put(Keyspace::Data, i.to_be_bytes(), value);
            engine.write(batch, Durability::Sync).err()
        })
        .expect("the filesystem never filled up");
    assert!(err.is_disk_full(), "{err}");
    assert!(err.is_fatal());
    assert!(err.to_string().contains("write batch"), "{err}");
}
