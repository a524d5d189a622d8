//! An append-only file of log entries in front of SQLite, for `--durability process`.
//!
//! Committing one small update to SQLite took about a third of the server's CPU per lone edit
//! (docs/benchmarks.md: `BEGIN`, a B-tree insert, whole 4 KiB WAL pages written, WAL-index
//! locks: 5.7 system calls). Under process durability an update only has to reach the OS
//! before it is relayed, and one `write` of a few dozen bytes to a file does that: the entry
//! survives `kill -9` in the page cache like a SQLite commit does. The store then moves
//! entries from the journal into SQLite in the background, many per transaction, and deletes
//! each journal file once everything in it is committed there. A server that died before that
//! replays the files when it starts (entries already in SQLite are skipped).
//!
//! The file format is this module's own (SQLite has no "append a record" that skips its page
//! machinery): records of `[body length: u32 LE][CRC-32 of body: u32 LE][body]`, the body being
//! `[room name length: u16 LE][room name][seq: u64 LE][update]`. A record that is cut short
//! (it runs past the end of the file) or zeros to the end of the file ends a file's replay: a
//! write torn by a crash, never acknowledged. Appends that fail are cut off the file again, so
//! nothing good ever follows a torn record. A whole record that fails its checksum or does not
//! decode, with bytes after it, is damage (a bad disk block, a flipped bit): what follows it may
//! have been acknowledged, so the file is kept aside (see `SqliteStore`), never deleted.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use huddle_protocol::RoomName;

use super::{LogEntry, Seq};

/// Journal files are `huddle-updates.<number>.log` in the data directory.
const PREFIX: &str = "huddle-updates.";
const SUFFIX: &str = ".log";

/// Bytes of a record before its body.
const HEADER: usize = 8;

/// Path of journal file `number` in `dir`.
pub fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{number:020}{SUFFIX}"))
}

/// Creates journal file `number` (empty) for appending.
///
/// # Errors
/// The file cannot be created.
pub fn create(dir: &Path, number: u64) -> std::io::Result<File> {
    OpenOptions::new().create(true).truncate(true).write(true).open(path(dir, number))
}

