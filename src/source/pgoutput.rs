//! Decoding of what a source's walsender sends on a logical replication connection.
//!
//! A `START_REPLICATION SLOT … LOGICAL … (proto_version '1' | '2', publication_names …)` command
//! puts the connection in COPY BOTH mode; every CopyData the server sends is either an `XLogData`
//! ('w') frame wrapping one message of the `pgoutput` plugin, or a primary keepalive ('k'). The
//! client answers with standby status updates ('r') reporting how far it has written, flushed and
//! applied. This module turns those bytes into owned Rust values and back:
//!
//! - [`parse_replication_message`] and [`encode_standby_status`] handle the framing of the
//!   streaming replication protocol (PostgreSQL docs, "Streaming Replication Protocol");
//! - [`Decoder`] decodes the `pgoutput` payloads (docs, "Logical Replication Message Formats"),
//!   protocol version 1 and the version 2 additions for streamed in-progress transactions. In a
//!   streamed transaction the change messages sent between Stream Start and Stream Stop carry the
//!   xid of their (sub)transaction as an extra leading field, so the decoder has to remember whether
//!   it is inside such a block;
//! - [`Lsn`] prints and parses WAL positions the way PostgreSQL does (`16/B374D848`);
//! - [`pg_epoch_micros`] converts wall-clock time to the protocol's timestamps (microseconds since
//!   2000-01-01).
//!
//! It is deliberately pure — only `std`, no pgrx, no I/O, no async runtime — so that every message
//! format is unit-tested with hand-built byte fixtures (`cargo test --lib`) without a running
//! server, and so the apply worker can feed it whatever buffers its connection yields. Decoding
//! never panics: truncated, overlong or unknown input yields a [`DecodeError`] naming the message
//! and the field at fault, which the worker reports and treats as fatal for the stream.
//!
//! Text column values are kept as the exact bytes the server sent (see [`ColumnValue`]); names
//! (schemas, relations, columns, types, origins, message prefixes) must be valid UTF-8, which they
//! are when the replication connection uses `client_encoding` UTF8.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// LSN and timestamps
// ---------------------------------------------------------------------------------------------

/// A WAL position (`pg_lsn`). Displays and parses as PostgreSQL does: the high and low 32 bits in
/// uppercase hex separated by a slash, e.g. `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`, printed `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid LSN \"{}\" (expected two hex numbers of at most 8 digits separated by '/', e.g. 16/B374D848)",
            self.0
        )
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Parses `XXXXXXXX/XXXXXXXX` (1 to 8 hex digits on each side, either case), like `pg_lsn_in`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Result<u64, ParseLsnError> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(part, 16)
                .map(u64::from)
                .map_err(|_| err())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

/// Seconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

fn pg_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
}

/// `t` as the protocol's timestamps: microseconds since 2000-01-01 00:00:00 UTC (negative before;
/// saturating far outside PostgreSQL's range).
pub fn pg_epoch_micros(t: SystemTime) -> i64 {
    match t.duration_since(pg_epoch()) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|v| -v)
            .unwrap_or(i64::MIN),
    }
}

/// The inverse of [`pg_epoch_micros`]; `None` if the platform's `SystemTime` cannot represent it.
pub fn pg_epoch_micros_to_system_time(micros: i64) -> Option<SystemTime> {
    let d = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        pg_epoch().checked_add(d)
    } else {
        pg_epoch().checked_sub(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What went wrong decoding one message; see [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The buffer was empty: no message type byte.
    Empty,
    /// The message type byte is not one this decoder knows.
    UnknownType(u8),
    /// A known message type this decoder does not handle (e.g. two-phase commit messages).
    Unsupported(u8),
    /// The buffer ended while reading `field` at byte `offset`.
    Truncated {
        field: String,
        offset: usize,
        needed: usize,
        remaining: usize,
    },
    /// A field holds a value the protocol does not allow.
    Invalid { field: String, detail: String },
    /// The message was complete but `count` bytes followed it.
    TrailingBytes { count: usize },
    /// The message cannot appear here (e.g. Stream Stop outside a stream block).
    UnexpectedMessage { detail: &'static str },
}

/// A malformed, truncated or unexpected message. `message` names the message being decoded
/// (e.g. `"pgoutput Update"`), `kind` says what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub message: &'static str,
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    fn new(message: &'static str, kind: DecodeErrorKind) -> Self {
        DecodeError { message, kind }
    }
}

fn type_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' (0x{b:02X})", b as char)
    } else {
        format!("0x{b:02X}")
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode {} message: ", self.message)?;
        match &self.kind {
            DecodeErrorKind::Empty => write!(f, "empty message"),
            DecodeErrorKind::UnknownType(b) => write!(f, "unknown message type {}", type_byte(*b)),
            DecodeErrorKind::Unsupported(b) => write!(
                f,
                "message type {} is not supported (two-phase commit messages, protocol version 3)",
                type_byte(*b)
            ),
            DecodeErrorKind::Truncated { field, offset, needed, remaining } => write!(
                f,
                "truncated at byte {offset} reading {field} (needs {needed} byte{}, {remaining} left)",
                if *needed == 1 { "" } else { "s" }
            ),
            DecodeErrorKind::Invalid { field, detail } => write!(f, "invalid {field}: {detail}"),
            DecodeErrorKind::TrailingBytes { count } => {
                write!(f, "{count} unexpected byte{} after the end of the message", if *count == 1 { "" } else { "s" })
            }
            DecodeErrorKind::UnexpectedMessage { detail } => write!(f, "{detail}"),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------------
// Byte reader
// ---------------------------------------------------------------------------------------------

/// Big-endian reader over one message that never reads out of bounds. Field descriptions are
/// `Display` so callers can pass `format_args!` and only pay for formatting on error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(self.message, kind)
    }

    fn invalid(&self, field: impl fmt::Display, detail: impl Into<String>) -> DecodeError {
        self.err(DecodeErrorKind::Invalid {
            field: field.to_string(),
            detail: detail.into(),
        })
    }

    fn take(&mut self, n: usize, field: impl fmt::Display) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(DecodeErrorKind::Truncated {
                field: field.to_string(),
                offset: self.pos,
                needed: n,
                remaining: self.remaining(),
            }));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: impl fmt::Display) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: impl fmt::Display) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn i16(&mut self, field: impl fmt::Display) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: impl fmt::Display) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn u32(&mut self, field: impl fmt::Display) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: impl fmt::Display) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn i64(&mut self, field: impl fmt::Display) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, field: impl fmt::Display) -> Result<Lsn, DecodeError> {
        self.u64(field).map(Lsn)
    }

    /// A NUL-terminated string, which must be UTF-8.
    fn cstr(&mut self, field: impl fmt::Display) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.err(DecodeErrorKind::Truncated {
                field: format!("{field} (no NUL terminator)"),
                offset: self.pos,
                needed: rest.len() + 1,
                remaining: rest.len(),
            }));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| self.invalid(&field, format!("not valid UTF-8 ({e})")))?;
        self.pos += nul + 1;
        Ok(s.to_string())
    }

    /// A length-prefixed (Int32) byte string; negative lengths are invalid.
    fn len_bytes(&mut self, field: impl fmt::Display) -> Result<&'a [u8], DecodeError> {
        let len = self.i32(format_args!("{field} length"))?;
        let len = usize::try_from(len).map_err(|_| {
            self.invalid(format_args!("{field} length"), format!("{len} is negative"))
        })?;
        self.take(len, field)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.err(DecodeErrorKind::TrailingBytes { count })),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming replication framing
