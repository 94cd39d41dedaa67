//! VP8 payload descriptor (RFC 7741 §4.2) parsing and rewriting.
//!
//! When the SFU switches a subscriber between simulcast layers, each layer has
//! its own PictureID / TL0PICIDX / KEYIDX sequences. [`Vp8Munger`] rewrites
//! these fields per outgoing stream so the subscriber's decoder sees one
//! continuous VP8 stream.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (OPTIONAL, second byte only if M = 1)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! ```

use std::fmt;

/// Mask of a 15-bit PictureID.
const PIC_MASK_15: u16 = 0x7FFF;
/// Mask of a 7-bit PictureID.
const PIC_MASK_7: u16 = 0x7F;
/// Mask of the 5-bit KEYIDX.
const KEY_MASK: u8 = 0x1F;

/// The VP8 payload descriptor fields an SFU cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S bit: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: partition index (0 = first partition).
    pub partition_id: u8,
    /// N bit: the frame can be discarded without affecting other frames.
    pub non_reference: bool,
    /// PictureID, 7- or 15-bit value (I bit present).
    pub picture_id: Option<u16>,
    /// M bit: the PictureID is 15 bits wide.
    pub picture_id_15bit: bool,
    /// TL0PICIDX (L bit present).
    pub tl0picidx: Option<u8>,
    /// Temporal layer id (T bit present).
    pub tid: Option<u8>,
    /// Y bit (layer sync); only reported when the T bit is present.
    pub layer_sync: bool,
    /// KEYIDX, 5 bits (K bit present).
    pub key_idx: Option<u8>,
    /// Bytes of descriptor before the VP8 payload.
    pub header_len: usize,
    /// Start of partition 0 and the VP8 payload header's P bit is 0 (key frame).
    pub keyframe: bool,
}

/// Why a VP8 payload could not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vp8Error {
    /// The payload is empty or the descriptor runs past its end.
    Truncated,
    /// The descriptor is complete but no VP8 payload byte follows it.
    MissingPayload,
}

impl fmt::Display for Vp8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vp8Error::Truncated => f.write_str("truncated VP8 payload descriptor"),
            Vp8Error::MissingPayload => f.write_str("VP8 payload descriptor without payload"),
        }
    }
}

impl std::error::Error for Vp8Error {}

/// Byte offsets of the rewritable fields inside the descriptor.
#[derive(Debug, Clone, Copy, Default)]
struct Layout {
    pic_at: Option<usize>,
    tl0_at: Option<usize>,
    tk_at: Option<usize>,
}

/// Parses the VP8 payload descriptor at the start of an RTP payload.
///
/// Returns `None` on truncated or malformed input (including a descriptor not
/// followed by at least one VP8 payload byte). Never panics.
pub fn parse(payload: &[u8]) -> Option<Vp8Descriptor> {
    parse_with_layout(payload).ok().map(|(d, _)| d)
}

fn byte_at(p: &[u8], i: usize) -> Result<u8, Vp8Error> {
    p.get(i).copied().ok_or(Vp8Error::Truncated)
}

fn parse_with_layout(p: &[u8]) -> Result<(Vp8Descriptor, Layout), Vp8Error> {
    let b0 = byte_at(p, 0)?;
    let mut d = Vp8Descriptor {
        start_of_partition: b0 & 0x10 != 0,
        partition_id: b0 & 0x07,
        non_reference: b0 & 0x20 != 0,
        picture_id: None,
        picture_id_15bit: false,
        tl0picidx: None,
        tid: None,
        layer_sync: false,
        key_idx: None,
        header_len: 1,
        keyframe: false,
    };
    let mut lay = Layout::default();
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = byte_at(p, i)?;
        i += 1;
        if x & 0x80 != 0 {
            let m = byte_at(p, i)?;
            lay.pic_at = Some(i);
            if m & 0x80 != 0 {
                let lo = byte_at(p, i + 1)?;
                d.picture_id = Some((u16::from(m & 0x7F) << 8) | u16::from(lo));
                d.picture_id_15bit = true;
                i += 2;
            } else {
                d.picture_id = Some(u16::from(m & 0x7F));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0picidx = Some(byte_at(p, i)?);
            lay.tl0_at = Some(i);
            i += 1;
        }
        if x & 0x30 != 0 {
            let tk = byte_at(p, i)?;
            lay.tk_at = Some(i);
            if x & 0x20 != 0 {
                d.tid = Some(tk >> 6);
                d.layer_sync = tk & 0x20 != 0;
            }
            if x & 0x10 != 0 {
                d.key_idx = Some(tk & KEY_MASK);
            }
            i += 1;
        }
    }
    d.header_len = i;
    let first = p.get(i).copied().ok_or(Vp8Error::MissingPayload)?;
    d.keyframe = d.start_of_partition && d.partition_id == 0 && first & 0x01 == 0;
    Ok((d, lay))
}

