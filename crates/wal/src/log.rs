//! The write-ahead log of one receiver: received blocks appended to segment files, group-committed
//! with `fdatasync`, each record checksummed.
//!
//! A record is `len u32 | crc32 u32 | seq u64 | payload` (little endian; the CRC covers `seq` and
//! the payload). Segments are named after the sequence number of their first record and rolled
//! once they exceed the segment size; the active segment always holds the newest record, so the
//! receiver's last position survives trimming.
//!
//! Opening a log scans its last segment: a record cut mid-write at the end (a torn tail, or a tail
//! the file system zero-filled) is cut off and reported; a bad record followed by good ones is
//! corruption, reported with its file and byte offset, and opening fails. Older segments are
//! checked when they are read.

use crate::ipc;
use crate::{Error, Result};
use arrow::record_batch::RecordBatch;
use sluice_core::fs::{open_append, Access};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const HEADER: usize = 16;
const SUFFIX: &str = ".wal";

/// When appended records are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before any block is acknowledged; blocks that arrive together share one sync.
    EveryBlock,
    /// `fdatasync` at most once per interval; blocks are acknowledged after the sync that covers them.
    Interval(Duration),
}

/// One record read back.
pub struct Entry {
    pub seq: u64,
    pub position: serde_json::Value,
    pub batch: RecordBatch,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sequence number of the newest record (None: empty log).
    pub last_seq: Option<u64>,
    /// Position stored with the newest record.
    pub last_position: Option<serde_json::Value>,
    /// A torn tail that was cut off: (file, offset of the first bad byte, bytes dropped).
    pub torn: Option<(PathBuf, u64, u64)>,
}

#[derive(Clone, Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
}

struct Shared {
    dir: PathBuf,
    segments: Mutex<Vec<Segment>>,
    /// Next sequence number to hand out.
    next: Mutex<u64>,
    bytes: AtomicU64,
    /// The position stored with the newest record found at open.
    recovered_position: Option<serde_json::Value>,
}

enum Msg {
    Append {
        seq: u64,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
}

/// A receiver's write-ahead log.
pub struct Log {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SUFFIX}"))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let hint = if e.raw_os_error() == Some(28) {
        " (the disk is full: free space or move checkpoint_dir; nothing after the last durable block was acknowledged)"
    } else {
        ""
    };
    Error::msg(format!("cannot {what} {}: {e}{hint}", path.display()))
}

fn encode(seq: u64, position: &serde_json::Value, batch: &RecordBatch) -> Result<Vec<u8>> {
    let pos = serde_json::to_vec(position).map_err(|e| Error::msg(e.to_string()))?;
    let mut payload = Vec::with_capacity(4 + pos.len() + batch.get_array_memory_size() / 2);
    payload.extend_from_slice(&(pos.len() as u32).to_le_bytes());
    payload.extend_from_slice(&pos);
    ipc::write_into(&mut payload, batch)?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode(seq: u64, payload: &[u8]) -> Result<Entry> {
    let bad = || Error::msg(format!("WAL record {seq}: malformed payload"));
    let n = u32::from_le_bytes(payload.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let pos = payload.get(4..4 + n).ok_or_else(bad)?;
    let position = serde_json::from_slice(pos).map_err(|_| bad())?;
    let batch = ipc::read(&payload[4 + n..])?;
    Ok(Entry {
        seq,
        position,
        batch,
    })
}

/// What scanning one segment file found.
struct Scanned {
    /// The file's bytes.
    data: Vec<u8>,
    /// (seq, where its payload is in `data`) of each good record, in order.
    records: Vec<(u64, std::ops::Range<usize>)>,
    /// Where the good records end.
    end: u64,
    /// The file's length (more than `end`: a torn tail).
    len: u64,
}

/// Whether a whole, checksummed record starts at `o` (its seq and payload length).
fn record_at(data: &[u8], o: usize) -> Option<(u64, usize)> {
    let rest = data.get(o..)?;
    if rest.len() < HEADER {
        return None;
    }
    let n = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(rest[8..16].try_into().unwrap());
    let payload = rest.get(HEADER..HEADER.checked_add(n)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    (h.finalize() == crc).then_some((seq, n))
}

/// The first whole record after `o` whose sequence number is at least `seq` (and not absurdly far
/// past it): where a log resumes after a damaged record, if it does.
fn next_record_after(data: &[u8], o: usize, seq: u64) -> Option<usize> {
    let plausible = seq..seq.saturating_add(1 << 32);
    (o + 1..data.len().saturating_sub(HEADER - 1)).find(|&p| {
        let s = u64::from_le_bytes(data[p + 8..p + 16].try_into().unwrap());
        plausible.contains(&s) && record_at(data, p).is_some()
    })
}

/// The sequence number in a segment file's name.
fn first_seq_of(path: &Path) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(SUFFIX))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A segment file's bytes.
fn read_segment(path: &Path) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io_err("read", path, e))?;
    Ok(data)
}

