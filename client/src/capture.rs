//! Reading captured RTP (pcap / pcapng) into per-SSRC streams with original timing.
//!
//! [`read_capture`] opens a tcpdump / Wireshark capture, takes every UDP
//! datagram that looks like RTP (optionally only those to or from one UDP
//! port), and groups the packets into [`CapturedStream`]s by SSRC, each packet
//! keeping its capture time as an offset from the stream's first packet. The
//! load tester replays these streams; tests use them as real encoder output.
//!
//! Supported containers: pcap (micro- and nanosecond, either byte order) and
//! pcapng (any `if_tsresol`). Supported link types: Ethernet, raw IP (101,
//! 228, 229), Linux cooked capture v1 (SLL) and v2 (SLL2), and BSD NULL /
//! LOOP (what `tcpdump -i lo` writes on macOS and the BSDs).
//!
//! Malformed input never panics: undecodable records are skipped and counted
//! in [`Capture::skipped`], and a file that ends in the middle of a record
//! keeps the packets before it and sets [`Capture::truncated`]. IP fragments
//! are not reassembled (they are counted as skipped).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};

/// One RTP packet as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Capture time relative to the first packet of the same stream.
    pub offset: Duration,
    /// The whole RTP packet (header, payload and padding), as sent.
    pub rtp: Vec<u8>,
    pub seq: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
    /// Fixed header + CSRCs + header extension, in bytes.
    pub header_len: usize,
    /// RTP padding at the end of the packet (0 unless the P bit is set).
    pub padding_len: usize,
}

impl CapturedPacket {
    /// The RTP payload: the packet without header, extension and padding.
    pub fn payload(&self) -> &[u8] {
        // Both bounds were checked by `parse_rtp_header` when the packet was built;
        // `get` keeps a hand-built packet with bad fields from panicking.
        self.rtp
            .get(self.header_len..self.rtp.len().saturating_sub(self.padding_len))
            .unwrap_or(&[])
    }
}

/// Audio or video, guessed from the payload type and the packet pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKindGuess {
    Audio,
    Video,
}

/// All captured packets of one SSRC, in capture-time order.
#[derive(Clone, Debug)]
pub struct CapturedStream {
    pub ssrc: u32,
    /// The most common payload type of the stream's packets.
    pub payload_type: u8,
    /// `None` when there are too few packets to guess.
    pub kind: Option<MediaKindGuess>,
    /// Capture time of the stream's first packet, since the Unix epoch as the
    /// capture recorded it. Use it to keep streams aligned with each other:
    /// packet `p` of stream `s` was seen at `s.start + p.offset`.
    pub start: Duration,
    /// UDP source and destination of the stream's first packet.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub packets: Vec<CapturedPacket>,
}

impl CapturedStream {
    /// Time from the first to the last packet.
    pub fn duration(&self) -> Duration {
        self.packets.last().map(|p| p.offset).unwrap_or_default()
    }
}

/// The RTP content of a capture file.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Streams in order of their first packet in the file.
    pub streams: Vec<CapturedStream>,
    /// Records that could not be used although they might have been RTP:
    /// undecodable link/IP/UDP headers, packets cut short by the snap length,
    /// IP fragments, packets on an interface with an unsupported link type,
    /// and pcapng simple packet blocks (they carry no timestamp).
    pub skipped: usize,
    /// Well-formed UDP datagrams (passing the port filter) that are not RTP:
    /// RTCP, STUN, DTLS, ...
    pub not_rtp: usize,
    /// Well-formed packets that are not UDP, or do not match the port filter.
    pub ignored: usize,
    /// The file ended (or became unreadable) in the middle of a record; the
    /// packets before that point are kept.
    pub truncated: bool,
}

impl Capture {
    pub fn stream(&self, ssrc: u32) -> Option<&CapturedStream> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("cannot read capture file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a pcap or pcapng file: {reason}", path.display())]
    NotCapture { path: PathBuf, reason: String },
    #[error("{} has a malformed {format} header: {reason}", path.display())]
    BadHeader {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error(
        "{} uses link type {linktype}, which is not supported \
         (supported: Ethernet, raw IP, Linux cooked SLL/SLL2, BSD NULL/loopback)",
        path.display()
    )]
    UnsupportedLinkType { path: PathBuf, linktype: String },
    #[error("no RTP streams found in {}: {detail}", path.display())]
    NoRtpStreams { path: PathBuf, detail: String },
}

/// Read a pcap or pcapng file (detected by its magic number) and return its
/// RTP streams. With `udp_port`, only datagrams whose source or destination
/// port is `udp_port` are considered.
pub fn read_capture(path: &Path, udp_port: Option<u16>) -> Result<Capture, CaptureError> {
    let file = File::open(path).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_capture_from(BufReader::new(file), path, udp_port)
}