// ---------------------------------------------------------------------------------------------

/// One CopyData payload sent by the server on a replication connection. `XLogData` borrows its
/// payload (a pgoutput message, decode it with [`Decoder::decode`]) from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMessage<'a> {
    /// 'w': WAL data starting at `wal_start`; the server's WAL end is `wal_end`.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        send_time: i64,
        data: &'a [u8],
    },
    /// 'k': primary keepalive; when `reply_requested`, answer with a standby status update soon.
    Keepalive {
        wal_end: u64,
        send_time: i64,
        reply_requested: bool,
    },
}

/// Parse the CopyData payload `buf` of a replication connection.
pub fn parse_replication_message(buf: &[u8]) -> Result<ReplicationMessage<'_>, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::new(
            "replication CopyData",
            DecodeErrorKind::Empty,
        ));
    };
    match tag {
        b'w' => {
            let mut r = Reader::new(buf, "XLogData");
            r.pos = 1;
            let wal_start = r.u64("start LSN")?;
            let wal_end = r.u64("end LSN")?;
            let send_time = r.i64("send time")?;
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: &buf[r.pos..],
            })
        }
        b'k' => {
            let mut r = Reader::new(buf, "primary keepalive");
            r.pos = 1;
            let wal_end = r.u64("WAL end")?;
            let send_time = r.i64("send time")?;
            let reply = r.u8("reply requested flag")?;
            r.finish()?;
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested: reply != 0,
            })
        }
        other => Err(DecodeError::new(
            "replication CopyData",
            DecodeErrorKind::UnknownType(other),
        )),
    }
}

/// The CopyData payload of a standby status update ('r'): WAL positions written, flushed and
/// applied by the client (each + 1 past the last byte, as PostgreSQL expects), the client's clock
/// (see [`pg_epoch_micros`]) and whether the server should reply with a keepalive right away.
pub fn encode_standby_status(
    written: u64,
    flushed: u64,
    applied: u64,
    now_us_since_2000: i64,
    reply: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    out.extend_from_slice(&written.to_be_bytes());
    out.extend_from_slice(&flushed.to_be_bytes());
    out.extend_from_slice(&applied.to_be_bytes());
    out.extend_from_slice(&now_us_since_2000.to_be_bytes());
    out.push(u8::from(reply));
    out
}

// ---------------------------------------------------------------------------------------------
// pgoutput messages
// ---------------------------------------------------------------------------------------------

/// One column of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value; the server did not send it (keep the target's value).
    Unchanged,
    /// 't': the value in text format, exact bytes as sent (UTF-8 in a UTF8 database).
    Text(Vec<u8>),
    /// 'b': the value in binary format (only with the `binary` option).
    Binary(Vec<u8>),
}

impl ColumnValue {
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    pub fn is_unchanged(&self) -> bool {
        matches!(self, ColumnValue::Unchanged)
    }

    /// The bytes of a `Text` or `Binary` value.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
            ColumnValue::Null | ColumnValue::Unchanged => None,
        }
    }

    /// A `Text` value as `&str`: `None` for other kinds, `Some(Err)` if it is not UTF-8.
    pub fn as_str(&self) -> Option<Result<&str, std::str::Utf8Error>> {
        match self {
            ColumnValue::Text(b) => Some(std::str::from_utf8(b)),
            _ => None,
        }
    }

    /// A `Text` value as a string, invalid UTF-8 replaced by U+FFFD (for messages and logs).
    pub fn to_string_lossy(&self) -> Option<Cow<'_, str>> {
        match self {
            ColumnValue::Text(b) => Some(String::from_utf8_lossy(b)),
            _ => None,
        }
    }
}

/// A row image: one value per column of the relation, in attribute order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<ColumnValue>);

impl TupleData {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&ColumnValue> {
        self.0.get(i)
    }
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity key columns are set (the others are NULL).
    Key(TupleData),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `pg_class.relreplident` of a published relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// 'B': start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01.
    pub commit_time: i64,
    pub xid: u32,
}

/// 'C': end of a transaction started by [`Begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused (0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is applied.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// 'O': the replication origin the transaction came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// 'R': description of a relation, sent before the first change to it (and again after it changed)
/// in each session; tuples of later changes reference it by `rel_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Present inside a stream block (protocol 2).
    pub xid: Option<u32>,
    pub rel_id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// 'Y': description of a non-built-in data type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<u32>,
    pub type_oid: u32,
    pub namespace: String,
    pub name: String,
}

/// 'I'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub rel_id: u32,
    pub new: TupleData,
}

/// 'U': `old` is present when the key changed ('K') or with REPLICA IDENTITY FULL ('O').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub rel_id: u32,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// 'D'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub rel_id: u32,
    pub old: OldTuple,
}

/// Truncate option bit: CASCADE.
pub const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: RESTART IDENTITY.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// 'T'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    /// [`TRUNCATE_CASCADE`] | [`TRUNCATE_RESTART_IDENTITY`].
    pub options: u8,
    pub rel_ids: Vec<u32>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.options & TRUNCATE_CASCADE != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & TRUNCATE_RESTART_IDENTITY != 0
    }
}

/// 'M': a message emitted with `pg_logical_emit_message` (only with the `messages` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub xid: Option<u32>,
    /// Bit 1: transactional.
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Vec<u8>,
}

impl Message {
    pub fn is_transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// 'S' (protocol 2): start of a block of changes of the in-progress transaction `xid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// 'c' (protocol 2): commit of a streamed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// 'A' (protocol 2): abort of a streamed transaction (`subxid == xid`) or of one of its
/// subtransactions. Protocol 4 (parallel apply) adds the abort's LSN and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<i64>,
}

/// One decoded pgoutput message, owning its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    /// 'E' (protocol 2): end of a block started by Stream Start.
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl LogicalMessage {
    /// The message's name in PostgreSQL's documentation, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            LogicalMessage::Begin(_) => "Begin",
            LogicalMessage::Commit(_) => "Commit",
            LogicalMessage::Origin(_) => "Origin",
            LogicalMessage::Relation(_) => "Relation",
            LogicalMessage::Type(_) => "Type",
            LogicalMessage::Insert(_) => "Insert",
            LogicalMessage::Update(_) => "Update",
            LogicalMessage::Delete(_) => "Delete",
            LogicalMessage::Truncate(_) => "Truncate",
            LogicalMessage::Message(_) => "Message",
            LogicalMessage::StreamStart(_) => "Stream Start",
            LogicalMessage::StreamStop => "Stream Stop",
            LogicalMessage::StreamCommit(_) => "Stream Commit",
            LogicalMessage::StreamAbort(_) => "Stream Abort",
        }
    }

    /// The transaction id the message carries, if any (Begin, stream control messages, and change
    /// messages inside a stream block).
    pub fn xid(&self) -> Option<u32> {
        match self {
            LogicalMessage::Begin(m) => Some(m.xid),
            LogicalMessage::Relation(m) => m.xid,
            LogicalMessage::Type(m) => m.xid,
            LogicalMessage::Insert(m) => m.xid,
            LogicalMessage::Update(m) => m.xid,
            LogicalMessage::Delete(m) => m.xid,
            LogicalMessage::Truncate(m) => m.xid,
            LogicalMessage::Message(m) => m.xid,
            LogicalMessage::StreamStart(m) => Some(m.xid),
            LogicalMessage::StreamCommit(m) => Some(m.xid),
            LogicalMessage::StreamAbort(m) => Some(m.xid),
            LogicalMessage::Commit(_) | LogicalMessage::Origin(_) | LogicalMessage::StreamStop => {
                None
            }
        }
    }
}

