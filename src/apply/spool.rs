//! Streamed transactions (pgoutput protocol 2, PostgreSQL 14+ sources), held on the target's
//! disk until they commit.
//!
//! With `streaming` on, the source does not keep a large transaction in its memory (nor spill it
//! to its disk) until the commit: it sends the changes in blocks (`Stream Start` … `Stream Stop`)
//! while the transaction is still running, interleaved with other, ordinary transactions, and
//! ends with `Stream Commit` or `Stream Abort` (of the transaction, or of one subtransaction).
//! The target may apply nothing of it before the commit (the other transactions commit first,
//! each atomically), so each streamed transaction's messages are appended to a file of its own
//! and replayed through the ordinary apply path at `Stream Commit` — the same approach as
//! PostgreSQL's own subscriber without parallel apply. Memory stays bounded on both sides.
//!
//! A subtransaction's changes are contiguous from its first change on (the source serializes
//! them), so aborting one truncates the file where it began, dropping it and any later
//! subtransaction. Files live in `base/pgsql_tmp` and are named `pgsql_tmp_livesync_…`: the
//! server removes them at restart, and a connector removes its own when its stream (re)starts —
//! the source then streams unfinished transactions again from their first block.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

const DIR: &str = "base/pgsql_tmp";

struct SpoolFile {
    writer: BufWriter<File>,
    path: PathBuf,
    len: u64,
    /// Subtransactions in the order of their first change, with the offset of that change.
    subxacts: Vec<(u32, u64)>,
}

/// The spool files of one connector's stream.
pub struct Spool {
    dir: PathBuf,
    prefix: String,
    files: HashMap<u32, SpoolFile>,
}

impl Spool {
    /// The spool of connector `connector_id`; files left by an earlier stream are removed.
    pub fn new(connector_id: i32) -> io::Result<Spool> {
        Self::new_in(PathBuf::from(DIR), connector_id)
    }

    fn new_in(dir: PathBuf, connector_id: i32) -> io::Result<Spool> {
        fs::create_dir_all(&dir)?;
        let prefix = format!("pgsql_tmp_livesync_{connector_id}_");
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Spool {
            dir,
            prefix,
            files: HashMap::new(),
        })
    }

    /// `Stream Start` of `xid`: its first block starts a new file.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> io::Result<()> {
        if first_segment || !self.files.contains_key(&xid) {
            self.remove(xid);
            let path = self.dir.join(format!("{}{xid}", self.prefix));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)?;
            self.files.insert(
                xid,
                SpoolFile {
                    writer: BufWriter::with_capacity(256 << 10, file),
                    path,
                    len: 0,
                    subxacts: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// Append one message of the block of `xid`, a change of (sub)transaction `subxid`.
    pub fn append(&mut self, xid: u32, subxid: Option<u32>, message: &[u8]) -> io::Result<()> {
        let f = self
            .files
            .get_mut(&xid)
            .ok_or_else(|| io::Error::other(format!("no Stream Start for transaction {xid}")))?;
        if let Some(sub) = subxid.filter(|s| *s != xid) {
            if !f.subxacts.iter().any(|(s, _)| *s == sub) {
                f.subxacts.push((sub, f.len));
            }
        }
        f.writer.write_all(&(message.len() as u32).to_be_bytes())?;
        f.writer.write_all(message)?;
        f.len += 4 + message.len() as u64;
        Ok(())
    }

    /// `Stream Abort`: the whole transaction (`subxid == xid`) or one subtransaction.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> io::Result<()> {
        if subxid == xid {
            self.remove(xid);
            return Ok(());
        }
        let Some(f) = self.files.get_mut(&xid) else {
            return Ok(());
        };
        let Some(pos) = f.subxacts.iter().position(|(s, _)| *s == subxid) else {
            return Ok(());
        };
        let offset = f.subxacts[pos].1;
        f.subxacts.truncate(pos);
        f.writer.flush()?;
        f.writer.get_mut().set_len(offset)?;
        f.writer.seek(SeekFrom::Start(offset))?;
        f.len = offset;
        Ok(())
    }

    /// `Stream Commit`: the transaction's messages, in order (None when nothing was spooled).
    pub fn take(&mut self, xid: u32) -> io::Result<Option<Replay>> {
        let Some(mut f) = self.files.remove(&xid) else {
            return Ok(None);
        };
        f.writer.flush()?;
        let mut file = f.writer.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some(Replay {
            reader: BufReader::with_capacity(256 << 10, file.take(f.len)),
            path: f.path,
        }))
    }

    fn remove(&mut self, xid: u32) {
        if let Some(f) = self.files.remove(&xid) {
            drop(f.writer);
            let _ = fs::remove_file(&f.path);
        }
    }

    /// Transactions spooled and not yet committed or aborted.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.files.len()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let xids: Vec<u32> = self.files.keys().copied().collect();
        for xid in xids {
            self.remove(xid);
        }
    }
}

/// The messages of a committed streamed transaction; the file goes when this is dropped.
pub struct Replay {
    reader: BufReader<io::Take<File>>,
    path: PathBuf,
}

impl Iterator for Replay {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e)),
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        Some(self.reader.read_exact(&mut buf).map(|()| buf))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_append_abort_subxact_and_replay() {
        let dir = std::env::temp_dir().join(format!("livesync-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = Spool::new_in(dir.clone(), 7).unwrap();
        s.start(100, true).unwrap();
        s.append(100, Some(100), b"top-1").unwrap();
        s.append(100, Some(101), b"sub101-1").unwrap();
        s.append(100, Some(101), b"sub101-2").unwrap();
        s.start(200, true).unwrap();
        s.append(200, Some(200), b"other").unwrap();
        s.append(100, Some(102), b"sub102-1").unwrap();
        s.append(100, Some(100), b"top-2").unwrap();
        // Aborting 102 drops it and what followed; 101 stays.
        s.abort(100, 102).unwrap();
        s.append(100, Some(100), b"top-3").unwrap();
        s.abort(200, 200).unwrap();
        assert_eq!(s.pending(), 1);
        let got: Vec<Vec<u8>> = s.take(100).unwrap().unwrap().map(|m| m.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                b"top-1".to_vec(),
                b"sub101-1".to_vec(),
                b"sub101-2".to_vec(),
                b"top-3".to_vec()
            ]
        );
        assert!(s.take(200).unwrap().is_none());
        // A new stream removes what an earlier one left behind.
        s.start(300, true).unwrap();
        s.append(300, None, b"x").unwrap();
        std::mem::forget(s);
        let _ = Spool::new_in(dir.clone(), 7).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