/// `a` is newer than `b` in 15-bit serial number arithmetic.
fn newer15(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b) & PIC_MASK_15;
    d != 0 && d < 0x4000
}

/// `a` is newer than `b` in 8-bit serial number arithmetic.
fn newer8(a: u8, b: u8) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x80
}

/// `a` is newer than `b` in 5-bit serial number arithmetic.
fn newer5(a: u8, b: u8) -> bool {
    let d = a.wrapping_sub(b) & KEY_MASK;
    d != 0 && d < 0x10
}

/// Rewrites the descriptor of one outgoing stream so PictureID, TL0PICIDX and
/// KEYIDX continue across source switches.
///
/// Within one source the mapping is a constant offset per field, so reordered
/// and retransmitted packets keep their relative order. The highest value
/// sent is tracked in the 15-bit PictureID space even for 7-bit packets (a
/// 7-bit id is extended next to the highest id sent).
#[derive(Debug, Default)]
pub struct Vp8Munger {
    pic_offset: u16,
    tl0_offset: u8,
    key_offset: u8,
    highest_pic: Option<u16>,
    highest_tl0: Option<u8>,
    highest_key: Option<u8>,
    anchor_pic: bool,
    anchor_tl0: bool,
    anchor_key: bool,
}

impl Vp8Munger {
    /// A munger for a new outgoing stream; the first source gets zero offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next packet is the first of a new source (the caller guarantees it
    /// starts a keyframe). Each field's offset is re-anchored on the first
    /// packet of the new source that carries that field, so that it follows
    /// the highest value sent so far.
    pub fn switch_source(&mut self) {
        self.anchor_pic = true;
        self.anchor_tl0 = true;
        self.anchor_key = true;
    }