/// The good records of one segment file. A bad record is a torn tail when no whole record
/// follows it (a crash cut the last write, or the file system zero-filled it); when one does, the
/// log was damaged in the middle — a flipped length field must not pass for a torn tail, which
/// would silently drop records already acknowledged upstream — and this is an error.
fn scan(path: &Path) -> Result<Scanned> {
    let data = read_segment(path)?;
    let len = data.len();
    let mut out: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    let mut o = 0usize;
    while o < len {
        if data[o..].iter().all(|&b| b == 0) {
            break; // zero-filled tail
        }
        if let Some((seq, n)) = record_at(&data, o) {
            out.push((seq, o + HEADER..o + HEADER + n));
            o += HEADER + n;
            continue;
        }
        let expected = out.last().map_or(first_seq_of(path), |(s, _)| s + 1);
        if let Some(next) = next_record_after(&data, o, expected + 1) {
            return Err(Error::msg(format!(
                "corrupt WAL record in {} at byte {o}: it does not check out (length or checksum), \
                 yet whole records follow it from byte {next}. This is damage in the middle of the \
                 log, not a write cut by a crash. Run `sluice checkpoint repair <checkpoint_dir>`: \
                 it saves the segment aside and keeps every whole record, and it names the records \
                 that are lost",
                path.display(),
            )));
        }
        break; // a torn tail: the last write, cut
    }
    Ok(Scanned {
        data,
        records: out,
        end: o as u64,
        len: len as u64,
    })
}

/// What [`repair`] did to one damaged segment.
#[derive(Debug)]
pub struct Repaired {
    pub segment: PathBuf,
    /// The original file, kept for inspection.
    pub saved_as: PathBuf,
    /// Whole records kept.
    pub kept: usize,
    /// Damaged byte ranges dropped: (offset, length).
    pub dropped: Vec<(u64, u64)>,
    /// Sequence numbers no longer in the log (between the records kept around each damage).
    pub lost_seqs: Vec<std::ops::RangeInclusive<u64>>,
}

