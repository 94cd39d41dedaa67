//! The receiving half shared by ULPFEC and FlexFEC: a window of recent media packets, the repair
//! packets waiting on it, and the XOR that rebuilds a lost packet.
//!
//! A repair packet can rebuild a packet when exactly one of the packets it protects is missing.
//! Every rebuilt packet may complete another repair packet, so recovery repeats until a pass
//! makes no progress. Each recovery spends a repair packet, which bounds the repetition by the
//! number held.

use crate::group::{xor_body, RecoveryFields};
use crate::rtp::{self, FIXED_HEADER_LEN};
use std::collections::VecDeque;

/// Media packets remembered, counted in sequence numbers back from the newest.
///
/// A repair packet is sent after the group it protects (at most 109 packets for FlexFEC, 48 for
/// ULPFEC) and may be reordered behind later media; 256 covers the largest group plus a comparable
/// delay. Must be a power of two: the window is a ring indexed by the low bits of the sequence
/// number.
pub const WINDOW: usize = 256;

/// Repair packets held while waiting for the media they protect.
///
/// A repair packet is useful only while what it protects is inside [`WINDOW`], and protection
/// above 50 % is unusual, so half the window holds every repair packet that can still matter.
/// Beyond that the oldest is dropped.
pub const MAX_PENDING: usize = WINDOW / 2;

/// Consecutive media packets older than the window after which the stream is taken to have
/// jumped backwards (a restarted sender) rather than to be suffering reordering, and the
/// decoder starts again from the new position. Reordering by a whole window is already rare;
/// several such packets in a row without a single in-window one does not happen.
const MAX_CONSECUTIVE_OLD: u32 = 8;

/// Counters of what a decoder did with its input, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Packets rebuilt.
    pub recovered: u64,
    /// Media packets ignored because they were older than the window.
    pub media_too_old: u64,
    /// Media packets ignored because the same sequence number was already held (received or
    /// recovered).
    pub media_duplicate: u64,
    /// Repair packets dropped because something they protect had left the window, or because
    /// they protect packets implausibly far ahead of the stream.
    pub repair_stale: u64,
    /// Repair packets dropped to keep at most [`MAX_PENDING`].
    pub repair_evicted: u64,
    /// Repair packets whose XOR did not yield a well-formed packet: corrupt, or protecting
    /// different bytes than were received.
    pub recovery_failed: u64,
    /// Times the state was cleared: by the caller, or because the sequence numbers jumped.
    pub resets: u64,
}

/// What a decoder did with a media packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatus {
    /// Stored for recovery.
    Stored,
    /// A packet with this sequence number is already held, received or recovered. If it was
    /// recovered and already forwarded, this copy is a duplicate to drop.
    Duplicate,
    /// Older than the decoder's window; ignored.
    TooOld,
}

#[derive(Debug, Default)]
struct Slot {
    /// Extended sequence number of the packet held, when `present`.
    ext: u64,
    present: bool,
    data: Vec<u8>,
}

/// A repair packet reduced to what recovery needs, shared by both formats.
#[derive(Debug)]
pub(crate) struct Repair {
    /// Sequence number that bit 0 of `mask` stands for.
    pub base: u16,
    /// Bit `i` set: packet `base + i` is protected. Never zero.
    pub mask: u128,
    pub fields: RecoveryFields,
    /// The XOR of the protected packets' bodies.
    pub body: Vec<u8>,
}

enum State {
    /// Protects a packet outside the window; can never be used.
    Stale,
    /// Everything it protects is held.
    Spent,
    /// Exactly one is missing; `base` is where the mask starts.
    Recoverable { base: u64, missing: u64 },
    /// Two or more are missing.
    Waiting,
}

