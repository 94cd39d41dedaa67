//! The load test's report: the summary table, the JSON form and the HTML
//! page with plots over time (inline SVG, no scripts).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::stats::{histogram, SubscriberStats, Timeline};
use super::{LoadOptions, LoadProtocol, ServerSample};

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MinMedMax {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCost {
    pub cpu_seconds: Option<f64>,
    pub forwarded_packets: Option<u64>,
    pub forwarded_per_second: Option<f64>,
    pub cpu_us_per_forwarded_packet: Option<f64>,
    pub forwarded_per_cpu_second: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// RSS growth from the idle server to full load, per subscriber
    /// (publishers already connected).
    pub memory_per_subscriber_bytes: Option<f64>,
    /// RSS growth from the idle server to full load, per peer of any kind.
    pub memory_per_peer_bytes: Option<f64>,
    /// UDP datagrams per send system call over the run (above 1 with GSO).
    pub datagrams_per_send: Option<f64>,
}

impl ServerCost {
    /// `before` the run, `publishing` once publishers are up, `loaded` at the
    /// end of the measured duration (all subscribers in), `after` sending.
    pub fn from_samples(
        before: &ServerSample,
        publishing: &ServerSample,
        loaded: &ServerSample,
        after: &ServerSample,
        subscribers: usize,
        peers: usize,
    ) -> ServerCost {
        let cpu = after
            .cpu_seconds
            .zip(before.cpu_seconds)
            .map(|(a, b)| a - b);
        let fwd = after
            .forwarded
            .zip(before.forwarded)
            .map(|(a, b)| a.saturating_sub(b));
        let delta = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a.saturating_sub(b));
        let datagrams = delta(after.udp_datagrams_sent, before.udp_datagrams_sent);
        let sends = delta(after.udp_send_calls, before.udp_send_calls);
        let secs = after
            .at
            .zip(before.at)
            .map(|(a, b)| a.duration_since(b).as_secs_f64());
        ServerCost {
            cpu_seconds: cpu,
            forwarded_packets: fwd,
            forwarded_per_second: fwd.zip(secs).map(|(f, s)| f as f64 / s),
            cpu_us_per_forwarded_packet: cpu
                .zip(fwd)
                .filter(|(_, f)| *f > 0)
                .map(|(c, f)| c * 1e6 / f as f64),
            forwarded_per_cpu_second: cpu
                .zip(fwd)
                .filter(|(c, _)| *c > 0.0)
                .map(|(c, f)| f as f64 / c),
            rss_bytes: loaded.rss_bytes,
            memory_per_subscriber_bytes: loaded
                .rss_bytes
                .zip(publishing.rss_bytes)
                .filter(|_| subscribers > 0)
                .map(|(l, p)| (l as f64 - p as f64) / subscribers as f64),
            memory_per_peer_bytes: loaded
                .rss_bytes
                .zip(before.rss_bytes)
                .filter(|_| peers > 0)
                .map(|(l, b)| (l as f64 - b as f64) / peers as f64),
            datagrams_per_send: datagrams
                .zip(sends)
                .filter(|(_, s)| *s > 0)
                .map(|(d, s)| d as f64 / s as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub second: usize,
    pub sent_pps: u64,
    pub received_pps: u64,
    pub received_mbps: f64,
    /// Received against sent × the fan-out, in percent (0 when ahead).
    pub loss_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub protocol: String,
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub subscribers_per_room: usize,
    pub duration_s: f64,
    pub speed: f64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub subscribers_connected: usize,
    pub subscriber_failures: Vec<String>,
    /// Fraction of packets lost per subscriber.
    pub loss: Option<MinMedMax>,
    pub jitter_ms: Option<MinMedMax>,
    /// From the publisher's send (the replay handing the packet to its
    /// client) to the packet's arrival at the subscriber's socket (the
    /// kernel's receive stamp), so the tester's own queueing of hundreds of
    /// clients on one thread is not counted.
    pub latency_ms: Option<Percentiles>,
    /// Request to first media packet (any kind). Where the packet's
    /// publisher started sending only after the request (a meeting, whose
    /// participants join together), from that start instead: the time the
    /// server took, not the time the others took to arrive.
    pub join_ms: Option<Percentiles>,
    /// Request (or, as above, the publisher's start) to first video packet.
    pub first_video_ms: Option<Percentiles>,
    /// Subscribers' join phases, from the request: signaling done (the
    /// server's answer applied), then ICE + DTLS connected. The rest of
    /// `join_ms` is waiting for the first packet to be forwarded.
    pub signaled_ms: Option<Percentiles>,
    pub connected_ms: Option<Percentiles>,
    pub server: ServerCost,
    pub tester_cpu_seconds: f64,
    pub timeline: Vec<Sample>,
}

fn min_med_max(mut v: Vec<f64>) -> Option<MinMedMax> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(MinMedMax {
        min: v[0],
        median: v[v.len() / 2],
        max: v[v.len() - 1],
    })
}

fn percentiles_ms(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: v[v.len() - 1],
    })
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        opts: &LoadOptions,
        timeline: &Timeline,
        subs: Vec<SubscriberStats>,
        failures: Vec<String>,
        server: ServerCost,
        tester_cpu_seconds: f64,
        elapsed: Duration,
    ) -> Report {
        let lat = timeline
            .latency
            .lock()
            .map(|h| (h.overall.clone(), h.per_second.clone()));
        let (latency, lat_seconds) = lat.unwrap_or_else(|_| (histogram(), Vec::new()));
        let seconds = subs.iter().map(|s| s.seconds.len()).max().unwrap_or(0);
        let mut per_second: Vec<(u64, u64, hdrhistogram::Histogram<u64>)> = (0..seconds)
            .map(|i| (0, 0, lat_seconds.get(i).cloned().unwrap_or_else(histogram)))
            .collect();
        for s in &subs {
            for (i, b) in s.seconds.iter().enumerate() {
                per_second[i].0 += b.received;
                per_second[i].1 += b.bytes;
            }
        }
        let sent_per_second = timeline
            .sent_per_second
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        // Each sent packet should reach every subscriber of its room (WHEP
        // subscribers play one publisher of the room).
        let fanout = match opts.protocol {
            LoadProtocol::Ws if opts.publishers_subscribe => {
                (opts.subscribers + opts.publishers.saturating_sub(1)) as f64
            }
            LoadProtocol::Ws => opts.subscribers as f64,
            LoadProtocol::Whip => opts.subscribers as f64 / opts.publishers.max(1) as f64,
        };
        let timeline_samples = per_second
            .iter()
            .enumerate()
            .map(|(i, (n, bytes, h))| {
                let sent = sent_per_second.get(i).copied().unwrap_or(0);
                let expected = sent as f64 * fanout;
                Sample {
                    second: i,
                    sent_pps: sent,
                    received_pps: *n,
                    loss_pct: if expected > 0.0 {
                        ((1.0 - *n as f64 / expected) * 100.0).max(0.0)
                    } else {
                        0.0
                    },
                    received_mbps: *bytes as f64 * 8.0 / 1e6,
                    latency_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                    latency_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                }
            })
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let join: Vec<f64> = subs.iter().filter_map(|s| s.join.map(ms)).collect();
        let first_video: Vec<f64> = subs.iter().filter_map(|s| s.join_video.map(ms)).collect();
        let signaled: Vec<f64> = subs.iter().filter_map(|s| s.signaled.map(ms)).collect();
        let connected: Vec<f64> = subs.iter().filter_map(|s| s.connected.map(ms)).collect();
        Report {
            url: opts.url.clone(),
            protocol: match opts.protocol {
                LoadProtocol::Ws => "ws".into(),
                LoadProtocol::Whip => "whip".into(),
            },
            rooms: opts.rooms,
            publishers_per_room: opts.publishers,
            subscribers_per_room: opts.subscribers,
            duration_s: elapsed.as_secs_f64(),
            speed: opts.speed,
            packets_sent: timeline.sent.load(Ordering::Relaxed),
            bytes_sent: timeline.sent_bytes.load(Ordering::Relaxed),
            packets_received: subs.iter().map(SubscriberStats::packets).sum(),
            bytes_received: subs.iter().map(|s| s.bytes).sum(),
            subscribers_connected: subs.len(),
            subscriber_failures: failures,
            loss: min_med_max(subs.iter().map(SubscriberStats::loss).collect()),
            jitter_ms: min_med_max(
                subs.iter()
                    .flat_map(|s| s.streams.values().map(|st| st.jitter * 1000.0))
                    .collect(),
            ),
            latency_ms: (!latency.is_empty()).then(|| Percentiles {
                p50: latency.value_at_quantile(0.50) as f64 / 1000.0,
                p95: latency.value_at_quantile(0.95) as f64 / 1000.0,
                p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
                max: latency.max() as f64 / 1000.0,
            }),
            join_ms: percentiles_ms(join),
            first_video_ms: percentiles_ms(first_video),
            signaled_ms: percentiles_ms(signaled),
            connected_ms: percentiles_ms(connected),
            server,
            tester_cpu_seconds,
            timeline: timeline_samples,
        }
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, unit: &str| {
            v.map(|v| format!("{v:.2}{unit}"))
                .unwrap_or_else(|| "n/a".into())
        };
        let _ = writeln!(
            s,
            "meridian load: {} room(s) × {} publisher(s) + {} subscriber(s), {} over {:.1} s",
            self.rooms,
            self.publishers_per_room,
            self.subscribers_per_room,
            self.protocol,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "  sent              {:>10} packets  {:>8.2} MB",
            self.packets_sent,
            self.bytes_sent as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "  received          {:>10} packets  {:>8.2} MB",
            self.packets_received,
            self.bytes_received as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "  subscribers       {:>10} connected, {} failed",
            self.subscribers_connected,
            self.subscriber_failures.len()
        );
        if let Some(l) = &self.loss {
            let _ = writeln!(
                s,
                "  loss/subscriber   min {:.3}%  median {:.3}%  max {:.3}%",
                l.min * 100.0,
                l.median * 100.0,
                l.max * 100.0
            );
        }
        if let Some(j) = &self.jitter_ms {
            let _ = writeln!(
                s,
                "  jitter            median {:.2} ms  max {:.2} ms",
                j.median, j.max
            );
        }
        if let Some(p) = &self.latency_ms {
            let _ = writeln!(
                s,
                "  latency           p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                p.p50, p.p95, p.p99, p.max
            );
        }
        if let Some(p) = &self.join_ms {
            let _ = writeln!(
                s,
                "  join→first packet p50 {:.1} ms  p99 {:.1} ms",
                p.p50, p.p99
            );
        }
        if let (Some(sig), Some(con)) = (&self.signaled_ms, &self.connected_ms) {
            let _ = writeln!(
                s,
                "    of which       signaling p50 {:.1} ms  p99 {:.1} ms; ICE+DTLS done p50 {:.1} ms  p99 {:.1} ms",
                sig.p50, sig.p99, con.p50, con.p99
            );
        }
        if let Some(p) = &self.first_video_ms {
            let _ = writeln!(
                s,
                "  join→first video  p50 {:.1} ms  p99 {:.1} ms",
                p.p50, p.p99
            );
        }
        let sv = &self.server;
        let _ = writeln!(
            s,
            "  server            cpu {}  forwarded {} ({} pkt/s)  {} µs/pkt  {} pkt/cpu-s  {} datagrams/send",
            opt(sv.cpu_seconds, " s"),
            sv.forwarded_packets
                .map(|v| v.to_string())
                .unwrap_or_else(|| "n/a".into()),
            opt(sv.forwarded_per_second, ""),
            opt(sv.cpu_us_per_forwarded_packet, ""),
            opt(sv.forwarded_per_cpu_second, ""),
            opt(sv.datagrams_per_send, ""),
        );
        let _ = writeln!(
            s,
            "  server memory     rss {}  per subscriber {}  per peer {}",
            sv.rss_bytes
                .map(|b| format!("{:.1} MB", b as f64 / 1e6))
                .unwrap_or_else(|| "n/a".into()),
            sv.memory_per_subscriber_bytes
                .map(|b| format!("{:.1} KB", b / 1024.0))
                .unwrap_or_else(|| "n/a".into()),
            sv.memory_per_peer_bytes
                .map(|b| format!("{:.1} KB", b / 1024.0))
                .unwrap_or_else(|| "n/a".into()),
        );
        let _ = writeln!(s, "  tester cpu        {:.2} s", self.tester_cpu_seconds);
        s
    }
}

