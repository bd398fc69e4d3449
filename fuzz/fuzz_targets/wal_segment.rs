//! The write-ahead log's segment reader on an arbitrary segment file: opening recovers a torn
//! tail or refuses corruption, reading returns checked records or an error, and `repair` keeps
//! what is whole — never a panic, never a record that was not written.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_wal::{Log, SyncPolicy};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00000000000000000000.wal"), data).unwrap();
    match Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20) {
        Ok((log, rec)) => {
            if let Some(last) = rec.last_seq {
                let _ = log.read(log.first_seq(), last.min(log.first_seq() + 64));
            }
            log.close();
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = sluice_wal::repair(dir.path());
            if let Ok((log, _)) = Log::open(dir.path(), SyncPolicy::EveryBlock, 64 << 20) {
                log.close();
            }
        }
    }
});