/// The journal files in `dir`, oldest first, with their numbers.
///
/// # Errors
/// The directory cannot be read.
pub fn existing(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Appends `batch`'s records to `out`.
pub fn encode(batch: &[LogEntry], out: &mut Vec<u8>) {
    for entry in batch {
        let room = entry.room.as_str().as_bytes();
        // Room names are at most 128 bytes (`RoomName`), far below u16::MAX.
        let room_len = u16::try_from(room.len()).unwrap_or(u16::MAX);
        let body_len = 2 + room.len() + 8 + entry.update.len();
        let at = out.len();
        out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&room_len.to_le_bytes());
        out.extend_from_slice(room);
        out.extend_from_slice(&entry.seq.0.to_le_bytes());
        out.extend_from_slice(&entry.update);
        let crc = crc32fast::hash(&out[at + HEADER..]);
        out[at + 4..at + HEADER].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What a journal file held.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Its whole records, in order.
    pub entries: Vec<LogEntry>,
    /// Bytes after the last whole record, not replayed.
    pub torn_bytes: usize,
    /// Those bytes are damage, not a write cut short by a crash: a whole record that fails its
    /// checksum or does not decode, with something other than zeros after it.
    pub damaged: bool,
}

/// Reads the records in `bytes` (a journal file's contents), up to the first that is cut short
/// or damaged.
pub fn decode(bytes: &[u8]) -> Replayed {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(entry) = record_at(bytes, at) {
        at += HEADER + entry.1;
        entries.push(entry.0);
    }
    let rest = &bytes[at..];
    // A torn write is a prefix of a record: it runs past the end. A crash of the machine may
    // leave zeros instead (blocks allocated, never written).
    let runs_past_end = rest.len() < HEADER
        || HEADER + u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize > rest.len();
    let damaged = !rest.is_empty() && !runs_past_end && rest.iter().any(|&b| b != 0);
    Replayed { entries, torn_bytes: rest.len(), damaged }
}

/// The record at `at` and its body's length, if it is whole and its checksum matches.
fn record_at(bytes: &[u8], at: usize) -> Option<(LogEntry, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let body_len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = bytes.get(at + HEADER..(at + HEADER).checked_add(body_len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let room_len = usize::from(u16::from_le_bytes(body.get(..2)?.try_into().ok()?));
    let room = std::str::from_utf8(body.get(2..2 + room_len)?).ok()?;
    let room = RoomName::parse(room).ok()?;
    let seq = u64::from_le_bytes(body.get(2 + room_len..2 + room_len + 8)?.try_into().ok()?);
    let update = Bytes::copy_from_slice(body.get(2 + room_len + 8..)?);
    Some((LogEntry { room, seq: Seq(seq), update }, body_len))
}

/// The journal file being appended to.
#[derive(Debug)]
pub struct Appender {
    file: File,
    /// Bytes in `file`: where a failed append is cut back to.
    len: u64,
    /// Reused buffer for encoding a batch.
    buf: Vec<u8>,
}

impl Appender {
    /// Appends to `file`, which is empty.
    pub fn new(file: File) -> Self {
        Self { file, len: 0, buf: Vec::new() }
    }

    /// Writes `batch` to the file: once this returns, the entries survive the process being
    /// killed.
    ///
    /// # Errors
    /// The write failed. Whatever part of it reached the file has been cut off again; if even
    /// that failed, the error says so and the file must not be appended to any more.
    pub fn append(&mut self, batch: &[LogEntry]) -> Result<(), AppendError> {
        self.buf.clear();
        encode(batch, &mut self.buf);
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                if self.buf.capacity() > 1 << 20 {
                    self.buf = Vec::new();
                }
                Ok(())
            }
            // `set_len` leaves the file's cursor where the failed write stopped: without the
            // seek back, the next append would land past the end, behind a run of zeros that
            // replay reads as the end of the file (an all-zero header passes its checksum and
            // then fails to decode), losing every entry after it.
            Err(e) => match self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)))
            {
                Ok(_) => Err(AppendError::Failed(e)),
                Err(_) => Err(AppendError::Broken(e)),
            },
        }
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Nothing was written (a full disk, say); the file is as it was.
    #[error("writing the update journal failed: {0}")]
    Failed(std::io::Error),
    /// Part of the batch may be in the file and could not be cut off: the file must be left.
    #[error("writing the update journal failed and could not be undone: {0}")]
    Broken(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &str, seq: u64, update: &[u8]) -> LogEntry {
        LogEntry {
            room: RoomName::parse(room).expect("room"),
            seq: Seq(seq),
            update: Bytes::copy_from_slice(update),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_or_damaged_tail_is_left_out() {
        let batch = vec![entry("a", 1, b"one"), entry("b-room", 7, b""), entry("a", 2, &[9; 300])];
        let mut bytes = Vec::new();
        encode(&batch, &mut bytes);
        let whole = decode(&bytes);
        assert_eq!(whole.torn_bytes, 0);
        let got: Vec<_> =
            whole.entries.iter().map(|e| (e.room.as_str(), e.seq.0, e.update.to_vec())).collect();
        assert_eq!(
            got,
            vec![("a", 1, b"one".to_vec()), ("b-room", 7, vec![]), ("a", 2, vec![9; 300])]
        );

        // Cut anywhere inside the last record: the first two still replay.
        let last_starts = bytes.len() - (HEADER + 2 + 1 + 8 + 300);
        for cut in [last_starts + 1, last_starts + HEADER, bytes.len() - 1] {
            let torn = decode(&bytes[..cut]);
            assert_eq!(torn.entries.len(), 2, "cut at {cut}");
            assert_eq!(torn.torn_bytes, cut - last_starts);
        }

        for cut in [last_starts + 1, last_starts + HEADER, bytes.len() - 1] {
            assert!(!decode(&bytes[..cut]).damaged, "a torn write is not damage (cut at {cut})");
        }
        // Zeros where the last record should be (a machine crash): not damage either.
        let mut zeroed = bytes.clone();
        zeroed[last_starts..].fill(0);
        let zeroed = decode(&zeroed);
        assert_eq!((zeroed.entries.len(), zeroed.damaged), (2, false));

        // A flipped byte in the second record ends the replay there, and is damage: the third
        // record after it may have been acknowledged.
        let mut damaged = bytes.clone();
        damaged[HEADER + 2 + 1 + 8 + 3 + HEADER + 1] ^= 0xff;
        let damaged = decode(&damaged);
        assert_eq!((damaged.entries.len(), damaged.damaged), (1, true));
        // So is a flipped byte in the last record's body (whole, but failing its checksum).
        let mut last = bytes.clone();
        *last.last_mut().expect("bytes") ^= 0xff;
        assert!(decode(&last).damaged);
    }

    #[test]
    fn files_are_found_oldest_first_and_others_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [10, 2, 33] {
            create(dir.path(), n).expect("create");
        }
        std::fs::write(dir.path().join("huddle.sqlite3"), b"").expect("write");
        std::fs::write(dir.path().join("huddle-updates.x.log"), b"").expect("write");
        let found: Vec<u64> =
            existing(dir.path()).expect("list").into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, vec![2, 10, 33]);
    }
}
