//! A hostile public swarm: each attack is tried here, and fails.
//!
//! * Have flood: `Have` frames padded to 64 KiB do not pin their frames in memory.

mod common;

use std::collections::VecDeque;

use bytes::Bytes;
use common::*;
use peer_core::remotes::MAX_REMOTE_HAVE_BYTES;
use protocol::{CHUNK_SIZE, Frame};

// ------------------------------------------------------------ 1. Have pinning

/// One `Have` frame padded to 65 254 bytes: 124 junk entries (sequence numbers 0..124, 4096
/// chunks each), then one entry for `seq` (4096 chunks, a 512-byte bitmap).
fn padded_have(seq: u64) -> Bytes {
    let mut entries: Vec<protocol::HaveEntry> = (0..124)
        .map(|s| protocol::HaveEntry::from_fn(s, 4096, |i| i % 3 == 0))
        .collect();
    entries.push(protocol::HaveEntry::from_fn(seq, 4096, |i| i % 2 == 0));
    let f = Frame::Have { entries }.encode();
    assert!(f.len() > 65_000 && f.len() <= protocol::frame::MAX_FRAME_LEN);
    f
}

/// 10 000 `Have` frames of 64 KiB, each announcing one new segment. What the core keeps for
/// the peer is measured by memory, not by `len()`: an entry whose bitmap points inside a frame
/// the test still holds pins that whole frame (counted once per frame); an entry with its own
/// copy costs its bitmap. Before: every kept entry was a slice of its frame, so the newest 1024
/// entries pinned 1024 frames (64 MiB). Now each bitmap is copied out of its frame, and the
/// bitmap bytes kept per peer are bounded by [`MAX_REMOTE_HAVE_BYTES`].
#[test]
fn have_flood_does_not_pin_frames() {
    let mut h = Harness::new(config(), &[(1, 3 * CHUNK_SIZE)]);
    assert!(h.connect(100, FakePeer::new(PeerBehaviour::Honest, [])));
    h.run_until(at_ms(100));
    let mut template = padded_have(0).to_vec();
    let seq_at = template.len() - (8 + 2 + 512);
    // The newest frames sent, still held here (the core keeps at most 1024 entries).
    let mut sent: VecDeque<Bytes> = VecDeque::new();
    for k in 0..10_000u64 {
        template[seq_at..seq_at + 8].copy_from_slice(&(1_000_000 + k).to_be_bytes());
        let frame = Bytes::from(template.clone());
        let t = h.now + ms(1);
        h.inject_at(t, 100, frame.clone());
        h.run_until(t);
        sent.push_back(frame);
        if sent.len() > 1100 {
            sent.pop_front();
        }
    }
    assert!(!h.core.is_banned(100));
    let mut pinned = vec![false; sent.len()];
    let mut own = 0;
    let mut entries = 0;
    for e in h.core.peer_haves(100) {
        entries += 1;
        let p = e.bitmap.as_ptr() as usize;
        let inside = sent
            .iter()
            .position(|f| (f.as_ptr() as usize..f.as_ptr() as usize + f.len()).contains(&p));
        match inside {
            Some(i) => pinned[i] = true,
            None => own += e.bitmap.len(),
        }
    }
    let pinned_bytes: usize = sent
        .iter()
        .zip(&pinned)
        .filter(|(_, p)| **p)
        .map(|(f, _)| f.len())
        .sum();
    let retained = pinned_bytes + own;
    println!(
        "Have flood: 10000 frames of {} bytes; {entries} entries kept, {retained} bytes retained ({pinned_bytes} in pinned frames, {own} in own bitmaps)",
        sent[0].len()
    );
    assert_eq!(pinned_bytes, 0, "entries pin their frames");
    assert!(
        retained <= MAX_REMOTE_HAVE_BYTES,
        "{retained} bytes retained"
    );
    assert_eq!(retained, h.core.retained_have_bytes());
    assert!(entries > 0);
}