#[derive(Debug)]
pub(crate) struct RecoveryCore {
    /// Ring of `WINDOW` slots indexed by the low bits of the extended sequence number.
    slots: Vec<Slot>,
    /// Newest extended sequence number stored.
    newest: Option<u64>,
    consecutive_old: u32,
    /// SSRC given to recovered packets.
    ssrc: u32,
    pending: VecDeque<Repair>,
    /// Buffers of spent repair packets, reused for the next ones.
    spare: Vec<Vec<u8>>,
    /// Extended sequence numbers recovered and not yet polled.
    ready: VecDeque<u64>,
    scratch: Vec<u8>,
    pub stats: RecoveryStats,
}

impl RecoveryCore {
    pub fn new(ssrc: u32) -> Self {
        Self {
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
            newest: None,
            consecutive_old: 0,
            ssrc,
            pending: VecDeque::new(),
            spare: Vec::new(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            stats: RecoveryStats::default(),
        }
    }

    /// Forget all packets, keeping buffers and statistics.
    pub fn reset(&mut self) {
        for slot in &mut self.slots {
            slot.present = false;
        }
        self.newest = None;
        self.consecutive_old = 0;
        while let Some(repair) = self.pending.pop_front() {
            self.recycle(repair.body);
        }
        self.ready.clear();
        self.stats.resets += 1;
    }

    /// A buffer for a repair packet's body, reused when one is available.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < MAX_PENDING {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    fn slot_index(ext: u64) -> usize {
        (ext % WINDOW as u64) as usize
    }

    /// Lowest extended sequence number still inside the window.
    fn bottom(newest: u64) -> u64 {
        newest.saturating_sub(WINDOW as u64 - 1)
    }

    fn is_present(&self, ext: u64) -> bool {
        let slot = &self.slots[Self::slot_index(ext)];
        slot.present && slot.ext == ext
    }

    /// Store a media packet that has passed [`rtp::check`], then recover what it completes.
    pub fn insert_media(&mut self, packet: &[u8]) -> MediaStatus {
        let seq = rtp::seq(packet);
        let ext = match self.newest {
            None => rtp::first_extended(seq),
            Some(newest) => match rtp::extend(newest, seq) {
                Some(ext) if ext >= Self::bottom(newest) => ext,
                _ => {
                    self.consecutive_old += 1;
                    if self.consecutive_old < MAX_CONSECUTIVE_OLD {
                        self.stats.media_too_old += 1;
                        return MediaStatus::TooOld;
                    }
                    self.reset();
                    rtp::first_extended(seq)
                }
            },
        };
        self.consecutive_old = 0;
        if self.is_present(ext) {
            self.stats.media_duplicate += 1;
            return MediaStatus::Duplicate;
        }
        let mut buffer = std::mem::take(&mut self.scratch);
        buffer.clear();
        buffer.extend_from_slice(packet);
        self.scratch = self.store(ext, buffer);
        self.recover();
        MediaStatus::Stored
    }

    /// Put `data` in the slot for `ext`, returning the buffer it replaces for reuse.
    fn store(&mut self, ext: u64, data: Vec<u8>) -> Vec<u8> {
        let slot = &mut self.slots[Self::slot_index(ext)];
        let replaced = std::mem::replace(&mut slot.data, data);
        slot.ext = ext;
        slot.present = true;
        self.newest = Some(self.newest.map_or(ext, |newest| newest.max(ext)));
        replaced
    }