/// Like [`read_capture`], from any reader; `name` is only used in errors.
pub fn read_capture_from<R: Read>(
    mut reader: R,
    name: &Path,
    udp_port: Option<u16>,
) -> Result<Capture, CaptureError> {
    let io_err = |source| CaptureError::Io {
        path: name.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(io_err)?;
    if got < magic.len() {
        return Err(CaptureError::NotCapture {
            path: name.to_path_buf(),
            reason: if got == 0 {
                "the file is empty".into()
            } else {
                format!("the file is only {got} bytes long")
            },
        });
    }
    let reader = Cursor::new(magic).chain(reader);
    let mut acc = Accumulator::new(udp_port);
    match magic {
        [0xa1, 0xb2, 0xc3, 0xd4]
        | [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d]
        | [0x4d, 0x3c, 0xb2, 0xa1] => read_pcap(reader, name, &mut acc)?,
        [0x0a, 0x0d, 0x0d, 0x0a] => read_pcapng(reader, name, &mut acc)?,
        _ => {
            return Err(CaptureError::NotCapture {
                path: name.to_path_buf(),
                reason: format!(
                    "unknown magic number {:02x} {:02x} {:02x} {:02x}",
                    magic[0], magic[1], magic[2], magic[3]
                ),
            })
        }
    }
    acc.finish(name)
}

fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn header_error(name: &Path, format: &'static str, e: PcapError) -> CaptureError {
    match e {
        // An I/O error other than running out of bytes is the file's fault, not the format's.
        PcapError::IoError(source) if source.kind() != io::ErrorKind::UnexpectedEof => {
            CaptureError::Io {
                path: name.to_path_buf(),
                source,
            }
        }
        PcapError::IoError(_) | PcapError::IncompleteBuffer => CaptureError::BadHeader {
            path: name.to_path_buf(),
            format,
            reason: "the file ends inside the header".into(),
        },
        other => CaptureError::BadHeader {
            path: name.to_path_buf(),
            format,
            reason: other.to_string(),
        },
    }
}

fn read_pcap<R: Read>(reader: R, name: &Path, acc: &mut Accumulator) -> Result<(), CaptureError> {
    let mut reader = PcapReader::new(reader).map_err(|e| header_error(name, "pcap", e))?;
    let header = reader.header();
    if !link_supported(header.datalink) {
        return Err(CaptureError::UnsupportedLinkType {
            path: name.to_path_buf(),
            linktype: format!("{:?} ({})", header.datalink, u32::from(header.datalink)),
        });
    }
    // Raw records on purpose: pcap-file's `next_packet` rejects records whose
    // original length exceeds the snap length (normal for `tcpdump -s N`), and
    // after any record error its reader does not advance, so we stop at the
    // first one (the rest of a pcap cannot be resynchronised anyway).
    while let Some(record) = reader.next_raw_packet() {
        let raw = match record {
            Ok(raw) => raw,
            Err(_) => {
                acc.skipped += 1;
                acc.truncated = true;
                break;
            }
        };
        let frac_nanos = match header.ts_resolution {
            TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1_000,
            TsResolution::NanoSecond => u64::from(raw.ts_frac),
        };
        let time = Duration::from_secs(u64::from(raw.ts_sec))
            .saturating_add(Duration::from_nanos(frac_nanos));
        if raw.incl_len < raw.orig_len {
            // Cut by the snap length: the UDP payload is incomplete.
            acc.skipped += 1;
            continue;
        }
        acc.add_frame(header.datalink, time, &raw.data);
    }
    Ok(())
}

struct Interface {
    linktype: DataLink,
    tsresol: u8,
    tsoffset: u64,
}

fn read_pcapng<R: Read>(reader: R, name: &Path, acc: &mut Accumulator) -> Result<(), CaptureError> {
    let mut reader = PcapNgReader::new(reader).map_err(|e| header_error(name, "pcapng", e))?;
    // Mirrors the reader's own interface table (it cannot be borrowed while a
    // block is alive): a section header block starts a new table.
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut unsupported: Option<DataLink> = None;
    while let Some(block) = reader.next_block() {
        let block = match block {
            Ok(block) => block,
            Err(_) => {
                // A bad block length or body: the reader cannot go on past it.
                acc.skipped += 1;
                acc.truncated = true;
                break;
            }
        };
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut iface = Interface {
                    linktype: idb.linktype,
                    tsresol: 6,
                    tsoffset: 0,
                };
                for opt in &idb.options {
                    match opt {
                        InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                        InterfaceDescriptionOption::IfTsOffset(o) => iface.tsoffset = *o,
                        _ => {}
                    }
                }
                interfaces.push(iface);
            }
            Block::EnhancedPacket(epb) => {
                // pcap-file stores the raw 64-bit count as if it were nanoseconds.
                let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                acc.add_ng_packet(
                    &interfaces,
                    epb.interface_id,
                    raw,
                    epb.original_len,
                    &epb.data,
                    &mut unsupported,
                );
            }
            Block::Packet(pb) => {
                acc.add_ng_packet(
                    &interfaces,
                    u32::from(pb.interface_id),
                    pb.timestamp,
                    pb.original_len,
                    &pb.data,
                    &mut unsupported,
                );
            }
            // No timestamp: useless for replay timing.
            Block::SimplePacket(_) => acc.skipped += 1,
            _ => {}
        }
    }
    if let Some(link) = unsupported {
        acc.notes.push(format!(
            "packets on an interface with unsupported link type {:?} ({}) were skipped",
            link,
            u32::from(link)
        ));
    }
    Ok(())
}

/// A pcapng timestamp count to time since the epoch, per `if_tsresol` and
/// `if_tsoffset` (seconds). Saturates rather than overflowing.
fn pcapng_time(raw: u64, tsresol: u8, tsoffset: u64) -> Duration {
    const NANOS: u128 = 1_000_000_000;
    let exp = u32::from(tsresol & 0x7f);
    let nanos: u128 = if tsresol & 0x80 == 0 {
        if exp <= 9 {
            u128::from(raw) * 10u128.pow(9 - exp)
        } else {
            10u128
                .checked_pow(exp - 9)
                .map_or(0, |div| u128::from(raw) / div)
        }
    } else {
        (u128::from(raw) * NANOS) >> exp.min(127)
    };
    let secs = u64::try_from(nanos / NANOS).unwrap_or(u64::MAX);
    let sub = (nanos % NANOS) as u32;
    Duration::from_secs(tsoffset).saturating_add(Duration::new(secs, sub))
}