    /// Rewrites `payload` into `out` (cleared first).
    ///
    /// Returns `Ok(true)` if a changed copy was written to `out`, `Ok(false)`
    /// if the payload needs no change (`out` is left empty and the caller
    /// forwards the original bytes), or an error if the descriptor cannot be
    /// parsed (the caller drops the packet). Does not allocate once `out` has
    /// enough capacity.
    pub fn rewrite(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<bool, Vp8Error> {
        out.clear();
        let (d, lay) = parse_with_layout(payload)?;

        let new_pic = d.picture_id.map(|p| self.map_pic(p, d.picture_id_15bit));
        let new_tl0 = d.tl0picidx.map(|t| self.map_tl0(t));
        let new_key = d.key_idx.map(|k| self.map_key(k));

        let changed = new_pic != d.picture_id || new_tl0 != d.tl0picidx || new_key != d.key_idx;
        if !changed {
            return Ok(false);
        }
        out.extend_from_slice(payload);
        // Offsets come from a successful parse of a slice of the same length.
        if let (Some(at), Some(v)) = (lay.pic_at, new_pic) {
            if d.picture_id_15bit {
                out[at] = 0x80 | (v >> 8) as u8;
                out[at + 1] = v as u8;
            } else {
                out[at] = v as u8;
            }
        }
        if let (Some(at), Some(v)) = (lay.tl0_at, new_tl0) {
            out[at] = v;
        }
        if let (Some(at), Some(v)) = (lay.tk_at, new_key) {
            out[at] = (out[at] & !KEY_MASK) | v;
        }
        Ok(true)
    }

    /// Maps a source PictureID (of the packet's width) and records the highest sent.
    fn map_pic(&mut self, p: u16, wide: bool) -> u16 {
        if self.anchor_pic {
            self.anchor_pic = false;
            self.pic_offset = match self.highest_pic {
                Some(h) => h.wrapping_add(1).wrapping_sub(p) & PIC_MASK_15,
                None => 0,
            };
        }
        let mask = if wide { PIC_MASK_15 } else { PIC_MASK_7 };
        let v = p.wrapping_add(self.pic_offset) & mask;
        // Extend to the 15-bit space used for tracking.
        let ext = match self.highest_pic {
            None => Some(v),
            Some(h) if wide => newer15(v, h).then_some(v),
            Some(h) => {
                let d = v.wrapping_sub(h) & PIC_MASK_7;
                (d != 0 && d < 0x40).then(|| h.wrapping_add(d) & PIC_MASK_15)
            }
        };
        if let Some(e) = ext {
            self.highest_pic = Some(e);
        }
        v
    }

    fn map_tl0(&mut self, t: u8) -> u8 {
        if self.anchor_tl0 {
            self.anchor_tl0 = false;
            self.tl0_offset = match self.highest_tl0 {
                Some(h) => h.wrapping_add(1).wrapping_sub(t),
                None => 0,
            };
        }
        let v = t.wrapping_add(self.tl0_offset);
        if self.highest_tl0.is_none_or(|h| newer8(v, h)) {
            self.highest_tl0 = Some(v);
        }
        v
    }

    fn map_key(&mut self, k: u8) -> u8 {
        if self.anchor_key {
            self.anchor_key = false;
            self.key_offset = match self.highest_key {
                Some(h) => h.wrapping_add(1).wrapping_sub(k) & KEY_MASK,
                None => 0,
            };
        }
        let v = k.wrapping_add(self.key_offset) & KEY_MASK;
        if self.highest_key.is_none_or(|h| newer5(v, h)) {
            self.highest_key = Some(v);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a packet: descriptor per the arguments followed by `body`.
    fn build(
        s: bool,
        pid: Option<(u16, bool)>,
        tl0: Option<u8>,
        tid: Option<(u8, bool)>,
        key: Option<u8>,
        body: &[u8],
    ) -> Vec<u8> {
        let ext = pid.is_some() || tl0.is_some() || tid.is_some() || key.is_some();
        let mut v = vec![(if ext { 0x80 } else { 0 }) | (if s { 0x10 } else { 0 })];
        if ext {
            let mut x = 0u8;
            x |= if pid.is_some() { 0x80 } else { 0 };
            x |= if tl0.is_some() { 0x40 } else { 0 };
            x |= if tid.is_some() { 0x20 } else { 0 };
            x |= if key.is_some() { 0x10 } else { 0 };
            v.push(x);
        }
        match pid {
            Some((p, true)) => v.extend_from_slice(&[0x80 | (p >> 8) as u8, p as u8]),
            Some((p, false)) => v.push(p as u8 & 0x7F),
            None => {}
        }
        if let Some(t) = tl0 {
            v.push(t);
        }
        if tid.is_some() || key.is_some() {
            let (t, y) = tid.unwrap_or((0, false));
            v.push((t << 6) | (if y { 0x20 } else { 0 }) | key.unwrap_or(0));
        }
        v.extend_from_slice(body);
        v
    }

    /// A full-featured packet with a 15-bit PictureID.
    fn pkt(pid: u16, tl0: u8, key: u8) -> Vec<u8> {
        build(
            true,
            Some((pid, true)),
            Some(tl0),
            Some((0, false)),
            Some(key),
            &[0x00, 0xAA, 0xBB],
        )
    }

    /// Rewrites and returns the descriptor actually sent.
    fn send(m: &mut Vp8Munger, p: &[u8]) -> Vp8Descriptor {
        let mut out = Vec::new();
        if m.rewrite(p, &mut out).unwrap() {
            assert_eq!(out.len(), p.len());
            let d = parse(&out).unwrap();
            assert_eq!(out[d.header_len..], p[d.header_len..]);
            d
        } else {
            assert!(out.is_empty());
            parse(p).unwrap()
        }
    }

    #[test]
    fn parse_no_extension() {
        let d = parse(&[0x10, 0x00, 0x01]).unwrap();
        assert!(d.start_of_partition && d.keyframe && !d.non_reference);
        assert_eq!(d.partition_id, 0);
        assert_eq!(d.header_len, 1);
        assert_eq!(d.picture_id, None);
        assert_eq!(d.tl0picidx, None);
        assert_eq!(d.tid, None);
        assert_eq!(d.key_idx, None);
        // N bit, PID 3, not start.
        let d = parse(&[0x23, 0x00]).unwrap();
        assert!(d.non_reference && !d.start_of_partition && !d.keyframe);
        assert_eq!(d.partition_id, 3);
    }

    #[test]
    fn parse_picture_ids() {
        let d = parse(&[0x90, 0x80, 0x55, 0x01]).unwrap();
        assert_eq!(d.picture_id, Some(0x55));
        assert!(!d.picture_id_15bit);
        assert_eq!(d.header_len, 3);
        assert!(!d.keyframe); // P bit set
        let d = parse(&[0x90, 0x80, 0xFF, 0xFE, 0x00]).unwrap();
        assert_eq!(d.picture_id, Some(0x7FFE));
        assert!(d.picture_id_15bit);
        assert_eq!(d.header_len, 4);
        assert!(d.keyframe);
    }

    #[test]
    fn parse_ltk_fields() {
        let p = build(
            false,
            Some((300, true)),
            Some(7),
            Some((2, true)),
            Some(21),
            &[0x01],
        );
        let d = parse(&p).unwrap();
        assert_eq!(d.picture_id, Some(300));
        assert_eq!(d.tl0picidx, Some(7));
        assert_eq!(d.tid, Some(2));
        assert!(d.layer_sync);
        assert_eq!(d.key_idx, Some(21));
        assert_eq!(d.header_len, 6);
        // K only: TID/Y not reported.
        let d = parse(&[0x80, 0x10, 0xFF, 0x00]).unwrap();
        assert_eq!(d.tid, None);
        assert!(!d.layer_sync);
        assert_eq!(d.key_idx, Some(31));
        assert_eq!(d.header_len, 3);
        // T only.
        let d = parse(&[0x80, 0x20, 0x40, 0x00]).unwrap();
        assert_eq!((d.tid, d.key_idx), (Some(1), None));
        // L only.
        let d = parse(&[0x80, 0x40, 0x09, 0x00]).unwrap();
        assert_eq!((d.tl0picidx, d.header_len), (Some(9), 3));
    }

    #[test]
    fn parse_keyframe_needs_start_of_partition_zero() {
        assert!(parse(&[0x10, 0x00]).unwrap().keyframe);
        assert!(!parse(&[0x00, 0x00]).unwrap().keyframe); // S = 0
        assert!(!parse(&[0x11, 0x00]).unwrap().keyframe); // PID = 1
        assert!(!parse(&[0x10, 0x01]).unwrap().keyframe); // P = 1
    }

    #[test]
    fn parse_truncated() {
        let full = build(
            true,
            Some((300, true)),
            Some(7),
            Some((1, false)),
            Some(3),
            &[0x00],
        );
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), None, "len {n}");
        }
        assert!(parse(&full).is_some());
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x90, 0x80, 0x85]), None); // M=1, second byte missing
        assert_eq!(parse(&[0x10]), None); // no VP8 payload
        let mut m = Vp8Munger::new();
        let mut out = Vec::new();
        assert_eq!(m.rewrite(&[], &mut out), Err(Vp8Error::Truncated));
        assert_eq!(m.rewrite(&[0x80], &mut out), Err(Vp8Error::Truncated));
        assert_eq!(m.rewrite(&[0x10], &mut out), Err(Vp8Error::MissingPayload));
    }

    #[test]
    fn single_source_never_copies() {
        let mut m = Vp8Munger::new();
        let mut out = Vec::new();
        for i in 0..300u16 {
            let pid = 32700u16.wrapping_add(i) & 0x7FFF;
            let p = pkt(pid, (i % 256) as u8, (i % 32) as u8);
            assert_eq!(m.rewrite(&p, &mut out), Ok(false));
            assert!(out.is_empty());
            // Retransmission of an older packet.
            let old = pkt(pid.wrapping_sub(5) & 0x7FFF, 0, 0);
            assert_eq!(m.rewrite(&old, &mut out), Ok(false));
            assert_eq!(
                m.rewrite(&build(true, None, None, None, None, &[0]), &mut out),
                Ok(false)
            );
        }
    }

    #[test]
    fn switch_wraps_and_switch_back_continues() {
        let mut m = Vp8Munger::new();
        // Source A: pid 32760..=32767, tl0 250..=255,0,1, keyidx 30,31.
        for i in 0..8u16 {
            let d = send(
                &mut m,
                &pkt(32760 + i, 250u8.wrapping_add(i as u8), 30 + (i % 2) as u8),
            );
            assert_eq!(d.picture_id, Some(32760 + i));
        }
        // Source B: pid 5, tl0 3, keyidx 2.
        m.switch_source();
        for i in 0..4u16 {
            let d = send(&mut m, &pkt(5 + i, 3 + i as u8, 2));
            assert_eq!(d.picture_id, Some(i)); // 32767 + 1 wraps to 0
            assert!(d.picture_id_15bit);
            assert_eq!(d.tl0picidx, Some(2 + i as u8)); // 1 + 1
            assert_eq!(d.key_idx, Some(0)); // (31 + 1) mod 32
            assert_eq!(d.tid, Some(0));
        }
        // Back to A, which has moved on meanwhile.
        m.switch_source();
        let d = send(&mut m, &pkt(100, 50, 7));
        assert_eq!(
            (d.picture_id, d.tl0picidx, d.key_idx),
            (Some(4), Some(6), Some(1))
        );
        let d = send(&mut m, &pkt(101, 51, 7));
        assert_eq!(
            (d.picture_id, d.tl0picidx, d.key_idx),
            (Some(5), Some(7), Some(1))
        );
    }

    #[test]
    fn reordered_packet_keeps_offset() {
        let mut m = Vp8Munger::new();
        send(&mut m, &pkt(1000, 10, 0));
        m.switch_source();
        assert_eq!(send(&mut m, &pkt(5, 3, 0)).picture_id, Some(1001));
        assert_eq!(send(&mut m, &pkt(7, 5, 0)).picture_id, Some(1003));
        let d = send(&mut m, &pkt(6, 4, 0)); // late
        assert_eq!((d.picture_id, d.tl0picidx), (Some(1002), Some(12)));
        assert_eq!(send(&mut m, &pkt(7, 5, 0)).picture_id, Some(1003)); // retransmit
                                                                        // The late packet did not lower "highest sent".
        m.switch_source();
        assert_eq!(send(&mut m, &pkt(9000, 77, 0)).picture_id, Some(1004));
    }

    #[test]
    fn fields_anchor_on_first_packet_carrying_them() {
        let mut m = Vp8Munger::new();
        send(&mut m, &pkt(40, 20, 4));
        m.switch_source();
        let mut out = Vec::new();
        let bare = build(true, None, None, None, None, &[0x00]);
        assert_eq!(m.rewrite(&bare, &mut out), Ok(false));
        let d = send(
            &mut m,
            &build(true, Some((900, true)), None, None, None, &[0]),
        );
        assert_eq!(d.picture_id, Some(41));
        let d = send(&mut m, &pkt(901, 60, 9));
        assert_eq!(
            (d.picture_id, d.tl0picidx, d.key_idx),
            (Some(42), Some(21), Some(5))
        );
    }

    #[test]
    fn three_switches_continuous() {
        let mut m = Vp8Munger::new();
        // (start pid, start tl0) per source; A appears twice.
        let sources: [(u16, u8); 4] = [(32750, 250), (3, 100), (20000, 0), (32750, 250)];
        let mut progress = [0u16; 3];
        let mut last: Option<(u16, u8)> = None;
        for (n, &(pid0, tl00)) in sources.iter().enumerate() {
            let idx = if n == 3 { 0 } else { n };
            if n > 0 {
                m.switch_source();
            }
            for _ in 0..30 {
                let k = progress[idx];
                progress[idx] += 1;
                let pid = pid0.wrapping_add(k) & 0x7FFF;
                let tl0 = tl00.wrapping_add(k as u8);
                // Two packets per picture.
                let a = send(&mut m, &pkt(pid, tl0, 0));
                let b = send(
                    &mut m,
                    &build(false, Some((pid, true)), Some(tl0), None, None, &[1]),
                );
                assert_eq!((a.picture_id, a.tl0picidx), (b.picture_id, b.tl0picidx));
                let (p, t) = (a.picture_id.unwrap(), a.tl0picidx.unwrap());
                if let Some((lp, lt)) = last {
                    assert_eq!(p, lp.wrapping_add(1) & 0x7FFF);
                    assert_eq!(t, lt.wrapping_add(1));
                }
                last = Some((p, t));
            }
        }
    }

    #[test]
    fn seven_bit_picture_ids() {
        let mut m = Vp8Munger::new();
        let p7 = |pid: u16| build(true, Some((pid, false)), Some(0), None, None, &[0]);
        for pid in 120..128 {
            assert_eq!(send(&mut m, &p7(pid)).picture_id, Some(pid));
        }
        m.switch_source();
        for i in 0..3u16 {
            let d = send(&mut m, &p7(10 + i));
            assert_eq!(d.picture_id, Some(i)); // 127 + 1 mod 128
            assert!(!d.picture_id_15bit);
            assert_eq!(d.header_len, 4);
        }
        // Mixed widths: 15-bit source after 7-bit, then 7-bit after 15-bit.
        m.switch_source();
        let d = send(&mut m, &pkt(5000, 0, 0));
        assert_eq!(d.picture_id, Some(131)); // 7-bit ids were tracked as 128..=130
        m.switch_source();
        assert_eq!(send(&mut m, &p7(3)).picture_id, Some(132 & 0x7F));
        m.switch_source();
        assert_eq!(send(&mut m, &pkt(7, 0, 0)).picture_id, Some(133));
    }

    #[test]
    fn no_realloc_once_capacity() {
        let mut m = Vp8Munger::new();
        send(&mut m, &pkt(10, 0, 0));
        m.switch_source();
        let mut out = Vec::with_capacity(64);
        let cap = out.capacity();
        let ptr = out.as_ptr();
        for i in 0..100 {
            assert_eq!(m.rewrite(&pkt(500 + i, 0, 0), &mut out), Ok(true));
        }
        assert_eq!((out.capacity(), out.as_ptr()), (cap, ptr));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut m = Vp8Munger::new();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            let r = next();
            buf.clear();
            for _ in 0..(r % 12) {
                buf.push(next() as u8);
            }
            if r & 0x100 != 0 {
                if let Some(b) = buf.first_mut() {
                    *b |= 0x80; // more often exercise the extension paths
                }
            }
            if r & 0xF000 == 0 {
                m.switch_source();
            }
            let parsed = parse(&buf);
            match m.rewrite(&buf, &mut out) {
                Ok(true) => {
                    assert_eq!(out.len(), buf.len());
                    let (a, b) = (parsed.unwrap(), parse(&out).unwrap());
                    assert_eq!(
                        (a.header_len, a.picture_id_15bit, a.tid),
                        (b.header_len, b.picture_id_15bit, b.tid)
                    );
                    assert_eq!((a.keyframe, a.layer_sync), (b.keyframe, b.layer_sync));
                }
                Ok(false) => assert!(parsed.is_some() && out.is_empty()),
                Err(_) => assert!(parsed.is_none() && out.is_empty()),
            }
        }
    }
}
