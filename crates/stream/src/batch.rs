//! The record batch: the unit a topic stores, one per append to a partition.
//!
//! Byte layout (integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format version, 1 |
//! | 1 | codec: 0 none, 1 LZ4 (block), 2 Zstd |
//! | 2..6 | record count, u32 |
//! | 6..14 | producer timestamp, i64 microseconds since the Unix epoch |
//! | 14..18 | CRC32C of bytes 0..14 and 18.. (everything but itself) |
//! | 18..22 | payload length before compression, u32 |
//! | 22.. | payload, compressed by the codec |
//!
//! The payload is the records one after another, each a u32 length and the
//! record's bytes (the planner stores a row in `sluice_engine::row` format).
//! The checksum covers every stored byte, so corruption is found before any
//! decompression runs; a batch that fails it is an error, never data.
//! A batch's records share its timestamp; offsets are not stored in the
//! batch at all but follow from its key (see the crate docs).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;
const HEADER: usize = 22;
/// Where the CRC32C sits in the header.
const CRC_AT: usize = 14;
/// No batch decompresses to more than this (a corrupt length cannot make a
/// reader allocate more). Appends are split well below it.
pub const MAX_PAYLOAD: usize = 32 << 20;
/// Payloads smaller than this are stored uncompressed: compressing them
/// costs more time than the bytes it saves.
const COMPRESS_FROM: usize = 256;

/// Per-topic compression of batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::InvalidOption(format!(
                "compression must be none, lz4 or zstd, not \"{other}\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }
}

/// Builds one batch from records.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    payload: Vec<u8>,
    count: u32,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `record_bytes` more of records without regrowing; each record
    /// takes its length plus 4 bytes.
    pub fn reserve(&mut self, record_bytes: usize) {
        self.payload.reserve(record_bytes);
    }

    pub fn push(&mut self, record: &[u8]) {
        self.payload
            .extend_from_slice(&(record.len() as u32).to_be_bytes());
        self.payload.extend_from_slice(record);
        self.count += 1;
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the payload so far (before compression).
    pub fn payload_bytes(&self) -> usize {
        self.payload.len()
    }

    pub fn finish(self, timestamp_us: i64, compression: Compression) -> Result<Vec<u8>> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge(self.payload.len()));
        }
        let codec = if self.payload.len() < COMPRESS_FROM {
            Compression::None
        } else {
            compression
        };
        let compressed = match codec {
            Compression::None => None,
            Compression::Lz4 => Some(lz4_flex::block::compress(&self.payload)),
            Compression::Zstd => Some(
                zstd::bulk::compress(&self.payload, 1)
                    .map_err(|e| Error::Corrupt(format!("zstd compression failed: {e}")))?,
            ),
        };
        let stored = compressed.as_deref().unwrap_or(&self.payload);
        // The stored bytes are copied once, into place; the checksum goes in after.
        let mut out = Vec::with_capacity(HEADER + stored.len());
        out.push(VERSION);
        out.push(codec.code());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&timestamp_us.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(stored);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..CRC_AT]), &out[CRC_AT + 4..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// The header of a stored batch, readable without decompressing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub count: u32,
    pub timestamp_us: i64,
}

pub fn header(bytes: &[u8]) -> Result<BatchHeader> {
    if bytes.len() < HEADER {
        return Err(Error::Corrupt(format!("batch of {} bytes", bytes.len())));
    }
    if bytes[0] != VERSION {
        return Err(Error::Corrupt(format!("batch format version {}", bytes[0])));
    }
    Ok(BatchHeader {
        count: u32::from_be_bytes(bytes[2..6].try_into().expect("4 bytes")),
        timestamp_us: i64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes")),
    })
}

/// A verified, decompressed batch.
#[derive(Debug)]
pub struct DecodedBatch {
    pub header: BatchHeader,
    payload: Vec<u8>,
}

impl DecodedBatch {
    /// The records in order.
    pub fn records(&self) -> Records<'_> {
        Records {
            rest: &self.payload,
        }
    }
}

pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(len) = self.rest.get(..4) else {
            self.rest = &[];
            return Some(Err(Error::Corrupt("truncated record length".into())));
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(record) = self.rest.get(4..4 + len) else {
            self.rest = &[];
            return Some(Err(Error::Corrupt("truncated record".into())));
        };
        self.rest = &self.rest[4 + len..];
        Some(Ok(record))
    }
}

/// Verifies the checksum and decompresses.
pub fn decode(bytes: &[u8]) -> Result<DecodedBatch> {
    let header = header(bytes)?;
    let crc = u32::from_be_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    let checked = &bytes[CRC_AT + 4..];
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_AT]), checked) != crc {
        return Err(Error::Corrupt("checksum mismatch".into()));
    }
    let length = u32::from_be_bytes(bytes[18..22].try_into().expect("4 bytes")) as usize;
    if length > MAX_PAYLOAD {
        return Err(Error::Corrupt(format!("payload length {length}")));
    }
    let stored = &bytes[HEADER..];
    let payload = match bytes[1] {
        0 => stored.to_vec(),
        1 => lz4_flex::block::decompress(stored, length)
            .map_err(|e| Error::Corrupt(format!("lz4: {e}")))?,
        2 => zstd::bulk::decompress(stored, length)
            .map_err(|e| Error::Corrupt(format!("zstd: {e}")))?,
        codec => return Err(Error::Corrupt(format!("unknown codec {codec}"))),
    };
    if payload.len() != length {
        return Err(Error::Corrupt(format!(
            "payload is {} bytes, header says {length}",
            payload.len()
        )));
    }
    let batch = DecodedBatch { header, payload };
    let records = batch.records().try_fold(0u32, |n, r| r.map(|_| n + 1))?;
    if records != header.count {
        return Err(Error::Corrupt(format!(
            "batch holds {records} records, header says {}",
            header.count
        )));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[Vec<u8>], compression: Compression) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for r in records {
            builder.push(r);
        }
        builder.finish(1_700_000_000_000_000, compression).unwrap()
    }

    #[test]
    fn round_trips_with_every_codec() {
        let records: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("record number {i} with some repeated text").into_bytes())
            .collect();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = batch(&records, codec);
            if codec != Compression::None {
                assert!(bytes.len() < records.iter().map(Vec::len).sum::<usize>() / 2);
            }
            let decoded = decode(&bytes).unwrap();
            assert_eq!(decoded.header.count, 500);
            assert_eq!(decoded.header.timestamp_us, 1_700_000_000_000_000);
            let back: Vec<Vec<u8>> = decoded.records().map(|r| r.unwrap().to_vec()).collect();
            assert_eq!(back, records);
        }
    }

    #[test]
    fn any_flipped_bit_is_an_error_not_data() {
        let records: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 20]).collect();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = batch(&records, codec);
            for at in 0..bytes.len() {
                let mut broken = bytes.clone();
                broken[at] ^= 0x10;
                assert!(
                    matches!(decode(&broken), Err(Error::Corrupt(_))),
                    "{codec:?} byte {at}"
                );
            }
            assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn small_payloads_stay_uncompressed() {
        let bytes = batch(&[b"tiny".to_vec()], Compression::Zstd);
        assert_eq!(bytes[1], 0);
        assert_eq!(decode(&bytes).unwrap().records().count(), 1);
    }
}