/// Repair the log in `dir` after [`Log::open`] refused it for damage in the middle: each damaged
/// segment is copied aside (`<name>.corrupt-<ms>`, which the log ignores) and rewritten with
/// every whole record it holds, skipping the damaged bytes. Records in the damage are lost; the
/// others keep their sequence numbers, so a batch plan never reads another record in their place.
pub fn repair(dir: &Path) -> Result<Vec<Repaired>> {
    let mut out = Vec::new();
    for seg in list_segments(dir)? {
        let data = read_segment(&seg.path)?;
        let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
        let mut dropped = Vec::new();
        let mut lost_seqs = Vec::new();
        let mut last: Option<u64> = None;
        let mut o = 0;
        while o < data.len() && !data[o..].iter().all(|&b| b == 0) {
            if let Some((seq, n)) = record_at(&data, o) {
                let want = last.map_or(seg.first, |l| l + 1);
                if seq > want {
                    lost_seqs.push(want..=seq - 1);
                }
                last = Some(seq);
                kept.push(o..o + HEADER + n);
                o += HEADER + n;
                continue;
            }
            let expected = last.map_or(seg.first, |s| s + 1);
            match next_record_after(&data, o, expected) {
                Some(next) => {
                    dropped.push((o as u64, (next - o) as u64));
                    o = next;
                }
                None => break, // a torn tail: opening the log cuts it
            }
        }
        if dropped.is_empty() {
            continue;
        }
        let saved_as = seg
            .path
            .with_extension(format!("wal.corrupt-{}", sluice_core::time::now_ms()));
        std::fs::copy(&seg.path, &saved_as).map_err(|e| io_err("copy", &saved_as, e))?;
        let mut good = Vec::with_capacity(data.len());
        for r in &kept {
            good.extend_from_slice(&data[r.clone()]);
        }
        crate::write_durably(&seg.path, &good)?;
        tracing::warn!(segment = %seg.path.display(), saved_as = %saved_as.display(), kept = kept.len(), "WAL segment repaired");
        out.push(Repaired {
            segment: seg.path.clone(),
            saved_as,
            kept: kept.len(),
            dropped,
            lost_seqs,
        });
    }
    Ok(out)
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut segs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    for e in entries {
        let e = e.map_err(|e| io_err("list", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(SUFFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            segs.push(Segment {
                first,
                path: e.path(),
            });
        }
    }
    segs.sort_by_key(|s| s.first);
    Ok(segs)
}

fn sync_dir(dir: &Path) -> Result<()> {
    sluice_core::fs::sync_dir(dir).map_err(|e| io_err("sync", dir, e))
}

impl Log {
    /// Open (or create) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, policy: SyncPolicy, segment_bytes: u64) -> Result<(Log, Recovered)> {
        sluice_core::fs::create_dir(dir, Access::Private).map_err(|e| io_err("create", dir, e))?;
        let segments = list_segments(dir)?;
        let mut rec = Recovered::default();
        let mut next = segments.first().map_or(0, |s| s.first);
        // The newest record is in the last segment that has one.
        for seg in segments.iter().rev() {
            let Scanned {
                data,
                records,
                end,
                len,
            } = scan(&seg.path)?;
            if end < len {
                OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .and_then(|f| {
                        f.set_len(end)?;
                        f.sync_all()
                    })
                    .map_err(|e| io_err("truncate", &seg.path, e))?;
                tracing::warn!(
                    file = %seg.path.display(),
                    offset = end,
                    dropped_bytes = len - end,
                    "WAL tail was cut mid-write; recovered to the last valid record"
                );
                rec.torn = Some((seg.path.clone(), end, len - end));
            }
            if let Some((seq, at)) = records.last() {
                rec.last_seq = Some(*seq);
                rec.last_position = Some(decode(*seq, &data[at.clone()])?.position);
                next = seq + 1;
                break;
            }
            next = next.max(seg.first);
        }
        let bytes = segments
            .iter()
            .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
            .sum();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segments: Mutex::new(segments),
            next: Mutex::new(next),
            bytes: AtomicU64::new(bytes),
            recovered_position: rec.last_position.clone(),
        });
        let (tx, rx) = mpsc::channel();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-wal".into())
            .spawn(move || write_loop(w, rx, policy, segment_bytes))
            .map_err(|e| Error::msg(format!("cannot start the WAL writer: {e}")))?;
        Ok((
            Log {
                shared,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
            },
            rec,
        ))
    }

    /// Append a block; the returned receiver resolves once it is durable, with its sequence number.
    pub fn append(
        &self,
        batch: &RecordBatch,
        position: &serde_json::Value,
    ) -> Result<(u64, oneshot::Receiver<Result<()>>)> {
        let mut next = self.shared.next.lock().unwrap();
        let seq = *next;
        let bytes = encode(seq, position, batch)?;
        let (done, rx) = oneshot::channel();
        let tx = self.tx.lock().unwrap();
        tx.as_ref()
            .ok_or_else(|| Error::msg("the WAL is closed"))?
            .send(Msg::Append { seq, bytes, done })
            .map_err(|_| Error::msg("the WAL writer stopped after an error"))?;
        *next += 1;
        Ok((seq, rx))
    }

    /// Records `from..=to`, in order, each checked against its checksum.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Entry>> {
        let segs = self.shared.segments.lock().unwrap().clone();
        let mut out = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map_or(u64::MAX, |n| n.first);
            if end <= from || seg.first > to {
                continue;
            }
            let scanned = scan(&seg.path)?;
            for (seq, at) in scanned.records {
                if (from..=to).contains(&seq) {
                    out.push(decode(seq, &scanned.data[at])?);
                }
            }
        }
        let want = (to + 1).saturating_sub(from) as usize;
        if out.len() != want {
            return Err(Error::msg(format!(
                "the WAL in {} holds {} of the {want} record(s) {from}..={to} a batch plan needs: \
                 segment files are missing",
                self.shared.dir.display(),
                out.len()
            )));
        }
        Ok(out)
    }

    /// The records from `from` (below `end`) in the segment that holds `from`: a reader that walks
    /// a long log holds one segment's records at a time.
    pub fn read_segment_from(&self, from: u64, end: u64) -> Result<Vec<Entry>> {
        let seg = {
            let segs = self.shared.segments.lock().unwrap();
            segs.iter().rev().find(|s| s.first <= from).cloned()
        };
        let Some(seg) = seg else {
            return Err(Error::msg(format!(
                "the WAL in {} has no segment holding record {from}",
                self.shared.dir.display()
            )));
        };
        let scanned = scan(&seg.path)?;
        let mut out = Vec::new();
        for (seq, at) in scanned.records {
            if (from..end).contains(&seq) {
                out.push(decode(seq, &scanned.data[at])?);
            }
        }
        if out.first().map(|e| e.seq) != Some(from) {
            return Err(Error::msg(format!(
                "the WAL segment {} does not hold record {from}",
                seg.path.display()
            )));
        }
        Ok(out)
    }

    /// Delete the segments whose records are all at or before `upto` (never the active one).
    pub fn trim(&self, upto: u64) -> Result<u64> {
        let mut segs = self.shared.segments.lock().unwrap();
        let mut freed = 0;
        while segs.len() > 1 && segs[1].first <= upto + 1 {
            let s = segs.remove(0);
            let n = std::fs::metadata(&s.path).map_or(0, |m| m.len());
            std::fs::remove_file(&s.path).map_err(|e| io_err("delete", &s.path, e))?;
            freed += n;
        }
        self.shared.bytes.fetch_sub(freed, Ordering::SeqCst);
        Ok(freed)
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    pub fn segment_count(&self) -> usize {
        self.shared.segments.lock().unwrap().len()
    }

    /// The position stored with the newest record when the log was opened.
    pub fn last_position(&self) -> Option<serde_json::Value> {
        self.shared.recovered_position.clone()
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        *self.shared.next.lock().unwrap()
    }

    /// The number of the oldest record kept (`next_seq` when the log is empty).
    pub fn first_seq(&self) -> u64 {
        let next = self.next_seq();
        let segs = self.shared.segments.lock().unwrap();
        segs.first().map_or(next, |s| s.first)
    }

    /// Stop the writer after it has made everything appended durable.
    pub fn close(&self) {
        self.tx.lock().unwrap().take();
        if let Some(w) = self.writer.lock().unwrap().take() {
            let _ = w.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

struct Active {
    file: File,
    path: PathBuf,
    len: u64,
}

fn write_loop(shared: Arc<Shared>, rx: mpsc::Receiver<Msg>, policy: SyncPolicy, seg_bytes: u64) {
    let mut active: Option<Active> = None;
    let mut waiting: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut last_sync = Instant::now();
    let mut failed: Option<String> = None;
    loop {
        // Wait for work: block when nothing is pending, else until the next sync is due.
        let mut closing = false;
        let first = if waiting.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        } else {
            let due = match policy {
                SyncPolicy::EveryBlock => Duration::ZERO,
                SyncPolicy::Interval(d) => d.saturating_sub(last_sync.elapsed()),
            };
            match rx.recv_timeout(due) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            }
        };
        let mut msgs: Vec<Msg> = first.into_iter().collect();
        msgs.extend(rx.try_iter());
        for Msg::Append { seq, bytes, done } in msgs {
            if let Some(e) = &failed {
                let _ = done.send(Err(Error::msg(e.clone())));
                continue;
            }
            match write_record(&shared, &mut active, seq, &bytes, seg_bytes) {
                Ok(()) => waiting.push(done),
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "WAL write failed; receivers stop");
                    let _ = done.send(Err(e));
                    for w in waiting.drain(..) {
                        let _ = w.send(Err(Error::msg(msg.clone())));
                    }
                    failed = Some(msg);
                }
            }
        }
        let due = match policy {
            SyncPolicy::EveryBlock => true,
            SyncPolicy::Interval(d) => last_sync.elapsed() >= d,
        };
        if !waiting.is_empty() && (due || closing) {
            let r = active.as_ref().map_or(Ok(()), |a| {
                a.file.sync_data().map_err(|e| io_err("sync", &a.path, e))
            });
            last_sync = Instant::now();
            let msg = r.as_ref().err().map(|e| e.to_string());
            for w in waiting.drain(..) {
                let _ = w.send(match &msg {
                    None => Ok(()),
                    Some(m) => Err(Error::msg(m.clone())),
                });
            }
            if let Some(m) = msg {
                failed = Some(m);
            }
        }
    }
}