fn link_supported(link: DataLink) -> bool {
    matches!(
        link,
        DataLink::ETHERNET
            | DataLink::RAW
            | DataLink::IPV4
            | DataLink::IPV6
            | DataLink::LINUX_SLL
            | DataLink::LINUX_SLL2
            | DataLink::NULL
            | DataLink::LOOP
    )
}

/// Decode the link layer down to IP/UDP. `None` for an unsupported link type.
fn slice_frame(link: DataLink, data: &[u8]) -> Option<Result<SlicedPacket<'_>, ()>> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).map_err(drop),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            SlicedPacket::from_ip(data).map_err(drop)
        }
        // etherparse only accepts SLL headers whose ARPHRD type it knows, and
        // not ARPHRD_LOOPBACK (772) or ARPHRD_NONE (tun), which is what
        // `tcpdump -i any` writes for loopback and VPN traffic; for those, take
        // the protocol field (bytes 14..16) as the EtherType ourselves.
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).or_else(|_| {
            match (data.get(14..16), data.get(16..)) {
                (Some(proto), Some(rest)) => SlicedPacket::from_ether_type(
                    EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                    rest,
                )
                .map_err(drop),
                _ => Err(()),
            }
        }),
        // SLL2: protocol type (2), reserved (2), ifindex (4), ARPHRD (2),
        // packet type (1), address length (1), address (8); 20 bytes.
        DataLink::LINUX_SLL2 => match (data.get(..2), data.get(20..)) {
            (Some(proto), Some(rest)) => SlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                rest,
            )
            .map_err(drop),
            _ => Err(()),
        },
        // NULL / LOOP: a 4-byte address family, then the IP packet, whose own
        // version nibble tells v4 from v6 whatever the family's byte order.
        DataLink::NULL | DataLink::LOOP => match data.get(4..) {
            Some(rest) => SlicedPacket::from_ip(rest).map_err(drop),
            None => Err(()),
        },
        _ => return None,
    };
    Some(sliced)
}

/// The fields of an RTP fixed header (RFC 3550 §5.1) that stream grouping needs.
///
/// Hand-written rather than pulling in a crate (e.g. `rtp-rs`): it is a few
/// lines, and we want our own acceptance rules (RTCP rejection, strict length
/// checks) rather than a dependency's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Fixed header + CSRCs + extension.
    pub header_len: usize,
    pub padding_len: usize,
}

/// Parse `buf` as an RTP packet; `None` if it is not one (too short, not
/// version 2, RTCP, or CSRC / extension / padding lengths that do not fit).
pub fn parse_rtp_header(buf: &[u8]) -> Option<RtpHeader> {
    if buf.len() < 12 || buf[0] >> 6 != 2 {
        return None;
    }
    // RTCP packet types 192..=223 in the second byte (RFC 5761 §4); that is
    // marker + PT 64..=95. PT 72..=76 is never RTP, marker or not.
    let payload_type = buf[1] & 0x7f;
    if (192..=223).contains(&buf[1]) || (72..=76).contains(&payload_type) {
        return None;
    }
    let csrc_count = usize::from(buf[0] & 0x0f);
    let mut header_len = 12 + 4 * csrc_count;
    if buf[0] & 0x10 != 0 {
        let ext = buf.get(header_len..header_len + 4)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if header_len > buf.len() {
        return None;
    }
    let padding_len = if buf[0] & 0x20 != 0 {
        let pad = usize::from(buf[buf.len() - 1]);
        if pad == 0 || pad > buf.len() - header_len {
            return None;
        }
        pad
    } else {
        0
    };
    Some(RtpHeader {
        marker: buf[1] & 0x80 != 0,
        payload_type,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        header_len,
        padding_len,
    })
}

struct PendingPacket {
    time: Duration,
    header: RtpHeader,
    rtp: Vec<u8>,
}

struct PendingStream {
    src: SocketAddr,
    dst: SocketAddr,
    packets: Vec<PendingPacket>,
}

struct Accumulator {
    udp_port: Option<u16>,
    frames: usize,
    udp: usize,
    skipped: usize,
    not_rtp: usize,
    ignored: usize,
    truncated: bool,
    notes: Vec<String>,
    index: HashMap<u32, usize>,
    streams: Vec<(u32, PendingStream)>,
}

impl Accumulator {
    fn new(udp_port: Option<u16>) -> Self {
        Accumulator {
            udp_port,
            frames: 0,
            udp: 0,
            skipped: 0,
            not_rtp: 0,
            ignored: 0,
            truncated: false,
            notes: Vec::new(),
            index: HashMap::new(),
            streams: Vec::new(),
        }
    }

    fn add_ng_packet(
        &mut self,
        interfaces: &[Interface],
        interface_id: u32,
        raw_time: u64,
        original_len: u32,
        data: &[u8],
        unsupported: &mut Option<DataLink>,
    ) {
        let Some(iface) = usize::try_from(interface_id)
            .ok()
            .and_then(|i| interfaces.get(i))
        else {
            self.frames += 1;
            self.skipped += 1;
            return;
        };
        if !link_supported(iface.linktype) {
            self.frames += 1;
            self.skipped += 1;
            unsupported.get_or_insert(iface.linktype);
            return;
        }
        if (data.len() as u64) < u64::from(original_len) {
            self.frames += 1;
            self.skipped += 1;
            return;
        }
        let time = pcapng_time(raw_time, iface.tsresol, iface.tsoffset);
        self.add_frame(iface.linktype, time, data);
    }

    fn add_frame(&mut self, link: DataLink, time: Duration, data: &[u8]) {
        self.frames += 1;
        let sliced = match slice_frame(link, data) {
            Some(Ok(sliced)) => sliced,
            Some(Err(())) | None => {
                self.skipped += 1;
                return;
            }
        };
        let udp = match &sliced.transport {
            Some(TransportSlice::Udp(udp)) => udp,
            None if sliced.is_ip_payload_fragmented() => {
                self.skipped += 1;
                return;
            }
            _ => {
                self.ignored += 1;
                return;
            }
        };
        let (sport, dport) = (udp.source_port(), udp.destination_port());
        if let Some(port) = self.udp_port {
            if sport != port && dport != port {
                self.ignored += 1;
                return;
            }
        }
        self.udp += 1;
        let payload = udp.payload();
        let Some(header) = parse_rtp_header(payload) else {
            self.not_rtp += 1;
            return;
        };
        let (sip, dip) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            ),
            None => {
                self.skipped += 1;
                return;
            }
        };
        let next = self.streams.len();
        let idx = *self.index.entry(header.ssrc).or_insert(next);
        if idx == next {
            self.streams.push((
                header.ssrc,
                PendingStream {
                    src: SocketAddr::new(sip, sport),
                    dst: SocketAddr::new(dip, dport),
                    packets: Vec::new(),
                },
            ));
        }
        self.streams[idx].1.packets.push(PendingPacket {
            time,
            header,
            rtp: payload.to_vec(),
        });
    }

    fn finish(self, name: &Path) -> Result<Capture, CaptureError> {
        if self.streams.is_empty() {
            let mut detail = format!(
                "{} packets read, {} UDP datagrams{}, {} not RTP, {} skipped as undecodable",
                self.frames,
                self.udp,
                match self.udp_port {
                    Some(p) => format!(" to or from port {p}"),
                    None => String::new(),
                },
                self.not_rtp,
                self.skipped,
            );
            if self.truncated {
                detail.push_str("; the file is truncated or corrupt");
            }
            for note in &self.notes {
                detail.push_str("; ");
                detail.push_str(note);
            }
            detail.push_str(match self.udp_port {
                Some(_) => "; check --udp-port (or leave it out to take RTP on every port)",
                None => {
                    "; check that the capture holds the RTP traffic, or narrow it with --udp-port"
                }
            });
            return Err(CaptureError::NoRtpStreams {
                path: name.to_path_buf(),
                detail,
            });
        }
        let streams = self
            .streams
            .into_iter()
            .map(|(ssrc, s)| build_stream(ssrc, s))
            .collect();
        Ok(Capture {
            streams,
            skipped: self.skipped,
            not_rtp: self.not_rtp,
            ignored: self.ignored,
            truncated: self.truncated,
        })
    }
}

