//! Binary frames on the data channel between two viewers.
//!
//! Every frame starts with the version byte [`FRAME_VERSION`] and a type byte; integers are
//! big-endian. A frame is at most [`MAX_FRAME_LEN`] bytes, which fits in one SCTP message on every
//! WebRTC stack. Every response carries the request id it answers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const FRAME_VERSION: u8 = 1;
/// Largest frame on the wire (64 KiB − 1, the smallest SCTP message limit among implementations).
pub const MAX_FRAME_LEN: usize = 65_535;
/// Most entries one `Have` frame may carry.
pub const MAX_HAVE_ENTRIES: usize = 512;
/// Most segments one `Drop` frame may carry.
pub const MAX_DROP_ENTRIES: usize = 4096;
/// Most chunks in one segment a frame may describe (64 MiB / 16 KiB).
pub const MAX_CHUNKS: u16 = 4096;
/// Longest swarm id in a `Hello`.
pub const MAX_SWARM_LEN: usize = 255;

const T_HELLO: u8 = 1;
const T_HAVE: u8 = 2;
const T_DROP: u8 = 3;
const T_REQUEST: u8 = 4;
const T_CHUNK: u8 = 5;
const T_CANCEL: u8 = 6;
const T_ABSENT: u8 = 7;
const T_STATUS: u8 = 8;

/// Why a peer does not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbsentReason {
    /// The peer does not hold (some of) the chunks.
    NotFound,
    /// Too many requests in flight or the upload cap is reached; ask elsewhere.
    Busy,
    /// Uploading is off for this peer.
    Refused,
}

impl AbsentReason {
    fn to_u8(self) -> u8 {
        match self {
            AbsentReason::NotFound => 0,
            AbsentReason::Busy => 1,
            AbsentReason::Refused => 2,
        }
    }
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => AbsentReason::NotFound,
            1 => AbsentReason::Busy,
            2 => AbsentReason::Refused,
            other => return Err(DecodeError::BadValue("absent reason", other as u64)),
        })
    }
}

/// Availability of one segment at the sender: which of its `chunk_count` chunks it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveEntry {
    pub seq: u64,
    pub chunk_count: u16,
    /// Bit `i` (LSB first within each byte) set = chunk `i` held; `ceil(chunk_count / 8)` bytes,
    /// unused high bits zero.
    pub bitmap: Bytes,
}

impl HaveEntry {
    /// An entry saying every chunk is held.
    pub fn complete(seq: u64, chunk_count: u16) -> Self {
        let n = chunk_count as usize;
        let mut bm = vec![0xffu8; n.div_ceil(8)];
        if !n.is_multiple_of(8)
            && let Some(last) = bm.last_mut()
        {
            *last = (1u8 << (n % 8)) - 1;
        }
        HaveEntry {
            seq,
            chunk_count,
            bitmap: Bytes::from(bm),
        }
    }

    /// Builds an entry from a predicate over chunk indices.
    pub fn from_fn(seq: u64, chunk_count: u16, has: impl Fn(usize) -> bool) -> Self {
        let n = chunk_count as usize;
        let mut bm = vec![0u8; n.div_ceil(8)];
        for i in 0..n {
            if has(i) {
                bm[i / 8] |= 1 << (i % 8);
            }
        }
        HaveEntry {
            seq,
            chunk_count,
            bitmap: Bytes::from(bm),
        }
    }

    pub fn has(&self, index: usize) -> bool {
        index < self.chunk_count as usize
            && self
                .bitmap
                .get(index / 8)
                .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    pub fn is_complete(&self) -> bool {
        (0..self.chunk_count as usize).all(|i| self.has(i))
    }
}

/// One data-channel frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame each side sends: the swarm it joined (must match), how many chunks it
    /// serves at once for this peer, and the sender's `instance`: a random number fixed for the
    /// life of its peer (it survives signaling reconnects, which change the peer id), so that two
    /// connections to the same viewer are recognised as one. Encoded as 8 bytes after
    /// `max_inflight`, or absent (`None`: a peer that predates it).
    Hello {
        swarm: String,
        max_inflight: u16,
        instance: Option<u64>,
    },
    /// Chunks held (additive: a later entry for the same segment replaces the earlier one).
    Have { entries: Vec<HaveEntry> },
    /// Segments no longer held (evicted from the store).
    Drop { seqs: Vec<u64> },
    /// Ask for chunks `first .. first + count` of segment `seq`.
    Request {
        req_id: u32,
        seq: u64,
        first: u16,
        count: u16,
    },
    /// One chunk answering `req_id`.
    Chunk {
        req_id: u32,
        seq: u64,
        index: u16,
        data: Bytes,
    },
    /// The requester no longer wants `req_id`; chunks already sent may still arrive.
    Cancel { req_id: u32 },
    /// `req_id` will not be served (the rest of it, if some chunks were sent).
    Absent { req_id: u32, reason: AbsentReason },
    /// The sender's uplink as it measured it (kbit/s; 0: not measured) and how long a request
    /// sent now would wait for it (ms, behind what it already queued): requesters ask a slow or
    /// busy uploader for less. Advisory: the receiver checks nothing against it.
    Status { uplink_kbps: u32, wait_ms: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes after frame")]
    Trailing(usize),
    #[error("bad {0}: {1}")]
    BadValue(&'static str, u64),
    #[error("swarm id is not UTF-8")]
    BadUtf8,
}

/// Longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn need(buf: &Bytes, n: usize, what: &'static str) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated(what))
    } else {
        Ok(())
    }
}