pub(super) fn progress_bar(duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub(super) fn update_progress(bar: &ProgressBar, t: &Timeline, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let sent = t.sent.load(Ordering::Relaxed);
    let recv = t.received.load(Ordering::Relaxed);
    let count = t.latency_count.load(Ordering::Relaxed).max(1);
    let mean_ms = t.latency_sum_us.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0;
    bar.set_position(elapsed.as_millis() as u64);
    bar.set_message(format!(
        "sent {:.0} pkt/s  received {:.0} pkt/s  {:.1} Mbit/s  latency mean {:.2} ms",
        sent as f64 / secs,
        recv as f64 / secs,
        t.received_bytes.load(Ordering::Relaxed) as f64 * 8.0 / secs / 1e6,
        mean_ms
    ));
}

/// One line plot as inline SVG.
fn svg_plot(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (640.0, 200.0, 40.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut out = format!(
        "<h3>{title}</h3><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{pad}\" y1=\"10\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"16\" font-size=\"10\">{max:.1} {unit}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\">{} s</text>",
        h - pad,
        w - 10.0,
        h - pad,
        h - pad,
        w - 40.0,
        h - 25.0,
        n - 1
    );
    for (i, (name, colour, ys)) in series.iter().enumerate() {
        let pts: Vec<String> = ys
            .iter()
            .enumerate()
            .map(|(x, y)| {
                let px = pad + (w - pad - 10.0) * x as f64 / (n - 1) as f64;
                let py = (h - pad) - (h - pad - 10.0) * (y / max);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{colour}\">{name}</text>",
            pts.join(" "),
            pad + 10.0 + 150.0 * i as f64,
            h - 8.0
        );
    }
    out.push_str("</svg>");
    out
}

/// The report as a standalone HTML page with plots over time.
pub fn write_html(report: &Report) -> String {
    let t = &report.timeline;
    let col = |f: fn(&super::report::Sample) -> f64| t.iter().map(f).collect::<Vec<f64>>();
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>meridian load report</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:720px}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
         </head><body><h1>meridian load</h1><pre>{}</pre>{}{}{}{}<h3>Report (JSON)</h3><pre>{}</pre></body></html>",
        html_escape(&report.table()),
        svg_plot(
            "Packet rates",
            "pkt/s",
            &[
                ("sent", "#1f77b4", col(|s| s.sent_pps as f64)),
                ("received", "#2ca02c", col(|s| s.received_pps as f64)),
            ]
        ),
        svg_plot("Received bitrate", "Mbit/s", &[("received", "#9467bd", col(|s| s.received_mbps))]),
        svg_plot("Loss (received vs. sent × fan-out)", "%", &[("loss", "#8c564b", col(|s| s.loss_pct))]),
        svg_plot(
            "End-to-end latency",
            "ms",
            &[
                ("p50", "#ff7f0e", col(|s| s.latency_p50_ms)),
                ("p99", "#d62728", col(|s| s.latency_p99_ms)),
            ]
        ),
        html_escape(&json),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