fn build_stream(ssrc: u32, mut pending: PendingStream) -> CapturedStream {
    // Capture order is time order in ordinary captures; a stable sort keeps it
    // so, and makes offsets monotonic in merged multi-interface captures too.
    pending.packets.sort_by_key(|p| p.time);
    let start = pending.packets.first().map(|p| p.time).unwrap_or_default();
    let mut pt_counts: HashMap<u8, usize> = HashMap::new();
    for p in &pending.packets {
        *pt_counts.entry(p.header.payload_type).or_default() += 1;
    }
    let payload_type = pt_counts
        .into_iter()
        .max_by_key(|&(pt, n)| (n, std::cmp::Reverse(pt)))
        .map(|(pt, _)| pt)
        .unwrap_or_default();
    let packets: Vec<CapturedPacket> = pending
        .packets
        .into_iter()
        .map(|p| CapturedPacket {
            offset: p.time.saturating_sub(start),
            rtp: p.rtp,
            seq: p.header.seq,
            timestamp: p.header.timestamp,
            payload_type: p.header.payload_type,
            marker: p.header.marker,
            header_len: p.header.header_len,
            padding_len: p.header.padding_len,
        })
        .collect();
    CapturedStream {
        ssrc,
        payload_type,
        kind: guess_kind(payload_type, &packets),
        start,
        src: pending.src,
        dst: pending.dst,
        packets,
    }
}

