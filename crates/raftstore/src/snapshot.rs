//! Snapshot files: every pair of `Keyspace::Data` as of one applied log id.
//!
//! Format (integers little-endian):
//!
//! ```text
//! magic       8 bytes  "SLCSNAP\0"
//! version     u32      FORMAT_VERSION
//! meta_len    u32      length of `meta`
//! meta        postcard SnapshotMeta (last applied log id, membership, snapshot id)
//! records     repeated:
//!               tag 1, key_len u32, value_len u32, key, value   (a pair)
//!             then once:
//!               tag 0, pair_count u64                           (the end)
//! crc         u32      CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Pairs are in ascending key order. A file is written under a `.tmp` name,
//! fsynced, renamed to its final `.snap` name and the directory fsynced, so a
//! `.snap` file is always complete; `.tmp` files are leftovers of a crash.
//! Readers check lengths against the file size and the CRC before trusting
//! anything, so a damaged file is reported as corrupt, never half-installed.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_engine::{Error as EngineError, KeyRange, Keyspace, KvPair, Snapshot};

use crate::types::{decode, encode, SnapshotMeta};

const MAGIC: &[u8; 8] = b"SLCSNAP\0";
const FORMAT_VERSION: u32 = 1;
const TAG_PAIR: u8 = 1;
const TAG_END: u8 = 0;
/// The meta holds a membership: a few KiB at most. Anything larger is damage.
const MAX_META_BYTES: u32 = 16 << 20;
/// Pairs read per engine scan page while writing a snapshot.
const SCAN_PAGE: usize = 1024;
const SNAP_EXT: &str = "snap";
const TMP_EXT: &str = "tmp";

fn io_error(context: &str, path: &Path, err: io::Error) -> EngineError {
    EngineError::Storage(format!("{context} {}: {err}", path.display()))
}

fn corrupt(path: &Path, what: &str) -> EngineError {
    EngineError::Corrupt(format!("snapshot file {}: {what}", path.display()))
}

/// CRC-32 with the IEEE polynomial (the one of zlib and PNG).
#[derive(Clone, Copy)]
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: Crc32,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes a snapshot of `Data` from `source` to `path` (through a `.tmp`
/// file) and returns the number of pairs.
pub(crate) fn write_file(
    path: &Path,
    meta: &SnapshotMeta,
    source: &dyn Snapshot,
) -> Result<u64, EngineError> {
    let tmp = path.with_extension(TMP_EXT);
    let file = File::create(&tmp).map_err(|e| io_error("create snapshot file", &tmp, e))?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: Crc32::new(),
    };
    let wr = |e| io_error("write snapshot file", &tmp, e);

    let meta_bytes = encode(meta)?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|len| *len <= MAX_META_BYTES)
        .ok_or_else(|| EngineError::Encode("snapshot meta too large".into()))?;
    out.put(MAGIC).map_err(wr)?;
    out.put(&FORMAT_VERSION.to_le_bytes()).map_err(wr)?;
    out.put(&meta_len.to_le_bytes()).map_err(wr)?;
    out.put(&meta_bytes).map_err(wr)?;

    let mut count = 0u64;
    let mut range = KeyRange::all();
    loop {
        let page = source.scan(Keyspace::Data, &range, SCAN_PAGE)?;
        for (key, value) in &page {
            let key_len = u32::try_from(key.len())
                .map_err(|_| EngineError::Encode("key longer than 4 GiB".into()))?;
            let value_len = u32::try_from(value.len())
                .map_err(|_| EngineError::Encode("value longer than 4 GiB".into()))?;
            out.put(&[TAG_PAIR]).map_err(wr)?;
            out.put(&key_len.to_le_bytes()).map_err(wr)?;
            out.put(&value_len.to_le_bytes()).map_err(wr)?;
            out.put(key).map_err(wr)?;
            out.put(value).map_err(wr)?;
            count += 1;
        }
        match page.last() {
            Some((last, _)) if page.len() == SCAN_PAGE => range = range.resume_after(last),
            _ => break,
        }
    }
    out.put(&[TAG_END]).map_err(wr)?;
    out.put(&count.to_le_bytes()).map_err(wr)?;
    let crc = out.crc.finish();
    out.inner.write_all(&crc.to_le_bytes()).map_err(wr)?;
    let file = out.inner.into_inner().map_err(|e| wr(e.into_error()))?;
    file.sync_all()
        .map_err(|e| io_error("fsync snapshot file", &tmp, e))?;
    drop(file);
    publish(&tmp, path)?;
    Ok(count)
}

/// Renames a complete, fsynced `.tmp` file to its final name, durably.
pub(crate) fn publish(tmp: &Path, path: &Path) -> Result<(), EngineError> {
    fs::rename(tmp, path).map_err(|e| io_error("rename snapshot file", tmp, e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), EngineError> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("fsync snapshot directory", dir, e))?;
    }
    Ok(())
}