/// Decodes the pgoutput messages of one replication session in order, tracking whether the
/// current message is inside a Stream Start … Stream Stop block (where change messages carry a
/// leading xid). A failed decode leaves that state unchanged.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// A decoder inside a stream block: for replaying the spooled messages of a streamed
    /// transaction (changes with their leading xid).
    pub fn streamed() -> Self {
        Decoder { in_stream: true }
    }

    /// Whether the last message decoded was inside a stream block.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Forget the stream state (for a new replication session).
    pub fn reset(&mut self) {
        self.in_stream = false;
    }

    /// Decode one pgoutput message (the `data` of an XLogData frame).
    pub fn decode(&mut self, data: &[u8]) -> Result<LogicalMessage, DecodeError> {
        let Some(&tag) = data.first() else {
            return Err(DecodeError::new("pgoutput", DecodeErrorKind::Empty));
        };
        let name = match tag {
            b'B' => "pgoutput Begin",
            b'C' => "pgoutput Commit",
            b'O' => "pgoutput Origin",
            b'R' => "pgoutput Relation",
            b'Y' => "pgoutput Type",
            b'I' => "pgoutput Insert",
            b'U' => "pgoutput Update",
            b'D' => "pgoutput Delete",
            b'T' => "pgoutput Truncate",
            b'M' => "pgoutput Message",
            b'S' => "pgoutput Stream Start",
            b'E' => "pgoutput Stream Stop",
            b'c' => "pgoutput Stream Commit",
            b'A' => "pgoutput Stream Abort",
            b'b' | b'P' | b'K' | b'r' | b'p' => {
                return Err(DecodeError::new(
                    "pgoutput",
                    DecodeErrorKind::Unsupported(tag),
                ))
            }
            _ => {
                return Err(DecodeError::new(
                    "pgoutput",
                    DecodeErrorKind::UnknownType(tag),
                ))
            }
        };
        let mut r = Reader::new(data, name);
        r.pos = 1;
        let in_stream = self.in_stream;
        let unexpected = |detail: &'static str| -> Result<LogicalMessage, DecodeError> {
            Err(DecodeError::new(
                name,
                DecodeErrorKind::UnexpectedMessage { detail },
            ))
        };
        let r_xid = |r: &mut Reader<'_>| {
            if in_stream {
                r.u32("xid").map(Some)
            } else {
                Ok(None)
            }
        };

        let msg = match tag {
            b'B' => {
                if in_stream {
                    return unexpected("Begin inside a stream block");
                }
                LogicalMessage::Begin(Begin {
                    final_lsn: r.lsn("final LSN")?,
                    commit_time: r.i64("commit timestamp")?,
                    xid: r.u32("xid")?,
                })
            }
            b'C' => {
                if in_stream {
                    return unexpected("Commit inside a stream block");
                }
                LogicalMessage::Commit(Commit {
                    flags: r.u8("flags")?,
                    commit_lsn: r.lsn("commit LSN")?,
                    end_lsn: r.lsn("end LSN")?,
                    commit_time: r.i64("commit timestamp")?,
                })
            }
            b'O' => LogicalMessage::Origin(Origin {
                commit_lsn: r.lsn("origin commit LSN")?,
                name: r.cstr("origin name")?,
            }),
            b'R' => {
                let xid = r_xid(&mut r)?;
                let rel_id = r.u32("relation OID")?;
                let namespace = r.cstr("namespace")?;
                let rel_name = r.cstr("relation name")?;
                let ident = r.u8("replica identity")?;
                let replica_identity = ReplicaIdentity::from_byte(ident).ok_or_else(|| {
                    r.invalid(
                        "replica identity",
                        format!("unknown setting {}", type_byte(ident)),
                    )
                })?;
                let ncols = r.i16("number of columns")?;
                let ncols = usize::try_from(ncols)
                    .map_err(|_| r.invalid("number of columns", format!("{ncols} is negative")))?;
                // Each column takes at least 10 bytes: don't let a bogus count allocate.
                let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
                for i in 1..=ncols {
                    columns.push(Column {
                        flags: r.u8(format_args!("column {i} flags"))?,
                        name: r.cstr(format_args!("column {i} name"))?,
                        type_oid: r.u32(format_args!("column {i} type OID"))?,
                        type_modifier: r.i32(format_args!("column {i} type modifier"))?,
                    });
                }
                LogicalMessage::Relation(Relation {
                    xid,
                    rel_id,
                    namespace,
                    name: rel_name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => LogicalMessage::Type(Type {
                xid: r_xid(&mut r)?,
                type_oid: r.u32("type OID")?,
                namespace: r.cstr("namespace")?,
                name: r.cstr("type name")?,
            }),
            b'I' => {
                let xid = r_xid(&mut r)?;
                let rel_id = r.u32("relation OID")?;
                let marker = r.u8("new tuple marker")?;
                if marker != b'N' {
                    return Err(r.invalid(
                        "new tuple marker",
                        format!("expected 'N', got {}", type_byte(marker)),
                    ));
                }
                LogicalMessage::Insert(Insert {
                    xid,
                    rel_id,
                    new: read_tuple(&mut r, "new tuple")?,
                })
            }
            b'U' => {
                let xid = r_xid(&mut r)?;
                let rel_id = r.u32("relation OID")?;
                let marker = r.u8("tuple marker")?;
                let old = match marker {
                    b'K' | b'O' => {
                        let old = read_old_tuple(&mut r, marker)?;
                        let marker = r.u8("new tuple marker")?;
                        if marker != b'N' {
                            return Err(r.invalid(
                                "new tuple marker",
                                format!("expected 'N', got {}", type_byte(marker)),
                            ));
                        }
                        Some(old)
                    }
                    b'N' => None,
                    _ => {
                        return Err(r.invalid(
                            "tuple marker",
                            format!("expected 'K', 'O' or 'N', got {}", type_byte(marker)),
                        ))
                    }
                };
                LogicalMessage::Update(Update {
                    xid,
                    rel_id,
                    old,
                    new: read_tuple(&mut r, "new tuple")?,
                })
            }
            b'D' => {
                let xid = r_xid(&mut r)?;
                let rel_id = r.u32("relation OID")?;
                let marker = r.u8("old tuple marker")?;
                if marker != b'K' && marker != b'O' {
                    return Err(r.invalid(
                        "old tuple marker",
                        format!("expected 'K' or 'O', got {}", type_byte(marker)),
                    ));
                }
                LogicalMessage::Delete(Delete {
                    xid,
                    rel_id,
                    old: read_old_tuple(&mut r, marker)?,
                })
            }
            b'T' => {
                let xid = r_xid(&mut r)?;
                let count = r.i32("number of relations")?;
                let count = usize::try_from(count).map_err(|_| {
                    r.invalid("number of relations", format!("{count} is negative"))
                })?;
                let options = r.u8("options")?;
                let mut rel_ids = Vec::with_capacity(count.min(r.remaining() / 4));
                for i in 1..=count {
                    rel_ids.push(r.u32(format_args!("relation OID {i} of {count}"))?);
                }
                LogicalMessage::Truncate(Truncate {
                    xid,
                    options,
                    rel_ids,
                })
            }
            b'M' => LogicalMessage::Message(Message {
                xid: r_xid(&mut r)?,
                flags: r.u8("flags")?,
                lsn: r.lsn("message LSN")?,
                prefix: r.cstr("prefix")?,
                content: r.len_bytes("content")?.to_vec(),
            }),
            b'S' => {
                if in_stream {
                    return unexpected("Stream Start inside a stream block (missing Stream Stop)");
                }
                let xid = r.u32("xid")?;
                let first = r.u8("first segment flag")?;
                LogicalMessage::StreamStart(StreamStart {
                    xid,
                    first_segment: first != 0,
                })
            }
            b'E' => {
                if !in_stream {
                    return unexpected("Stream Stop outside a stream block");
                }
                LogicalMessage::StreamStop
            }
            b'c' => {
                if in_stream {
                    return unexpected("Stream Commit inside a stream block (missing Stream Stop)");
                }
                LogicalMessage::StreamCommit(StreamCommit {
                    xid: r.u32("xid")?,
                    flags: r.u8("flags")?,
                    commit_lsn: r.lsn("commit LSN")?,
                    end_lsn: r.lsn("end LSN")?,
                    commit_time: r.i64("commit timestamp")?,
                })
            }
            b'A' => {
                if in_stream {
                    return unexpected("Stream Abort inside a stream block (missing Stream Stop)");
                }
                let xid = r.u32("xid")?;
                let subxid = r.u32("subtransaction xid")?;
                // Protocol 4 (streaming = parallel) appends the abort LSN and timestamp.
                // Anything shorter is left for `finish` to report.
                let (abort_lsn, abort_time) = if r.remaining() >= 16 {
                    (Some(r.lsn("abort LSN")?), Some(r.i64("abort timestamp")?))
                } else {
                    (None, None)
                };
                LogicalMessage::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort_lsn,
                    abort_time,
                })
            }
            _ => unreachable!("message types are filtered above"),
        };
        r.finish()?;
        match msg {
            LogicalMessage::StreamStart(_) => self.in_stream = true,
            LogicalMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}

fn read_old_tuple(r: &mut Reader<'_>, marker: u8) -> Result<OldTuple, DecodeError> {
    Ok(if marker == b'K' {
        OldTuple::Key(read_tuple(r, "old key tuple")?)
    } else {
        OldTuple::Full(read_tuple(r, "old tuple")?)
    })
}

fn read_tuple(r: &mut Reader<'_>, what: &str) -> Result<TupleData, DecodeError> {
    let ncols = r.i16(format_args!("{what} number of columns"))?;
    let ncols = usize::try_from(ncols).map_err(|_| {
        r.invalid(
            format_args!("{what} number of columns"),
            format!("{ncols} is negative"),
        )
    })?;
    let mut values = Vec::with_capacity(ncols.min(r.remaining()));
    for i in 1..=ncols {
        let kind = r.u8(format_args!("{what} column {i} kind"))?;
        values.push(match kind {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::Unchanged,
            b't' => ColumnValue::Text(
                r.len_bytes(format_args!("{what} column {i} text value"))?
                    .to_vec(),
            ),
            b'b' => ColumnValue::Binary(
                r.len_bytes(format_args!("{what} column {i} binary value"))?
                    .to_vec(),
            ),
            other => {
                return Err(r.invalid(
                    format_args!("{what} column {i} kind"),
                    format!("expected 'n', 'u', 't' or 'b', got {}", type_byte(other)),
                ))
            }
        });
    }
    Ok(TupleData(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    // -- fixture builders ----------------------------------------------------------------------

    fn put_u8(b: &mut Vec<u8>, v: u8) {
        b.push(v);
    }
    fn put_i16(b: &mut Vec<u8>, v: i16) {
        b.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i32(b: &mut Vec<u8>, v: i32) {
        b.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(b: &mut Vec<u8>, v: u64) {
        b.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i64(b: &mut Vec<u8>, v: i64) {
        b.extend_from_slice(&v.to_be_bytes());
    }
    fn put_cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    /// A tuple column of a fixture: NULL ('n'), unchanged TOAST ('u'), text ('t') or binary ('b').
    enum Col<'a> {
        N,
        U,
        T(&'a [u8]),
        B(&'a [u8]),
    }

    fn put_tuple(b: &mut Vec<u8>, cols: &[Col<'_>]) {
        put_i16(b, cols.len() as i16);
        for c in cols {
            match c {
                Col::N => put_u8(b, b'n'),
                Col::U => put_u8(b, b'u'),
                Col::T(v) | Col::B(v) => {
                    put_u8(b, if matches!(c, Col::T(_)) { b't' } else { b'b' });
                    put_i32(b, v.len() as i32);
                    b.extend_from_slice(v);
                }
            }
        }
    }

    fn xid_prefix(tag: u8, xid: Option<u32>) -> Vec<u8> {
        let mut b = vec![tag];
        if let Some(x) = xid {
            put_u32(&mut b, x);
        }
        b
    }

    fn begin_msg() -> Vec<u8> {
        let mut b = vec![b'B'];
        put_u64(&mut b, 0x16_B374_D848);
        put_i64(&mut b, 765_432_100_000_000);
        put_u32(&mut b, 742);
        b
    }

    fn commit_msg() -> Vec<u8> {
        let mut b = vec![b'C'];
        put_u8(&mut b, 0);
        put_u64(&mut b, 0x16_B374_D848);
        put_u64(&mut b, 0x16_B374_D878);
        put_i64(&mut b, 765_432_100_000_000);
        b
    }

    fn origin_msg() -> Vec<u8> {
        let mut b = vec![b'O'];
        put_u64(&mut b, 0x1_0000_0010);
        put_cstr(&mut b, "pg_16390");
        b
    }

    fn relation_msg(xid: Option<u32>) -> Vec<u8> {
        let mut b = xid_prefix(b'R', xid);
        put_u32(&mut b, 16_384);
        put_cstr(&mut b, "public");
        put_cstr(&mut b, "métrics");
        put_u8(&mut b, b'd');
        put_i16(&mut b, 4);
        for (flags, name, oid, typmod) in [
            (1u8, "device_id", 23u32, -1i32),
            (1, "ts", 1184, -1),
            (0, "value", 1700, 655_366),
            (0, "note", 25, -1),
        ] {
            put_u8(&mut b, flags);
            put_cstr(&mut b, name);
            put_u32(&mut b, oid);
            put_i32(&mut b, typmod);
        }
        b
    }

    fn type_msg(xid: Option<u32>) -> Vec<u8> {
        let mut b = xid_prefix(b'Y', xid);
        put_u32(&mut b, 16_400);
        put_cstr(&mut b, "public");
        put_cstr(&mut b, "mood");
        b
    }

    fn insert_msg(xid: Option<u32>) -> Vec<u8> {
        let mut b = xid_prefix(b'I', xid);
        put_u32(&mut b, 16_384);
        put_u8(&mut b, b'N');
        put_tuple(
            &mut b,
            &[
                Col::T(b"42"),
                Col::T(b"2024-01-01 00:00:00+00"),
                Col::N,
                Col::T(b""),
            ],
        );
        b
    }

    fn update_msg(xid: Option<u32>, old: Option<u8>) -> Vec<u8> {
        let mut b = xid_prefix(b'U', xid);
        put_u32(&mut b, 16_384);
        if let Some(marker) = old {
            put_u8(&mut b, marker);
            if marker == b'K' {
                put_tuple(
                    &mut b,
                    &[
                        Col::T(b"41"),
                        Col::T(b"2024-01-01 00:00:00+00"),
                        Col::N,
                        Col::N,
                    ],
                );
            } else {
                put_tuple(
                    &mut b,
                    &[
                        Col::T(b"41"),
                        Col::T(b"2024-01-01 00:00:00+00"),
                        Col::T(b"1.5"),
                        Col::N,
                    ],
                );
            }
        }
        put_u8(&mut b, b'N');
        put_tuple(
            &mut b,
            &[
                Col::T(b"42"),
                Col::T(b"2024-01-01 00:00:00+00"),
                Col::T(b"2.5"),
                Col::U,
            ],
        );
        b
    }

    fn delete_msg(xid: Option<u32>, marker: u8) -> Vec<u8> {
        let mut b = xid_prefix(b'D', xid);
        put_u32(&mut b, 16_384);
        put_u8(&mut b, marker);
        put_tuple(
            &mut b,
            &[
                Col::T(b"42"),
                Col::T(b"2024-01-01 00:00:00+00"),
                Col::N,
                Col::N,
            ],
        );
        b
    }

    fn truncate_msg(xid: Option<u32>) -> Vec<u8> {
        let mut b = xid_prefix(b'T', xid);
        put_i32(&mut b, 3);
        put_u8(&mut b, TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY);
        for oid in [16_384u32, 16_390, 16_395] {
            put_u32(&mut b, oid);
        }
        b
    }

    fn message_msg(xid: Option<u32>) -> Vec<u8> {
        let mut b = xid_prefix(b'M', xid);
        put_u8(&mut b, 1);
        put_u64(&mut b, 0x2_0000_0100);
        put_cstr(&mut b, "livesync");
        put_i32(&mut b, 3);
        b.extend_from_slice(b"\x00\xffx");
        b
    }

    fn stream_start_msg(xid: u32, first: bool) -> Vec<u8> {
        let mut b = vec![b'S'];
        put_u32(&mut b, xid);
        put_u8(&mut b, u8::from(first));
        b
    }

    fn stream_commit_msg(xid: u32) -> Vec<u8> {
        let mut b = vec![b'c'];
        put_u32(&mut b, xid);
        put_u8(&mut b, 0);
        put_u64(&mut b, 0x3_0000_0000);
        put_u64(&mut b, 0x3_0000_0030);
        put_i64(&mut b, 1_000_000);
        b
    }

    fn stream_abort_msg(xid: u32, subxid: u32) -> Vec<u8> {
        let mut b = vec![b'A'];
        put_u32(&mut b, xid);
        put_u32(&mut b, subxid);
        b
    }

    fn decode_outside(b: &[u8]) -> LogicalMessage {
        Decoder::new().decode(b).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decode_inside(b: &[u8]) -> LogicalMessage {
        let mut d = Decoder::new();
        d.decode(&stream_start_msg(900, true)).unwrap();
        d.decode(b).unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(s.as_bytes().to_vec())
    }

    // -- LSN and time --------------------------------------------------------------------------

    #[test]
    fn lsn_display_and_parse() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x1_0000_000A).to_string(), "1/A");
        for v in [
            0u64,
            1,
            0x16_B374_D848,
            0xFFFF_FFFF,
            0x1_0000_0000,
            u64::MAX,
        ] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000016/0B374D84".parse::<Lsn>(), Ok(Lsn(0x16_0B37_4D84)));
        for bad in [
            "",
            "16",
            "/1",
            "1/",
            "16/B374D848/1",
            "+1/1",
            "1/-1",
            "123456789/0",
            "G/0",
            " 1/1",
            "1/1 ",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
        assert!("x/1"
            .parse::<Lsn>()
            .unwrap_err()
            .to_string()
            .contains("\"x/1\""));
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
        assert!(!Lsn::INVALID.is_valid());
    }

    #[test]
    fn pg_epoch_conversion() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(pg_epoch_micros(pg_epoch), 0);
        assert_eq!(
            pg_epoch_micros(pg_epoch + Duration::from_micros(1_500_001)),
            1_500_001
        );
        assert_eq!(pg_epoch_micros(UNIX_EPOCH), -946_684_800_000_000);
        assert_eq!(
            pg_epoch_micros_to_system_time(1_500_001),
            Some(pg_epoch + Duration::from_micros(1_500_001))
        );
        assert_eq!(
            pg_epoch_micros_to_system_time(-946_684_800_000_000),
            Some(UNIX_EPOCH)
        );
        let now = SystemTime::now();
        let back = pg_epoch_micros_to_system_time(pg_epoch_micros(now)).unwrap();
        assert!(now.duration_since(back).unwrap() < Duration::from_micros(1));
    }

    // -- replication framing -------------------------------------------------------------------

    #[test]
    fn xlogdata_frame() {
        let mut b = vec![b'w'];
        put_u64(&mut b, 0x16_B374_D848);
        put_u64(&mut b, 0x16_B374_D900);
        put_i64(&mut b, 765_432_100_123_456);
        b.extend_from_slice(&begin_msg());
        let msg = parse_replication_message(&b).unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            data,
        } = msg
        else {
            panic!("{msg:?}")
        };
        assert_eq!(
            (wal_start, wal_end, send_time),
            (0x16_B374_D848, 0x16_B374_D900, 765_432_100_123_456)
        );
        assert_eq!(data, &begin_msg()[..]);
        assert!(matches!(decode_outside(data), LogicalMessage::Begin(_)));
        // An empty payload is still a well-formed frame.
        assert!(matches!(
            parse_replication_message(&b[..25]),
            Ok(ReplicationMessage::XLogData { data: [], .. })
        ));
        for n in 0..25 {
            assert!(parse_replication_message(&b[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn keepalive_frame() {
        let mut b = vec![b'k'];
        put_u64(&mut b, 0x16_B374_D848);
        put_i64(&mut b, 765_432_100_000_000);
        put_u8(&mut b, 1);
        assert_eq!(
            parse_replication_message(&b),
            Ok(ReplicationMessage::Keepalive {
                wal_end: 0x16_B374_D848,
                send_time: 765_432_100_000_000,
                reply_requested: true
            })
        );
        b[17] = 0;
        assert!(matches!(
            parse_replication_message(&b),
            Ok(ReplicationMessage::Keepalive {
                reply_requested: false,
                ..
            })
        ));
        for n in 0..b.len() {
            let e = parse_replication_message(&b[..n]).unwrap_err();
            if n > 0 {
                assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }), "{e}");
            }
        }
        b.push(0);
        assert!(matches!(
            parse_replication_message(&b).unwrap_err().kind,
            DecodeErrorKind::TrailingBytes { count: 1 }
        ));
        let e = parse_replication_message(b"x123").unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnknownType(b'x'));
        assert!(e.to_string().contains("'x'"), "{e}");
    }

    #[test]
    fn standby_status_bytes() {
        let b = encode_standby_status(
            0x0102_0304_0506_0708,
            0x10,
            0x0F,
            0x0011_2233_4455_6677,
            true,
        );
        let mut expected = vec![b'r'];
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x0F]);
        expected.extend_from_slice(&[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
        expected.push(1);
        assert_eq!(b, expected);
        assert_eq!(b.len(), 34);
        let b = encode_standby_status(0, 0, 0, -1, false);
        assert_eq!(&b[25..33], &[0xFF; 8]);
        assert_eq!(b[33], 0);
    }

    // -- pgoutput, protocol 1 ------------------------------------------------------------------

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode_outside(&begin_msg()),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 765_432_100_000_000,
                xid: 742
            })
        );
        assert_eq!(
            decode_outside(&commit_msg()),
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: 765_432_100_000_000
            })
        );
        assert_eq!(decode_outside(&begin_msg()).xid(), Some(742));
    }

    #[test]
    fn origin() {
        assert_eq!(
            decode_outside(&origin_msg()),
            LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(0x1_0000_0010),
                name: "pg_16390".into()
            })
        );
    }

    #[test]
    fn relation_with_key_columns() {
        let LogicalMessage::Relation(rel) = decode_outside(&relation_msg(None)) else {
            panic!()
        };
        assert_eq!(rel.xid, None);
        assert_eq!(rel.rel_id, 16_384);
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "métrics");
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        let names: Vec<_> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["device_id", "ts", "value", "note"]);
        let keys: Vec<_> = rel.columns.iter().map(Column::is_key).collect();
        assert_eq!(keys, [true, true, false, false]);
        assert_eq!(
            rel.columns[2],
            Column {
                flags: 0,
                name: "value".into(),
                type_oid: 1700,
                type_modifier: 655_366
            }
        );
        assert_eq!(rel.columns[1].type_oid, 1184);
        assert_eq!(rel.columns[0].type_modifier, -1);

        for (byte, ident) in [
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
            (b'd', ReplicaIdentity::Default),
        ] {
            assert_eq!(ReplicaIdentity::from_byte(byte), Some(ident));
            assert_eq!(ident.as_byte(), byte);
        }
        // replica identity byte sits after "R", OID, "public\0", "métrics\0".
        let mut bad = relation_msg(None);
        let pos = 1 + 4 + 7 + "métrics".len() + 1;
        assert_eq!(bad[pos], b'd');
        bad[pos] = b'z';
        let e = Decoder::new().decode(&bad).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("replica identity"), "{e}");
    }

    #[test]
    fn relation_without_columns() {
        let mut b = vec![b'R'];
        put_u32(&mut b, 1);
        put_cstr(&mut b, "s");
        put_cstr(&mut b, "t");
        put_u8(&mut b, b'n');
        put_i16(&mut b, 0);
        let LogicalMessage::Relation(rel) = decode_outside(&b) else {
            panic!()
        };
        assert!(rel.columns.is_empty());
    }

    #[test]
    fn type_message() {
        assert_eq!(
            decode_outside(&type_msg(None)),
            LogicalMessage::Type(Type {
                xid: None,
                type_oid: 16_400,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
        assert_eq!(
            decode_inside(&type_msg(Some(901))),
            LogicalMessage::Type(Type {
                xid: Some(901),
                type_oid: 16_400,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
    }

    #[test]
    fn insert_with_null_and_empty_text() {
        let LogicalMessage::Insert(ins) = decode_outside(&insert_msg(None)) else {
            panic!()
        };
        assert_eq!(ins.xid, None);
        assert_eq!(ins.rel_id, 16_384);
        assert_eq!(
            ins.new,
            TupleData(vec![
                text("42"),
                text("2024-01-01 00:00:00+00"),
                ColumnValue::Null,
                text("")
            ])
        );
        assert_eq!(ins.new.len(), 4);
        assert_eq!(ins.new.get(0).unwrap().as_str(), Some(Ok("42")));
        assert!(ins.new.get(2).unwrap().is_null());
        assert_eq!(ins.new.get(3).unwrap().bytes(), Some(&b""[..]));
    }

    #[test]
    fn text_values_keep_exact_bytes() {
        let mut b = vec![b'I'];
        put_u32(&mut b, 7);
        put_u8(&mut b, b'N');
        put_tuple(
            &mut b,
            &[
                Col::T(b"caf\xc3\xa9"),
                Col::T(b"bad \xff utf8"),
                Col::T(b"nul\x00inside"),
                Col::B(b"\x00\x01"),
            ],
        );
        let LogicalMessage::Insert(ins) = decode_outside(&b) else {
            panic!()
        };
        let v = &ins.new.0;
        assert_eq!(v[0].as_str(), Some(Ok("café")));
        assert_eq!(v[1], ColumnValue::Text(b"bad \xff utf8".to_vec()));
        assert!(matches!(v[1].as_str(), Some(Err(_))));
        assert_eq!(v[1].to_string_lossy().unwrap(), "bad \u{fffd} utf8");
        assert_eq!(v[2].bytes(), Some(&b"nul\x00inside"[..]));
        assert_eq!(v[3], ColumnValue::Binary(vec![0, 1]));
        assert_eq!(v[3].as_str(), None);
        assert_eq!(v[3].bytes(), Some(&[0u8, 1][..]));
    }

    #[test]
    fn update_without_old_tuple() {
        let LogicalMessage::Update(up) = decode_outside(&update_msg(None, None)) else {
            panic!()
        };
        assert_eq!(up.rel_id, 16_384);
        assert_eq!(up.old, None);
        assert_eq!(
            up.new,
            TupleData(vec![
                text("42"),
                text("2024-01-01 00:00:00+00"),
                text("2.5"),
                ColumnValue::Unchanged
            ])
        );
        assert!(up.new.0[3].is_unchanged());
        assert_eq!(up.new.0[3].bytes(), None);
    }

    #[test]
    fn update_with_key_and_full_old_tuple() {
        let LogicalMessage::Update(up) = decode_outside(&update_msg(None, Some(b'K'))) else {
            panic!()
        };
        assert_eq!(
            up.old,
            Some(OldTuple::Key(TupleData(vec![
                text("41"),
                text("2024-01-01 00:00:00+00"),
                ColumnValue::Null,
                ColumnValue::Null
            ])))
        );
        assert_eq!(up.new.0[0], text("42"));

        let LogicalMessage::Update(up) = decode_outside(&update_msg(None, Some(b'O'))) else {
            panic!()
        };
        let Some(OldTuple::Full(old)) = &up.old else {
            panic!("{:?}", up.old)
        };
        assert_eq!(old.0[2], text("1.5"));
        assert_eq!(up.old.as_ref().unwrap().tuple().len(), 4);
        assert_eq!(up.new.0[2], text("2.5"));

        // The new tuple must follow the old one with an 'N'.
        let mut bad = update_msg(None, Some(b'O'));
        let n_pos = bad.iter().rposition(|&b| b == b'N').unwrap();
        bad[n_pos] = b'K';
        let e = Decoder::new().decode(&bad).unwrap_err();
        assert!(e.to_string().contains("new tuple marker"), "{e}");
        let mut bad = update_msg(None, None);
        bad[5] = b'X';
        let e = Decoder::new().decode(&bad).unwrap_err();
        assert!(e.to_string().contains("expected 'K', 'O' or 'N'"), "{e}");
    }

    #[test]
    fn delete_key_and_full() {
        let LogicalMessage::Delete(del) = decode_outside(&delete_msg(None, b'K')) else {
            panic!()
        };
        assert_eq!(del.rel_id, 16_384);
        assert!(matches!(&del.old, OldTuple::Key(t) if t.0[0] == text("42") && t.0[3].is_null()));
        let LogicalMessage::Delete(del) = decode_outside(&delete_msg(None, b'O')) else {
            panic!()
        };
        assert!(matches!(del.old, OldTuple::Full(_)));
        let e = Decoder::new().decode(&delete_msg(None, b'N')).unwrap_err();
        assert!(e.to_string().contains("old tuple marker"), "{e}");
    }

    #[test]
    fn truncate_with_options() {
        let LogicalMessage::Truncate(t) = decode_outside(&truncate_msg(None)) else {
            panic!()
        };
        assert_eq!(t.rel_ids, [16_384, 16_390, 16_395]);
        assert!(t.cascade() && t.restart_identity());
        let mut b = vec![b'T'];
        put_i32(&mut b, 1);
        put_u8(&mut b, 0);
        put_u32(&mut b, 5);
        let LogicalMessage::Truncate(t) = decode_outside(&b) else {
            panic!()
        };
        assert_eq!(
            (t.cascade(), t.restart_identity(), t.rel_ids),
            (false, false, vec![5])
        );
        b[5] = TRUNCATE_RESTART_IDENTITY;
        let LogicalMessage::Truncate(t) = decode_outside(&b) else {
            panic!()
        };
        assert_eq!((t.cascade(), t.restart_identity()), (false, true));
    }

    #[test]
    fn logical_decoding_message() {
        assert_eq!(
            decode_outside(&message_msg(None)),
            LogicalMessage::Message(Message {
                xid: None,
                flags: 1,
                lsn: Lsn(0x2_0000_0100),
                prefix: "livesync".into(),
                content: b"\x00\xffx".to_vec()
            })
        );
        let LogicalMessage::Message(m) = decode_outside(&message_msg(None)) else {
            panic!()
        };
        assert!(m.is_transactional());
    }

    // -- pgoutput, protocol 2 streaming --------------------------------------------------------

    #[test]
    fn streamed_transaction_that_commits() {
        let mut d = Decoder::new();
        assert!(!d.in_stream());
        assert_eq!(
            d.decode(&stream_start_msg(900, true)).unwrap(),
            LogicalMessage::StreamStart(StreamStart {
                xid: 900,
                first_segment: true
            })
        );
        assert!(d.in_stream());

        // Inside the block every change-ish message has a leading xid; Origin does not.
        let LogicalMessage::Origin(o) = d.decode(&origin_msg()).unwrap() else {
            panic!()
        };
        assert_eq!(o.name, "pg_16390");
        let LogicalMessage::Relation(rel) = d.decode(&relation_msg(Some(900))).unwrap() else {
            panic!()
        };
        assert_eq!(
            (rel.xid, rel.rel_id, rel.columns.len()),
            (Some(900), 16_384, 4)
        );
        let LogicalMessage::Type(ty) = d.decode(&type_msg(Some(900))).unwrap() else {
            panic!()
        };
        assert_eq!((ty.xid, ty.name.as_str()), (Some(900), "mood"));
        let LogicalMessage::Insert(ins) = d.decode(&insert_msg(Some(901))).unwrap() else {
            panic!()
        };
        assert_eq!((ins.xid, ins.rel_id, ins.new.len()), (Some(901), 16_384, 4));
        let LogicalMessage::Update(up) = d.decode(&update_msg(Some(900), Some(b'K'))).unwrap()
        else {
            panic!()
        };
        assert_eq!(up.xid, Some(900));
        assert!(matches!(up.old, Some(OldTuple::Key(_))));
        let LogicalMessage::Update(up) = d.decode(&update_msg(Some(900), None)).unwrap() else {
            panic!()
        };
        assert_eq!((up.xid, up.old), (Some(900), None));
        let LogicalMessage::Delete(del) = d.decode(&delete_msg(Some(900), b'O')).unwrap() else {
            panic!()
        };
        assert_eq!(del.xid, Some(900));
        let LogicalMessage::Truncate(t) = d.decode(&truncate_msg(Some(900))).unwrap() else {
            panic!()
        };
        assert_eq!((t.xid, t.rel_ids.len()), (Some(900), 3));
        let msg = d.decode(&message_msg(Some(900))).unwrap();
        assert_eq!(msg.xid(), Some(900));
        assert!(d.in_stream());

        assert_eq!(d.decode(b"E").unwrap(), LogicalMessage::StreamStop);
        assert!(!d.in_stream());

        // A second segment of the same transaction.
        let m = d.decode(&stream_start_msg(900, false)).unwrap();
        assert_eq!(
            m,
            LogicalMessage::StreamStart(StreamStart {
                xid: 900,
                first_segment: false
            })
        );
        assert_eq!(d.decode(&insert_msg(Some(900))).unwrap().xid(), Some(900));
        d.decode(b"E").unwrap();

        // Interleaved non-streamed transaction: no xids.
        d.decode(&begin_msg()).unwrap();
        assert_eq!(d.decode(&insert_msg(None)).unwrap().xid(), None);
        d.decode(&commit_msg()).unwrap();

        assert_eq!(
            d.decode(&stream_commit_msg(900)).unwrap(),
            LogicalMessage::StreamCommit(StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: Lsn(0x3_0000_0000),
                end_lsn: Lsn(0x3_0000_0030),
                commit_time: 1_000_000
            })
        );
        assert!(!d.in_stream());
    }

    #[test]
    fn streamed_transaction_that_aborts() {
        let mut d = Decoder::new();
        d.decode(&stream_start_msg(900, true)).unwrap();
        d.decode(&insert_msg(Some(905))).unwrap();
        d.decode(b"E").unwrap();
        assert_eq!(
            d.decode(&stream_abort_msg(900, 905)).unwrap(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 905,
                abort_lsn: None,
                abort_time: None
            })
        );
        // Protocol 4 adds abort LSN and timestamp.
        let mut b = stream_abort_msg(900, 900);
        put_u64(&mut b, 0x5_0000_0000);
        put_i64(&mut b, 42);
        assert_eq!(
            d.decode(&b).unwrap(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 900,
                abort_lsn: Some(Lsn(0x5_0000_0000)),
                abort_time: Some(42)
            })
        );
        for n in 10..b.len() {
            assert!(d.decode(&b[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn stream_state_errors_leave_state_unchanged() {
        let mut d = Decoder::new();
        let e = d.decode(b"E").unwrap_err();
        assert!(
            matches!(e.kind, DecodeErrorKind::UnexpectedMessage { .. }),
            "{e}"
        );
        assert!(!d.in_stream());
        d.decode(&stream_start_msg(1, true)).unwrap();
        for bad in [
            stream_start_msg(2, true),
            begin_msg(),
            commit_msg(),
            stream_commit_msg(1),
            stream_abort_msg(1, 1),
        ] {
            let e = d.decode(&bad).unwrap_err();
            assert!(
                matches!(e.kind, DecodeErrorKind::UnexpectedMessage { .. }),
                "{e}"
            );
            assert!(d.in_stream());
        }
        // A truncated Stream Start does not enter a stream.
        let mut d = Decoder::new();
        assert!(d.decode(&stream_start_msg(1, true)[..3]).is_err());
        assert!(!d.in_stream());
        // A change without its xid inside a stream is misread and caught (here: trailing/garbage).
        let mut d = Decoder::new();
        d.decode(&stream_start_msg(1, true)).unwrap();
        assert!(d.decode(&insert_msg(None)).is_err());
        assert!(d.in_stream());
        d.decode(b"E").unwrap();
        assert!(d.decode(&insert_msg(Some(1))).is_err());
        d.reset();
        assert!(!d.in_stream());
    }

    // -- malformed input -----------------------------------------------------------------------

    /// Every valid fixture with the stream state it must be decoded in.
    fn fixtures() -> Vec<(bool, Vec<u8>)> {
        let mut v = vec![
            (false, begin_msg()),
            (false, commit_msg()),
            (false, origin_msg()),
            (true, origin_msg()),
            (false, stream_start_msg(9, true)),
            (true, b"E".to_vec()),
            (false, stream_commit_msg(9)),
            (false, stream_abort_msg(9, 10)),
        ];
        for (inside, xid) in [(false, None), (true, Some(77))] {
            v.push((inside, relation_msg(xid)));
            v.push((inside, type_msg(xid)));
            v.push((inside, insert_msg(xid)));
            v.push((inside, update_msg(xid, None)));
            v.push((inside, update_msg(xid, Some(b'K'))));
            v.push((inside, update_msg(xid, Some(b'O'))));
            v.push((inside, delete_msg(xid, b'K')));
            v.push((inside, delete_msg(xid, b'O')));
            v.push((inside, truncate_msg(xid)));
            v.push((inside, message_msg(xid)));
        }
        v
    }

    fn decoder(inside: bool) -> Decoder {
        Decoder { in_stream: inside }
    }

    #[test]
    fn every_prefix_is_an_error() {
        for (inside, msg) in fixtures() {
            assert!(decoder(inside).decode(&msg).is_ok(), "fixture {msg:?}");
            for n in 0..msg.len() {
                let mut d = decoder(inside);
                match d.decode(&msg[..n]) {
                    Ok(m) => panic!("prefix {n} of {msg:?} decoded as {m:?}"),
                    Err(e) => {
                        assert_eq!(d.in_stream(), inside);
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
            let mut longer = msg.clone();
            longer.push(0);
            let e = decoder(inside).decode(&longer).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::TrailingBytes { count: 1 }, "{e}");
        }
    }

    #[test]
    fn truncation_errors_name_message_and_field() {
        let msg = insert_msg(None);
        let e = Decoder::new().decode(&msg[..msg.len() - 1]).unwrap_err();
        assert_eq!(e.message, "pgoutput Insert");
        let s = e.to_string();
        assert!(
            s.contains("Insert") && s.contains("new tuple column 4") && s.contains("truncated"),
            "{s}"
        );

        let e = Decoder::new().decode(&begin_msg()[..5]).unwrap_err();
        assert!(
            matches!(&e.kind, DecodeErrorKind::Truncated { field, offset: 1, needed: 8, remaining: 4 } if field == "final LSN"),
            "{e}"
        );

        let rel = relation_msg(None);
        let e = Decoder::new().decode(&rel[..8]).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");

        assert_eq!(
            Decoder::new().decode(b"").unwrap_err().kind,
            DecodeErrorKind::Empty
        );
        let e = Decoder::new().decode(b"Z").unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnknownType(b'Z'));
        assert!(e.to_string().contains("'Z'"), "{e}");
        assert_eq!(
            Decoder::new().decode(b"K").unwrap_err().kind,
            DecodeErrorKind::Unsupported(b'K')
        );
    }

    #[test]
    fn invalid_fields_are_errors() {
        // Negative text length.
        let mut b = vec![b'I'];
        put_u32(&mut b, 1);
        put_u8(&mut b, b'N');
        put_i16(&mut b, 1);
        put_u8(&mut b, b't');
        put_i32(&mut b, -1);
        let e = Decoder::new().decode(&b).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        // Huge length must not allocate or panic.
        let n = b.len();
        b[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            Decoder::new().decode(&b).unwrap_err().kind,
            DecodeErrorKind::Truncated { .. }
        ));
        // Unknown column kind.
        b[n - 5] = b'x';
        let e = Decoder::new().decode(&b).unwrap_err();
        assert!(e.to_string().contains("column 1 kind"), "{e}");
        // Negative column count.
        let mut b = vec![b'I'];
        put_u32(&mut b, 1);
        put_u8(&mut b, b'N');
        put_i16(&mut b, -3);
        assert!(Decoder::new().decode(&b).is_err());
        // Insert without 'N'.
        let mut b = insert_msg(None);
        b[5] = b'K';
        assert!(Decoder::new()
            .decode(&b)
            .unwrap_err()
            .to_string()
            .contains("expected 'N'"));
        // Huge truncate count.
        let mut b = vec![b'T'];
        put_i32(&mut b, i32::MAX);
        put_u8(&mut b, 0);
        assert!(Decoder::new().decode(&b).is_err());
        // Non-UTF-8 name.
        let mut b = vec![b'O'];
        put_u64(&mut b, 1);
        b.extend_from_slice(b"\xff\0");
        let e = Decoder::new().decode(&b).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random buffers, plus random corruption of valid fixtures.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let tags = b"BCORYIUDTMSEcAwkK";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if !buf.is_empty() {
                buf[0] = tags[(next() % tags.len() as u64) as usize];
            }
            let _ = decoder(false).decode(&buf);
            let _ = decoder(true).decode(&buf);
            let _ = parse_replication_message(&buf);
        }
        let fixtures = fixtures();
        for _ in 0..20_000 {
            let (inside, mut msg) = fixtures[(next() % fixtures.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() % msg.len() as u64) as usize;
                msg[i] = next() as u8;
            }
            let _ = decoder(inside).decode(&msg);
        }
    }
}