impl Frame {
    /// Short name, for logs and stats.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Have { .. } => "have",
            Frame::Drop { .. } => "drop",
            Frame::Request { .. } => "request",
            Frame::Chunk { .. } => "chunk",
            Frame::Cancel { .. } => "cancel",
            Frame::Absent { .. } => "absent",
            Frame::Status { .. } => "status",
        }
    }

    /// Encodes the frame. Callers keep within the limits (`MAX_*`, [`MAX_FRAME_LEN`], bitmaps of
    /// `ceil(chunk_count / 8)` bytes with zero padding bits); `encode` does not check them,
    /// `decode` does. The one exception: a `Hello` swarm id over [`MAX_SWARM_LEN`] bytes is cut
    /// to the longest prefix that fits and ends on a char boundary.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        b.put_u8(FRAME_VERSION);
        match self {
            Frame::Hello {
                swarm,
                max_inflight,
                instance,
            } => {
                b.put_u8(T_HELLO);
                // Over-long ids are cut at a char boundary: cutting inside a UTF-8 sequence would
                // produce a frame that `decode` rejects as `BadUtf8`.
                let s = truncate_utf8(swarm, MAX_SWARM_LEN).as_bytes();
                b.put_u8(s.len() as u8);
                b.put_slice(s);
                b.put_u16(*max_inflight);
                if let Some(i) = instance {
                    b.put_u64(*i);
                }
            }
            Frame::Have { entries } => {
                b.put_u8(T_HAVE);
                b.put_u16(entries.len() as u16);
                for e in entries {
                    b.put_u64(e.seq);
                    b.put_u16(e.chunk_count);
                    b.put_slice(&e.bitmap);
                }
            }
            Frame::Drop { seqs } => {
                b.put_u8(T_DROP);
                b.put_u16(seqs.len() as u16);
                for s in seqs {
                    b.put_u64(*s);
                }
            }
            Frame::Request {
                req_id,
                seq,
                first,
                count,
            } => {
                b.put_u8(T_REQUEST);
                b.put_u32(*req_id);
                b.put_u64(*seq);
                b.put_u16(*first);
                b.put_u16(*count);
            }
            Frame::Chunk {
                req_id,
                seq,
                index,
                data,
            } => {
                b.reserve(data.len() + 16);
                b.put_u8(T_CHUNK);
                b.put_u32(*req_id);
                b.put_u64(*seq);
                b.put_u16(*index);
                b.put_slice(data);
            }
            Frame::Cancel { req_id } => {
                b.put_u8(T_CANCEL);
                b.put_u32(*req_id);
            }
            Frame::Absent { req_id, reason } => {
                b.put_u8(T_ABSENT);
                b.put_u32(*req_id);
                b.put_u8(reason.to_u8());
            }
            Frame::Status {
                uplink_kbps,
                wait_ms,
            } => {
                b.put_u8(T_STATUS);
                b.put_u32(*uplink_kbps);
                b.put_u16(*wait_ms);
            }
        }
        b.freeze()
    }

    /// Decodes one frame from untrusted bytes. Never panics.
    pub fn decode(frame: &[u8]) -> Result<Frame, DecodeError> {
        Self::decode_bytes(Bytes::copy_from_slice(frame))
    }

    /// Like [`Frame::decode`], without copying the chunk payload out of `buf`.
    pub fn decode_bytes(mut buf: Bytes) -> Result<Frame, DecodeError> {
        if buf.is_empty() {
            return Err(DecodeError::Empty);
        }
        if buf.len() > MAX_FRAME_LEN {
            return Err(DecodeError::TooLong(buf.len()));
        }
        let version = buf.get_u8();
        if version != FRAME_VERSION {
            return Err(DecodeError::Version(version));
        }
        need(&buf, 1, "type")?;
        let ty = buf.get_u8();
        let frame = match ty {
            T_HELLO => {
                need(&buf, 1, "swarm length")?;
                let n = buf.get_u8() as usize;
                need(&buf, n + 2, "swarm")?;
                let s = buf.split_to(n);
                let swarm = std::str::from_utf8(&s)
                    .map_err(|_| DecodeError::BadUtf8)?
                    .to_owned();
                let max_inflight = buf.get_u16();
                let instance = (buf.remaining() >= 8).then(|| buf.get_u64());
                Frame::Hello {
                    swarm,
                    max_inflight,
                    instance,
                }
            }
            T_HAVE => {
                need(&buf, 2, "have count")?;
                let n = buf.get_u16() as usize;
                if n > MAX_HAVE_ENTRIES {
                    return Err(DecodeError::BadValue("have count", n as u64));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    need(&buf, 10, "have entry")?;
                    let seq = buf.get_u64();
                    let chunk_count = buf.get_u16();
                    if chunk_count > MAX_CHUNKS {
                        return Err(DecodeError::BadValue("chunk count", chunk_count as u64));
                    }
                    let bytes = (chunk_count as usize).div_ceil(8);
                    need(&buf, bytes, "have bitmap")?;
                    let bitmap = buf.split_to(bytes);
                    let rem = chunk_count as usize % 8;
                    if rem != 0 && bitmap.last().is_some_and(|b| b >> rem != 0) {
                        return Err(DecodeError::BadValue("bitmap padding", seq));
                    }
                    entries.push(HaveEntry {
                        seq,
                        chunk_count,
                        bitmap,
                    });
                }
                Frame::Have { entries }
            }
            T_DROP => {
                need(&buf, 2, "drop count")?;
                let n = buf.get_u16() as usize;
                if n > MAX_DROP_ENTRIES {
                    return Err(DecodeError::BadValue("drop count", n as u64));
                }
                need(&buf, n * 8, "drop entries")?;
                let seqs = (0..n).map(|_| buf.get_u64()).collect();
                Frame::Drop { seqs }
            }
            T_REQUEST => {
                need(&buf, 16, "request")?;
                let req_id = buf.get_u32();
                let seq = buf.get_u64();
                let first = buf.get_u16();
                let count = buf.get_u16();
                if count == 0 || first as u32 + count as u32 > MAX_CHUNKS as u32 {
                    return Err(DecodeError::BadValue("request range", count as u64));
                }
                Frame::Request {
                    req_id,
                    seq,
                    first,
                    count,
                }
            }
            T_CHUNK => {
                need(&buf, 14, "chunk header")?;
                let req_id = buf.get_u32();
                let seq = buf.get_u64();
                let index = buf.get_u16();
                if index >= MAX_CHUNKS {
                    return Err(DecodeError::BadValue("chunk index", index as u64));
                }
                let data = buf.split_to(buf.len());
                Frame::Chunk {
                    req_id,
                    seq,
                    index,
                    data,
                }
            }
            T_CANCEL => {
                need(&buf, 4, "cancel")?;
                Frame::Cancel {
                    req_id: buf.get_u32(),
                }
            }
            T_ABSENT => {
                need(&buf, 5, "absent")?;
                let req_id = buf.get_u32();
                let reason = AbsentReason::from_u8(buf.get_u8())?;
                Frame::Absent { req_id, reason }
            }
            T_STATUS => {
                need(&buf, 6, "status")?;
                Frame::Status {
                    uplink_kbps: buf.get_u32(),
                    wait_ms: buf.get_u16(),
                }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !buf.is_empty() {
            return Err(DecodeError::Trailing(buf.len()));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_entry_bits() {
        let e = HaveEntry::complete(3, 10);
        assert!(e.is_complete());
        assert_eq!(&e.bitmap[..], &[0xff, 0x03]);
        let p = HaveEntry::from_fn(3, 10, |i| i == 9);
        assert!(p.has(9) && !p.has(8) && !p.has(10));
    }

    #[test]
    fn request_fixture() {
        let f = Frame::Request {
            req_id: 0x01020304,
            seq: 5,
            first: 1,
            count: 2,
        };
        let bytes = f.encode();
        assert_eq!(
            &bytes[..],
            &[1, 4, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 2]
        );
        assert_eq!(Frame::decode(&bytes), Ok(f));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Frame::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Frame::decode(&[2, 1]), Err(DecodeError::Version(2)));
        assert_eq!(Frame::decode(&[1, 99]), Err(DecodeError::UnknownType(99)));
        assert!(matches!(
            Frame::decode(&[1, 4, 0]),
            Err(DecodeError::Truncated(_))
        ));
        let mut long = Frame::Cancel { req_id: 1 }.encode().to_vec();
        long.push(0);
        assert_eq!(Frame::decode(&long), Err(DecodeError::Trailing(1)));
    }
}