/// Reads a snapshot file record by record, checking its structure and CRC.
pub(crate) struct SnapshotReader {
    path: PathBuf,
    input: BufReader<File>,
    crc: Crc32,
    /// Bytes not yet read; every length is checked against it before allocating.
    remaining: u64,
    pairs: u64,
    finished: bool,
    meta: SnapshotMeta,
}

impl SnapshotReader {
    pub(crate) fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|e| io_error("open snapshot file", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error("stat snapshot file", path, e))?
            .len();
        let mut reader = SnapshotReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, file),
            crc: Crc32::new(),
            remaining: len,
            pairs: 0,
            finished: false,
            meta: SnapshotMeta::default(),
        };
        let magic = reader.read_vec(MAGIC.len())?;
        if magic != MAGIC {
            return Err(corrupt(path, "not a snapshot file (bad magic)"));
        }
        let version = reader.read_u32()?;
        if version != FORMAT_VERSION {
            return Err(corrupt(
                path,
                &format!("unsupported format version {version}"),
            ));
        }
        let meta_len = reader.read_u32()?;
        if meta_len > MAX_META_BYTES {
            return Err(corrupt(path, "meta length out of range"));
        }
        let meta_bytes = reader.read_vec(meta_len as usize)?;
        reader.meta = decode(&meta_bytes, "snapshot meta")?;
        Ok(reader)
    }

    pub(crate) fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn read_exact_checked(&mut self, buf: &mut [u8]) -> Result<(), EngineError> {
        if (buf.len() as u64) > self.remaining {
            return Err(corrupt(&self.path, "truncated"));
        }
        self.input
            .read_exact(buf)
            .map_err(|e| io_error("read snapshot file", &self.path, e))?;
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; len];
        self.read_exact_checked(&mut buf)?;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        let mut buf = [0u8; N];
        self.read_exact_checked(&mut buf)?;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn read_u32(&mut self) -> Result<u32, EngineError> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    /// The next pair, or `None` after the end record once the pair count and
    /// the CRC have been checked.
    pub(crate) fn next_pair(&mut self) -> Result<Option<KvPair>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        let [tag] = self.read_array::<1>()?;
        match tag {
            TAG_PAIR => {
                let key_len = u64::from(self.read_u32()?);
                let value_len = u64::from(self.read_u32()?);
                if key_len + value_len > self.remaining {
                    return Err(corrupt(&self.path, "pair length beyond end of file"));
                }
                let key = self.read_vec(key_len as usize)?;
                let value = self.read_vec(value_len as usize)?;
                self.pairs += 1;
                Ok(Some((key, value)))
            }
            TAG_END => {
                let count = u64::from_le_bytes(self.read_array()?);
                if count != self.pairs {
                    return Err(corrupt(&self.path, "pair count mismatch"));
                }
                let expected = self.crc.finish();
                let mut stored = [0u8; 4];
                self.read_exact_checked(&mut stored)?;
                if u32::from_le_bytes(stored) != expected {
                    return Err(corrupt(&self.path, "CRC mismatch"));
                }
                if self.remaining != 0 {
                    return Err(corrupt(&self.path, "trailing bytes after CRC"));
                }
                self.finished = true;
                Ok(None)
            }
            other => Err(corrupt(&self.path, &format!("unknown record tag {other}"))),
        }
    }

    /// Reads to the end, checking everything; returns the pair count.
    pub(crate) fn verify(mut self) -> Result<u64, EngineError> {
        while self.next_pair()?.is_some() {}
        Ok(self.pairs)
    }
}

/// A complete snapshot file and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) path: PathBuf,
}

/// The node's snapshot directory and its current snapshot.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    current: Mutex<Option<StoredSnapshot>>,
    counter: AtomicU64,
}