fn write_record(
    shared: &Shared,
    active: &mut Option<Active>,
    seq: u64,
    bytes: &[u8],
    seg_bytes: u64,
) -> Result<()> {
    if active.is_none() {
        // Continue the newest segment, or start the first one.
        let last = shared.segments.lock().unwrap().last().cloned();
        let (path, fresh) = match last {
            Some(s) => (s.path, false),
            None => (segment_path(&shared.dir, seq), true),
        };
        let file = open_append(&path, Access::Private).map_err(|e| io_err("open", &path, e))?;
        let len = file.metadata().map_err(|e| io_err("stat", &path, e))?.len();
        if fresh {
            shared.segments.lock().unwrap().push(Segment {
                first: seq,
                path: path.clone(),
            });
            sync_dir(&shared.dir)?;
        }
        *active = Some(Active { file, path, len });
    }
    let a = active.as_mut().unwrap();
    if a.len >= seg_bytes {
        // Roll: the old segment is complete once synced; the new one starts with this record.
        a.file.sync_data().map_err(|e| io_err("sync", &a.path, e))?;
        let path = segment_path(&shared.dir, seq);
        let file = open_append(&path, Access::Private).map_err(|e| io_err("open", &path, e))?;
        shared.segments.lock().unwrap().push(Segment {
            first: seq,
            path: path.clone(),
        });
        sync_dir(&shared.dir)?;
        *a = Active { file, path, len: 0 };
    }
    if let Err(e) = a.file.write_all(bytes) {
        // Leave no partial record behind: a full disk must not corrupt the log.
        let _ = a.file.set_len(a.len);
        let _ = a.file.seek(SeekFrom::End(0));
        return Err(io_err("write", &a.path, e));
    }
    a.len += bytes.len() as u64;
    shared.bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}