/// Audio or video, from (in order): PT 111 (Opus by WebRTC convention) and
/// the static PTs of RFC 3551; the RTP clock rate measured against capture
/// time (90 kHz is video, the usual audio rates are audio); then the packet
/// pattern (several packets per timestamp is video; regular 5-125 ms packets
/// with small payloads is audio); otherwise video.
fn guess_kind(payload_type: u8, packets: &[CapturedPacket]) -> Option<MediaKindGuess> {
    use MediaKindGuess::{Audio, Video};
    match payload_type {
        111 => return Some(Audio),
        0..=18 => return Some(Audio),
        25 | 26 | 28 | 31..=34 => return Some(Video),
        _ => {}
    }
    if packets.len() < 2 {
        return None;
    }
    let (first, last) = (&packets[0], &packets[packets.len() - 1]);
    let span = last.offset.saturating_sub(first.offset).as_secs_f64();
    // Unwrapped timestamp advance, summed over consecutive packets.
    let ticks: i64 = packets
        .windows(2)
        .map(|w| i64::from(w[1].timestamp.wrapping_sub(w[0].timestamp) as i32))
        .sum();
    if span >= 0.2 && ticks > 0 {
        let rate = ticks as f64 / span;
        let near = |clock: f64, tol: f64| (rate / clock - 1.0).abs() < tol;
        if near(90_000.0, 0.15) {
            return Some(Video);
        }
        if [8_000.0, 16_000.0, 24_000.0, 32_000.0, 44_100.0, 48_000.0]
            .iter()
            .any(|&c| near(c, 0.08))
        {
            return Some(Audio);
        }
    }
    let same_ts = packets
        .windows(2)
        .filter(|w| w[0].timestamp == w[1].timestamp)
        .count();
    if same_ts * 10 > packets.len() - 1 {
        return Some(Video);
    }
    let max_payload = packets.iter().map(|p| p.payload().len()).max().unwrap_or(0);
    let mut gaps: Vec<Duration> = packets
        .windows(2)
        .map(|w| w[1].offset.saturating_sub(w[0].offset))
        .collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    if max_payload <= 400
        && median >= Duration::from_millis(5)
        && median <= Duration::from_millis(125)
    {
        return Some(Audio);
    }
    Some(Video)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use std::borrow::Cow;

    const VIDEO_SSRC: u32 = 0x1122_3344;
    const AUDIO_SSRC: u32 = 0x5566_7788;
    const VIDEO_PORT: u16 = 45096;

    fn sample_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sample-vp8-opus.pcap")
    }

    fn sample_bytes() -> Vec<u8> {
        std::fs::read(sample_path())
            .expect("tests/data/sample-vp8-opus.pcap (make it with scripts/make-sample.sh)")
    }

    fn read_bytes(data: &[u8], port: Option<u16>) -> Result<Capture, CaptureError> {
        read_capture_from(data, Path::new("<test>"), port)
    }

    /// The sample's Ethernet frames with their capture times.
    fn sample_frames() -> Vec<(Duration, Vec<u8>)> {
        let data = sample_bytes();
        let mut reader = PcapReader::new(&data[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut out = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            out.push((p.timestamp, p.data.into_owned()));
        }
        out
    }

    fn write_pcap(link: DataLink, frames: &[(Duration, Vec<u8>)]) -> Vec<u8> {
        let header = PcapHeader {
            datalink: link,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (t, f) in frames {
            w.write_packet(&PcapPacket::new(*t, f.len() as u32, f))
                .unwrap();
        }
        w.into_writer()
    }

    fn assert_same_streams(a: &Capture, b: &Capture) {
        assert_eq!(a.streams.len(), b.streams.len());
        for (x, y) in a.streams.iter().zip(&b.streams) {
            assert_eq!(x.ssrc, y.ssrc);
            assert_eq!(x.payload_type, y.payload_type);
            assert_eq!(x.kind, y.kind);
            assert_eq!(x.start, y.start);
            assert_eq!(x.packets, y.packets);
        }
    }

    #[test]
    fn sample_has_vp8_and_opus_streams() {
        let cap = read_capture(&sample_path(), None).unwrap();
        assert_eq!(cap.streams.len(), 2, "{cap:?}");
        assert_eq!(cap.skipped, 0);
        assert_eq!(cap.not_rtp, 0);
        assert!(!cap.truncated);

        let video = cap
            .streams
            .iter()
            .find(|s| s.payload_type == 96)
            .expect("VP8 stream");
        let audio = cap
            .streams
            .iter()
            .find(|s| s.payload_type == 111)
            .expect("Opus stream");
        assert_eq!(video.ssrc, VIDEO_SSRC);
        assert_eq!(audio.ssrc, AUDIO_SSRC);
        assert_eq!(video.kind, Some(MediaKindGuess::Video));
        assert_eq!(audio.kind, Some(MediaKindGuess::Audio));
        // The clock-rate / pattern heuristic agrees without the PT hint.
        assert_eq!(guess_kind(100, &video.packets), Some(MediaKindGuess::Video));
        assert_eq!(guess_kind(100, &audio.packets), Some(MediaKindGuess::Audio));
        assert_eq!(video.dst, "127.0.0.1:45096".parse().unwrap());
        assert_eq!(audio.dst, "127.0.0.1:45111".parse().unwrap());

        // ~6 s at ~500 kbit/s in <= 1200-byte packets; Opus at 50 packets/s.
        assert!(
            (250..=700).contains(&video.packets.len()),
            "video packets: {}",
            video.packets.len()
        );
        assert!(
            (280..=320).contains(&audio.packets.len()),
            "audio packets: {}",
            audio.packets.len()
        );
        for s in [video, audio] {
            assert!(
                s.packets.windows(2).all(|w| w[0].offset <= w[1].offset),
                "offsets not monotonic"
            );
            assert_eq!(s.packets[0].offset, Duration::ZERO);
            let d = s.duration();
            assert!(
                d > Duration::from_millis(5_500) && d < Duration::from_millis(6_500),
                "duration {d:?}"
            );
            // Nothing lost on loopback: sequence numbers are consecutive.
            assert!(s
                .packets
                .windows(2)
                .all(|w| w[1].seq == w[0].seq.wrapping_add(1)));
            assert!(s
                .packets
                .iter()
                .all(|p| p.rtp.len() <= 1200 && !p.payload().is_empty()));
        }
        // The video sequence starts near the top (65300) and wraps.
        assert!(video.packets.windows(2).any(|w| w[1].seq < w[0].seq));
        // The streams were sent together: both start within 100 ms.
        let gap = video.start.abs_diff(audio.start);
        assert!(
            gap < Duration::from_millis(100),
            "stream starts {gap:?} apart"
        );
    }

    #[test]
    fn sample_payloads_are_real_vp8_and_opus() {
        let cap = read_capture(&sample_path(), None).unwrap();
        let video = cap.stream(VIDEO_SSRC).unwrap();
        let audio = cap.stream(AUDIO_SSRC).unwrap();

        // VP8 (RFC 7741): a packet starting a frame has S=1, PID=0; the frame
        // is a keyframe when the VP8 header's P bit is 0, followed by the
        // start code 9d 01 2a. With a keyframe every 2 s, 6 s holds 3.
        let mut keyframes = 0;
        for p in &video.packets {
            let pl = p.payload();
            let mut i = 1;
            if pl[0] & 0x80 != 0 {
                // X: extension byte, then optional PictureID / TL0PICIDX / TID.
                let x = pl[1];
                i = 2;
                if x & 0x80 != 0 {
                    i += if pl[i] & 0x80 != 0 { 2 } else { 1 };
                }
                if x & 0x40 != 0 {
                    i += 1;
                }
                if x & 0x30 != 0 {
                    i += 1;
                }
            }
            let start_of_frame = pl[0] & 0x10 != 0 && pl[0] & 0x07 == 0;
            if start_of_frame && pl[i] & 0x01 == 0 {
                assert_eq!(
                    &pl[i + 3..i + 6],
                    &[0x9d, 0x01, 0x2a],
                    "keyframe start code"
                );
                keyframes += 1;
            }
        }
        assert!((3..=4).contains(&keyframes), "keyframes: {keyframes}");
        // 30 fps on a 90 kHz clock; the marker ends each frame.
        let frames: Vec<&CapturedPacket> = video.packets.iter().filter(|p| p.marker).collect();
        assert!(
            (170..=190).contains(&frames.len()),
            "frames: {}",
            frames.len()
        );
        assert!(frames
            .windows(2)
            .all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 3000));

        // Opus (RFC 6716 TOC byte): one 20 ms frame per packet, 960 ticks apart.
        for p in &audio.packets {
            let toc = p.payload()[0];
            let config = toc >> 3;
            let twenty_ms = match config {
                0..=11 => config % 4 == 1,
                12..=15 => config % 2 == 1,
                _ => config % 4 == 3,
            };
            assert!(twenty_ms, "TOC config {config} is not a 20 ms frame");
            assert_eq!(toc & 0x03, 0, "one frame per packet");
        }
        assert!(audio
            .packets
            .windows(2)
            .all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 960));
    }

    #[test]
    fn port_filter() {
        let cap = read_capture(&sample_path(), Some(VIDEO_PORT)).unwrap();
        assert_eq!(cap.streams.len(), 1);
        assert_eq!(cap.streams[0].ssrc, VIDEO_SSRC);
        assert_eq!(
            cap.ignored,
            read_capture(&sample_path(), None)
                .unwrap()
                .stream(AUDIO_SSRC)
                .unwrap()
                .packets
                .len()
        );

        let err = read_capture(&sample_path(), Some(9)).unwrap_err();
        assert!(matches!(err, CaptureError::NoRtpStreams { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("port 9") && msg.contains("--udp-port"),
            "{msg}"
        );
    }

    #[test]
    fn other_link_types_give_the_same_streams() {
        let frames = sample_frames();
        let reference = read_bytes(&sample_bytes(), None).unwrap();
        let strip = |f: &Vec<u8>| f[14..].to_vec(); // Ethernet II header

        let raw: Vec<_> = frames.iter().map(|(t, f)| (*t, strip(f))).collect();
        assert_same_streams(
            &reference,
            &read_bytes(&write_pcap(DataLink::RAW, &raw), None).unwrap(),
        );

        let null: Vec<_> = frames
            .iter()
            .map(|(t, f)| (*t, [&2u32.to_le_bytes()[..], &f[14..]].concat()))
            .collect();
        assert_same_streams(
            &reference,
            &read_bytes(&write_pcap(DataLink::NULL, &null), None).unwrap(),
        );

        // Linux cooked v1: packet type, ARPHRD_LOOPBACK, address length, address (8), protocol.
        let sll: Vec<_> = frames
            .iter()
            .map(|(t, f)| {
                let hdr = [0, 0, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
                (*t, [&hdr[..], &f[14..]].concat())
            })
            .collect();
        assert_same_streams(
            &reference,
            &read_bytes(&write_pcap(DataLink::LINUX_SLL, &sll), None).unwrap(),
        );

        // Linux cooked v2: protocol, reserved, ifindex, ARPHRD, packet type, address length, address (8).
        let sll2: Vec<_> = frames
            .iter()
            .map(|(t, f)| {
                let hdr = [
                    0x08, 0x00, 0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                (*t, [&hdr[..], &f[14..]].concat())
            })
            .collect();
        assert_same_streams(
            &reference,
            &read_bytes(&write_pcap(DataLink::LINUX_SLL2, &sll2), None).unwrap(),
        );
    }

    /// `if_tsresol` for 2^-20 s.
    const BINARY_20: u8 = 0x80 | 20;

    /// pcapng with the given `if_tsresol` (None: the default, microseconds).
    fn write_pcapng(frames: &[(Duration, Vec<u8>)], tsresol: Option<u8>) -> Vec<u8> {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
        if let Some(r) = tsresol {
            idb.options.push(InterfaceDescriptionOption::IfTsResol(r));
        }
        w.write_pcapng_block(idb).unwrap();
        for (t, f) in frames {
            // pcap-file writes `timestamp.as_nanos()` as the raw count.
            let raw = match tsresol {
                None | Some(6) => t.as_micros() as u64,
                Some(9) => t.as_nanos() as u64,
                Some(BINARY_20) => ((t.as_nanos() << 20) / 1_000_000_000) as u64,
                Some(other) => panic!("test does not handle tsresol {other}"),
            };
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(raw),
                original_len: f.len() as u32,
                data: Cow::Borrowed(&f[..]),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn pcapng_gives_the_same_streams() {
        let frames = sample_frames();
        let reference = read_bytes(&sample_bytes(), None).unwrap();
        for tsresol in [None, Some(6), Some(9)] {
            let cap = read_bytes(&write_pcapng(&frames, tsresol), None).unwrap();
            assert_same_streams(&reference, &cap);
        }
        // Binary resolution (2^-20 s): same packets, times within a microsecond.
        let cap = read_bytes(&write_pcapng(&frames, Some(BINARY_20)), None).unwrap();
        assert_eq!(cap.streams.len(), 2);
        for (x, y) in reference.streams.iter().zip(&cap.streams) {
            assert_eq!(x.packets.len(), y.packets.len());
            for (a, b) in x.packets.iter().zip(&y.packets) {
                assert!(a.offset.abs_diff(b.offset) <= Duration::from_micros(2));
            }
        }
    }

    #[test]
    fn pcapng_time_conversion() {
        assert_eq!(pcapng_time(1_500_000, 6, 0), Duration::from_millis(1500));
        assert_eq!(pcapng_time(1_500_000, 6, 10), Duration::from_millis(11_500));
        assert_eq!(pcapng_time(1_500, 3, 0), Duration::from_millis(1500));
        assert_eq!(pcapng_time(3 << 20, 0x80 | 20, 0), Duration::from_secs(3));
        assert_eq!(pcapng_time(15, 10, 0), Duration::from_nanos(1));
        // Absurd resolutions do not panic.
        for r in [0u8, 9, 19, 38, 39, 127, 0x80, 0xff] {
            let _ = pcapng_time(u64::MAX, r, u64::MAX);
        }
    }

    #[test]
    fn rtp_header_parsing() {
        let mut p = vec![
            0x80, 96, 0x12, 0x34, 0, 0, 0x0b, 0xb8, 0x11, 0x22, 0x33, 0x44, 0xaa, 0xbb,
        ];
        let h = parse_rtp_header(&p).unwrap();
        assert_eq!(
            (h.payload_type, h.marker, h.seq, h.timestamp, h.ssrc),
            (96, false, 0x1234, 3000, VIDEO_SSRC)
        );
        assert_eq!((h.header_len, h.padding_len), (12, 0));
        p[1] = 0x80 | 111;
        assert!(parse_rtp_header(&p).unwrap().marker);

        assert!(
            parse_rtp_header(&p[..11]).is_none(),
            "shorter than the fixed header"
        );
        let mut v1 = p.clone();
        v1[0] = 0x40;
        assert!(parse_rtp_header(&v1).is_none(), "version 1");
        for rtcp_type in [200u8, 201, 202, 203, 204, 205, 206, 207, 192, 223] {
            let mut r = p.clone();
            r[1] = rtcp_type;
            assert!(parse_rtp_header(&r).is_none(), "RTCP type {rtcp_type}");
        }
        let mut csrc = p.clone();
        csrc[0] = 0x81; // one CSRC: 16 bytes of header, only 14 present
        assert!(parse_rtp_header(&csrc).is_none());
        csrc.extend_from_slice(&[0; 2]);
        assert_eq!(parse_rtp_header(&csrc).unwrap().header_len, 16);

        // One-byte-header extension of 1 word.
        let mut ext = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0, 0x42,
        ];
        assert_eq!(parse_rtp_header(&ext).unwrap().header_len, 20);
        ext[15] = 9; // extension longer than the packet
        assert!(parse_rtp_header(&ext).is_none());
        assert!(
            parse_rtp_header(&ext[..14]).is_none(),
            "extension header cut short"
        );

        // Padding: 2 bytes of payload, 3 of padding.
        let pad = [0xa0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 7, 8, 0, 0, 3];
        let h = parse_rtp_header(&pad).unwrap();
        assert_eq!(h.padding_len, 3);
        let pkt = CapturedPacket {
            offset: Duration::ZERO,
            rtp: pad.to_vec(),
            seq: h.seq,
            timestamp: h.timestamp,
            payload_type: h.payload_type,
            marker: h.marker,
            header_len: h.header_len,
            padding_len: h.padding_len,
        };
        assert_eq!(pkt.payload(), &[7, 8]);
        let mut bad_pad = pad;
        bad_pad[16] = 0;
        assert!(parse_rtp_header(&bad_pad).is_none(), "zero padding count");
        bad_pad[16] = 6;
        assert!(
            parse_rtp_header(&bad_pad).is_none(),
            "padding into the header"
        );
    }

    #[test]
    fn kind_guess_from_pattern() {
        let pkt = |ms: u64, ts: u32, len: usize| CapturedPacket {
            offset: Duration::from_millis(ms),
            rtp: vec![0; 12 + len],
            seq: 0,
            timestamp: ts,
            payload_type: 100,
            marker: false,
            header_len: 12,
            padding_len: 0,
        };
        // 16 kHz audio every 20 ms.
        let audio: Vec<_> = (0..50).map(|i| pkt(i * 20, i as u32 * 320, 80)).collect();
        assert_eq!(guess_kind(100, &audio), Some(MediaKindGuess::Audio));
        // 90 kHz video, 3 packets per frame, timestamps wrapping.
        let video: Vec<_> = (0..90)
            .map(|i| {
                pkt(
                    i / 3 * 33,
                    (u32::MAX - 30_000).wrapping_add((i / 3) as u32 * 3000),
                    1100,
                )
            })
            .collect();
        assert_eq!(guess_kind(100, &video), Some(MediaKindGuess::Video));
        // Unknown clock, but small payloads every 20 ms.
        let odd: Vec<_> = (0..10).map(|i| pkt(i * 20, i as u32 * 7, 60)).collect();
        assert_eq!(guess_kind(100, &odd), Some(MediaKindGuess::Audio));
        assert_eq!(guess_kind(100, &audio[..1]), None);
        assert_eq!(guess_kind(111, &audio[..1]), Some(MediaKindGuess::Audio));
        assert_eq!(guess_kind(0, &[]), Some(MediaKindGuess::Audio));
        assert_eq!(guess_kind(100, &[]), None);
    }

    #[test]
    fn unreadable_paths_name_the_path() {
        let missing = Path::new("/nonexistent/meridian/capture.pcap");
        let err = read_capture(missing, None).unwrap_err();
        assert!(matches!(err, CaptureError::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("/nonexistent/meridian/capture.pcap"),
            "{err}"
        );

        let dir = std::env::temp_dir();
        let err = read_capture(&dir, None).unwrap_err();
        assert!(matches!(err, CaptureError::Io { .. }), "{err:?}");
    }

    #[test]
    fn not_a_capture() {
        let err = read_bytes(&[], None).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }), "{err:?}");
        assert!(err.to_string().contains("empty"), "{err}");
        let err = read_bytes(&[0xd4, 0xc3], None).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }), "{err:?}");

        let mut rng = Lcg(7);
        let random: Vec<u8> = (0..4096).map(|_| rng.byte()).collect();
        let err = read_bytes(&random, None).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }), "{err:?}");
        assert!(
            err.to_string().contains("not a pcap or pcapng file"),
            "{err}"
        );

        let err = read_bytes(b"GET / HTTP/1.1\r\n\r\n", None).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }), "{err:?}");
    }

    #[test]
    fn truncated_files() {
        let data = sample_bytes();
        // Inside the 24-byte global header.
        for len in [4, 10, 23] {
            let err = read_bytes(&data[..len], None).unwrap_err();
            assert!(
                matches!(err, CaptureError::BadHeader { .. }),
                "{len}: {err:?}"
            );
        }
        // Header only, and header plus a partial first record.
        for len in [24, 30, 60] {
            let err = read_bytes(&data[..len], None).unwrap_err();
            assert!(
                matches!(err, CaptureError::NoRtpStreams { .. }),
                "{len}: {err:?}"
            );
        }
        // Cut in the middle: the complete records before the cut are kept.
        let full = read_bytes(&data, None).unwrap();
        let full_count: usize = full.streams.iter().map(|s| s.packets.len()).sum();
        let half = read_bytes(&data[..data.len() / 2 + 7], None).unwrap();
        assert!(half.truncated);
        let half_count: usize = half.streams.iter().map(|s| s.packets.len()).sum();
        assert!(
            half_count > 0 && half_count < full_count,
            "{half_count} of {full_count}"
        );

        // pcapng cut inside the section header, and in the middle.
        let ng = write_pcapng(&sample_frames(), None);
        let err = read_bytes(&ng[..12], None).unwrap_err();
        assert!(matches!(err, CaptureError::BadHeader { .. }), "{err:?}");
        let half = read_bytes(&ng[..ng.len() / 2 + 3], None).unwrap();
        assert!(half.truncated && !half.streams.is_empty());
    }

    #[test]
    fn unsupported_link_type() {
        let frames = sample_frames();
        let data = write_pcap(DataLink::IEEE802_11, &frames[..3]);
        let err = read_bytes(&data, None).unwrap_err();
        assert!(
            matches!(err, CaptureError::UnsupportedLinkType { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("IEEE802_11"), "{err}");
    }

    #[test]
    fn garbage_records_are_skipped() {
        let mut frames = sample_frames();
        let n = frames.len();
        // Corrupt some frames in ways the decoder must survive.
        frames[3].1.truncate(20); // IP header cut
        frames[5].1[14] = 0x00; // IP version 0
        frames[7].1 = vec![]; // empty frame
        let udp = 14 + 20 + 8;
        frames[9].1[udp] = 0x00; // RTP version 0: not RTP
        frames[11].1[udp + 1] = 200; // looks like an RTCP sender report
        let cap = read_bytes(&write_pcap(DataLink::ETHERNET, &frames), None).unwrap();
        assert_eq!(cap.skipped, 3);
        assert_eq!(cap.not_rtp, 2);
        let total: usize = cap.streams.iter().map(|s| s.packets.len()).sum();
        assert_eq!(total, n - 5);
        assert_eq!(cap.streams.len(), 2);
    }

    #[test]
    fn mutated_inputs_never_panic() {
        let pcap = sample_bytes();
        let pcapng = write_pcapng(&sample_frames()[..40], Some(9));
        let mut rng = Lcg(0x5eed);
        for base in [&pcap[..pcap.len().min(24 + 40 * 1300)], &pcapng[..]] {
            for round in 0..300 {
                let mut data = base.to_vec();
                let flips = 1 + rng.below(16);
                for _ in 0..flips {
                    // Bias towards headers, where the interesting lengths are.
                    let limit = if round % 2 == 0 {
                        data.len().min(200)
                    } else {
                        data.len()
                    };
                    let at = rng.below(limit);
                    data[at] = rng.byte();
                }
                if round % 5 == 0 {
                    let cut = rng.below(data.len());
                    data.truncate(cut);
                }
                let _ = read_bytes(&data, None);
                let _ = read_bytes(&data, Some(VIDEO_PORT));
            }
        }
    }

    /// Small deterministic generator, so the tests need no `rand`.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                self.next() as usize % n
            }
        }
    }
}
