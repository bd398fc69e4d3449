//! A check of RocksDB's own log files before the checkpoint store opens them.
//!
//! RocksDB's recovery modes either refuse a torn tail (`AbsoluteConsistency`) or silently stop at
//! the first bad record, even one in the middle (what the others did here): neither is what a
//! checkpoint needs. This reads the log format (32 KiB blocks of records `crc32c u32 | len u16 |
//! type u8 | payload`) and tells a torn tail — nothing valid after the first bad record — from
//! corruption in the middle, which is refused with the file and byte offset.

use crate::{Error, Result};
use std::path::Path;

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

/// Offsets of valid records in `data` and the offset of the first bad one, if any.
fn scan(data: &[u8]) -> (Vec<usize>, Option<usize>) {
    let valid = |o: usize, end: usize| -> Option<usize> {
        let h = data.get(o..o + HEADER)?;
        let len = u16::from_le_bytes([h[4], h[5]]) as usize;
        let kind = h[6];
        if !(1..=4).contains(&kind) || o + HEADER + len > end {
            return None;
        }
        let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let c = crc32c::crc32c_append(crc32c::crc32c(&[kind]), &data[o + HEADER..o + HEADER + len]);
        (unmask(crc) == c).then_some(HEADER + len)
    };
    let mut good = Vec::new();
    let mut first_bad = None;
    let mut block = 0;
    while block < data.len() {
        let end = (block + BLOCK).min(data.len());
        let mut o = block;
        while o + HEADER <= end {
            if data[o..o + HEADER].iter().all(|&b| b == 0) {
                break; // block padding or preallocated space
            }
            match valid(o, end) {
                Some(n) => {
                    good.push(o);
                    o += n;
                }
                None => {
                    // Look for the next valid record after the bad one (a CRC match by chance is
                    // one in 2^32).
                    first_bad.get_or_insert(o);
                    o += 1;
                    while o + HEADER <= end && valid(o, end).is_none() {
                        o += 1;
                    }
                }
            }
        }
        block += BLOCK;
    }
    (good, first_bad)
}

/// Refuse `dir`'s RocksDB logs if one has a bad record followed by good ones; report torn tails.
pub fn check(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let data = std::fs::read(&p)
            .map_err(|e| Error::msg(format!("cannot read {}: {e}", p.display())))?;
        let (good, bad) = scan(&data);
        let Some(bad) = bad else { continue };
        if good.iter().any(|&g| g > bad) {
            return Err(Error::msg(format!(
                "checkpoint store {}: Corruption: a record in {} at byte {bad} is damaged and valid \
                 records follow it. The checkpoint is damaged in the middle, not just cut at the end; \
                 restore it from a backup or delete the directory to start fresh",
                dir.display(),
                p.display()
            )));
        }
        tracing::warn!(file = %p.display(), offset = bad, "checkpoint store log was cut mid-write; recovering to the last whole commit");
    }
    Ok(())
}