    /// Hold a repair packet, then recover what it completes.
    pub fn insert_repair(&mut self, repair: Repair) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.pending.pop_front() {
                self.stats.repair_evicted += 1;
                self.recycle(oldest.body);
            }
        }
        self.pending.push_back(repair);
        self.recover();
    }

    /// Where `repair` stands. Its mask is placed relative to the newest packet stored or, before
    /// any, relative to itself.
    fn classify(&self, repair: &Repair) -> State {
        let newest = self
            .newest
            .unwrap_or_else(|| rtp::first_extended(repair.base));
        let Some(base) = rtp::extend(newest, repair.base) else {
            return State::Stale;
        };
        if repair.mask == 0 {
            // The parsers reject empty masks; this only keeps the arithmetic below in range.
            return State::Stale;
        }
        let first = base + u64::from(repair.mask.trailing_zeros());
        let last = base + u64::from(127 - repair.mask.leading_zeros());
        // Far ahead of the stream means a corrupt header or a different stream; waiting for it
        // would only hold a slot.
        if first < Self::bottom(newest) || last > newest + WINDOW as u64 {
            return State::Stale;
        }
        let mut missing = None;
        let mut bits = repair.mask;
        while bits != 0 {
            let ext = base + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            if !self.is_present(ext) {
                if missing.is_some() {
                    return State::Waiting;
                }
                missing = Some(ext);
            }
        }
        match missing {
            Some(missing) => State::Recoverable { base, missing },
            None => State::Spent,
        }
    }

    /// Rebuild packet `missing` from the repair packet at `repair_index`, whose mask starts at
    /// `base`, into `self.scratch`; false if the result is not a well-formed packet of a length
    /// the repair packet can supply.
    fn rebuild(&mut self, repair_index: usize, base: u64, missing: u64, ssrc: u32) -> bool {
        let Some(repair) = self.pending.get(repair_index) else {
            return false;
        };
        let mut fields = repair.fields;
        let out = &mut self.scratch;
        out.clear();
        out.resize(FIXED_HEADER_LEN, 0);
        out.extend_from_slice(&repair.body);
        let mut bits = repair.mask;
        while bits != 0 {
            let other = base + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            if other == missing {
                continue;
            }
            let slot = &self.slots[Self::slot_index(other)];
            fields.xor_packet(&slot.data);
            xor_body(&mut out[FIXED_HEADER_LEN..], &slot.data);
        }
        let len = FIXED_HEADER_LEN + usize::from(fields.length);
        if len > out.len() {
            // The repair packet protects fewer bytes than the packet had.
            return false;
        }
        out.truncate(len);
        out[0] = 0x80 | fields.pxcc;
        out[1] = fields.mpt;
        out[2..4].copy_from_slice(&(missing as u16).to_be_bytes());
        out[4..8].copy_from_slice(&fields.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&ssrc.to_be_bytes());
        rtp::check(out).is_ok()
    }

    /// Recover until a pass makes no progress.
    fn recover(&mut self) {
        let ssrc = self.ssrc;
        loop {
            let mut progress = false;
            let mut index = 0;
            while let Some(repair) = self.pending.get(index) {
                let target = match self.classify(repair) {
                    State::Waiting => {
                        index += 1;
                        continue;
                    }
                    State::Stale => {
                        self.stats.repair_stale += 1;
                        None
                    }
                    State::Spent => None,
                    State::Recoverable { base, missing } => Some((base, missing)),
                };
                if let Some((base, missing)) = target {
                    if self.rebuild(index, base, missing, ssrc) {
                        let data = std::mem::take(&mut self.scratch);
                        let replaced = self.store(missing, data);
                        self.scratch = replaced;
                        if self.ready.len() >= WINDOW {
                            self.ready.pop_front();
                        }
                        self.ready.push_back(missing);
                        self.stats.recovered += 1;
                        progress = true;
                    } else {
                        self.stats.recovery_failed += 1;
                    }
                }
                // Used, useless or failed: it will never recover anything else.
                if let Some(repair) = self.pending.remove(index) {
                    self.recycle(repair.body);
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Copy the next recovered packet into `out`, returning its sequence number.
    pub fn poll(&mut self, out: &mut Vec<u8>) -> Option<u16> {
        while let Some(ext) = self.ready.pop_front() {
            if self.is_present(ext) {
                let slot = &self.slots[Self::slot_index(ext)];
                out.clear();
                out.extend_from_slice(&slot.data);
                return Some(ext as u16);
            }
        }
        None
    }
}
