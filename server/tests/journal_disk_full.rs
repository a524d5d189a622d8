//! The update journal when the disk fills up in the middle of a write.
//!
//! A full disk is made real with the process's file size limit (`RLIMIT_FSIZE`): the kernel
//! then writes what fits and fails the rest with `EFBIG`, exactly as it does with `ENOSPC`.
//! The limit applies to the whole process, so this is the only test in this binary (cargo runs
//! each integration test binary in its own process, one after the other).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use huddle_protocol::RoomName;
use huddle_server::store::journal::{self, AppendError, Appender};
use huddle_server::store::{LogEntry, Seq};
use rlimit::Resource;

fn entry(seq: u64, len: usize) -> LogEntry {
    LogEntry {
        room: RoomName::parse("full-disk").expect("room"),
        seq: Seq(seq),
        update: Bytes::from(vec![seq as u8; len]),
    }
}

/// An append that fails halfway (the disk full) is cut off the file, and appends after space
/// comes back land right after the last good record: a restart replays every one of them.
#[test]
fn a_write_cut_short_by_a_full_disk_loses_nothing_that_was_acknowledged() {
    // Past the limit the kernel also sends SIGXFSZ, which would kill the process: catch it, so
    // the write fails with EFBIG instead.
    let _ =
        signal_hook::flag::register(signal_hook::consts::SIGXFSZ, Arc::new(AtomicBool::new(false)))
            .expect("catch SIGXFSZ");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut appender = Appender::new(journal::create(dir.path(), 1).expect("create"));
    appender.append(&[entry(1, 100), entry(2, 100)]).expect("first append");
    let good = std::fs::metadata(journal::path(dir.path(), 1)).expect("stat").len();

    let (soft, hard) = Resource::FSIZE.get().expect("getrlimit");
    // Room for part of the next batch only.
    Resource::FSIZE.set(good + 150, hard).expect("lower the file size limit");
    let failed = appender.append(&[entry(3, 100), entry(4, 100)]);
    Resource::FSIZE.set(soft, hard).expect("restore the file size limit");
    assert!(matches!(failed, Err(AppendError::Failed(_))), "the full disk: {failed:?}");
    assert_eq!(
        std::fs::metadata(journal::path(dir.path(), 1)).expect("stat").len(),
        good,
        "what reached the file of the failed write was cut off again"
    );

    // Space is back: the room's next updates are acknowledged again.
    appender.append(&[entry(3, 40)]).expect("append after space came back");
    appender.append(&[entry(4, 40)]).expect("and another");

    let replayed = journal::decode(&std::fs::read(journal::path(dir.path(), 1)).expect("read"));
    let seqs: Vec<(u64, usize)> =
        replayed.entries.iter().map(|e| (e.seq.0, e.update.len())).collect();
    assert_eq!(
        seqs,
        vec![(1, 100), (2, 100), (3, 40), (4, 40)],
        "every acknowledged entry replays"
    );
    assert_eq!(replayed.torn_bytes, 0, "no gap or torn record in the file");
}