impl SnapshotDir {
    /// Opens `dir` (creating it), removes `.tmp` leftovers and older
    /// snapshots, and keeps the newest complete one as current, or the file
    /// named `pinned` (an install to finish) whatever the others hold.
    pub(crate) fn open(dir: PathBuf, pinned: Option<&str>) -> Result<Self, EngineError> {
        fs::create_dir_all(&dir).map_err(|e| io_error("create snapshot directory", &dir, e))?;
        let listing =
            fs::read_dir(&dir).map_err(|e| io_error("list snapshot directory", &dir, e))?;
        let mut best: Option<StoredSnapshot> = None;
        for item in listing {
            let path = item
                .map_err(|e| io_error("list snapshot directory", &dir, e))?
                .path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(TMP_EXT) => remove_file(&path),
                Some(SNAP_EXT) => {
                    let meta = match SnapshotReader::open(&path) {
                        Ok(reader) => reader.meta.clone(),
                        Err(e) => {
                            // Published files are complete, so this is damage;
                            // keep it for inspection but never use it.
                            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable snapshot");
                            continue;
                        }
                    };
                    let is_pinned = |p: &Path| {
                        pinned.is_some() && p.file_name().and_then(|n| n.to_str()) == pinned
                    };
                    let candidate = StoredSnapshot { meta, path };
                    best = match best {
                        Some(b)
                            if is_pinned(&b.path)
                                || (!is_pinned(&candidate.path)
                                    && b.meta.last_log_id >= candidate.meta.last_log_id) =>
                        {
                            remove_file(&candidate.path);
                            Some(b)
                        }
                        Some(b) => {
                            remove_file(&b.path);
                            Some(candidate)
                        }
                        None => Some(candidate),
                    };
                }
                _ => {}
            }
        }
        Ok(Self {
            dir,
            current: Mutex::new(best),
            counter: AtomicU64::new(0),
        })
    }

    /// A fresh, unique path for a snapshot of `meta`'s log id.
    pub(crate) fn new_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = meta
            .last_log_id
            .map_or((0, 0), |id| (id.leader_id.term, id.index));
        self.dir.join(format!(
            "{}.{SNAP_EXT}",
            self.unique_name(&format!("{index:020}-{term}"))
        ))
    }

    /// A unique `.tmp` path for data being received.
    pub(crate) fn receive_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{TMP_EXT}", self.unique_name("receive")))
    }

    fn unique_name(&self, stem: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("snap-{stem}-{nanos}-{n}")
    }

    pub(crate) fn path_of(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    pub(crate) fn current(&self) -> Option<StoredSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `snapshot` current unless a newer one already is; the one that
    /// loses is deleted. Open handles keep reading an unlinked file.
    pub(crate) fn set_current(&self, snapshot: StoredSnapshot) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(existing) if existing.path == snapshot.path => {}
            Some(existing) if existing.meta.last_log_id > snapshot.meta.last_log_id => {
                remove_file(&snapshot.path);
            }
            _ => {
                if let Some(old) = current.replace(snapshot) {
                    remove_file(&old.path);
                }
            }
        }
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "remove old snapshot file");
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};
    use sluice_engine::{Durability, Engine, MemoryEngine, WriteBatch};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("test-{index}"),
        }
    }

    fn written(dir: &Path, pairs: usize) -> PathBuf {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        for i in 0..pairs {
            batch.put(Keyspace::Data, format!("k{i:05}"), vec![i as u8; i % 300]);
        }
        engine.write(batch, Durability::Sync).unwrap();
        let path = dir.join("one.snap");
        let count = write_file(&path, &meta(7), &*engine.snapshot()).unwrap();
        assert_eq!(count, pairs as u64);
        path
    }

    /// Every pair comes back in order, with the meta, and the CRC checks out.
    #[test]
    fn snapshot_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 2500);
        let mut reader = SnapshotReader::open(&path).unwrap();
        assert_eq!(reader.meta(), &meta(7));
        let mut n = 0;
        while let Some((key, value)) = reader.next_pair().unwrap() {
            assert_eq!(key, format!("k{n:05}").into_bytes());
            assert_eq!(value, vec![n as u8; n % 300]);
            n += 1;
        }
        assert_eq!(n, 2500);
        assert!(!dir.path().join("one.tmp").exists());
    }

    /// A flipped byte anywhere fails verification instead of installing garbage.
    #[test]
    fn corrupted_snapshot_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 100);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = SnapshotReader::open(&path)
            .and_then(SnapshotReader::verify)
            .unwrap_err();
        assert!(matches!(err, EngineError::Corrupt(_)), "{err}");

        bytes[middle] ^= 0x40;
        bytes.truncate(bytes.len() - 3);
        fs::write(&path, &bytes).unwrap();
        let err = SnapshotReader::open(&path)
            .and_then(SnapshotReader::verify)
            .unwrap_err();
        assert!(matches!(err, EngineError::Corrupt(_)), "{err}");
    }

    /// Reopening the directory keeps only the newest snapshot and drops `.tmp` leftovers.
    #[test]
    fn snapshot_dir_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let engine = MemoryEngine::new();
        let snaps = SnapshotDir::open(dir.path().to_path_buf(), None).unwrap();
        let old = snaps.new_path(&meta(5));
        let new = snaps.new_path(&meta(9));
        write_file(&old, &meta(5), &*engine.snapshot()).unwrap();
        write_file(&new, &meta(9), &*engine.snapshot()).unwrap();
        fs::write(dir.path().join("junk.tmp"), b"x").unwrap();

        let reopened = SnapshotDir::open(dir.path().to_path_buf(), None).unwrap();
        let current = reopened.current().unwrap();
        assert_eq!(current.path, new);
        assert_eq!(current.meta, meta(9));
        assert!(!old.exists());
        assert!(!dir.path().join("junk.tmp").exists());
    }
}
