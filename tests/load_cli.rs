//! `meridian load` end to end: a short real run against `meridian serve`
//! (WebSocket and WHIP/WHEP), and one clear line for each bad input.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::Server;

fn sample_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sample-vp8-opus.pcap")
        .to_string_lossy()
        .into_owned()
}

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("load")
        .args(args)
        .arg("--quiet")
        .env_remove("MERIDIAN_API_SECRET")
        .output()
        .expect("meridian runs")
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("{}-{name}", std::process::id()))
}

async fn run_and_check(protocol: &'static str) {
    let server = Server::start(&[]).await;
    let json = tmp(&format!("{protocol}.json"));
    let html = tmp(&format!("{protocol}.html"));
    let pid = server.pid().to_string();
    let (url, pcap, json_s, html_s) = (
        server.base(),
        sample_path(),
        json.to_string_lossy().into_owned(),
        html.to_string_lossy().into_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        load(&[
            "--pcap",
            &pcap,
            "--url",
            &url,
            "--rooms",
            "2",
            "--publishers",
            "1",
            "--subscribers",
            "3",
            "--duration",
            "5s",
            "--protocol",
            protocol,
            "--server-pid",
            &pid,
            "--json",
            &json_s,
            "--html",
            &html_s,
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("latency") && stdout.contains("join"),
        "summary table printed"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["subscribers_connected"], 6);
    assert!(r["packets_sent"].as_u64().unwrap() > 400);
    // 3 subscribers per room, one publisher: each sent packet should arrive
    // 3 times, except video before the capture's next keyframe (a replay
    // cannot answer the keyframe request a joining subscriber causes).
    let ratio =
        r["packets_received"].as_f64().unwrap() / (3.0 * r["packets_sent"].as_f64().unwrap());
    assert!(ratio > 0.75, "received/expected {ratio}");
    let loss = &r["loss"];
    assert!(loss["max"].as_f64().unwrap() < 0.01, "{loss}");
    let lat = &r["latency_ms"];
    assert!(
        lat["p50"].as_f64().unwrap() > 0.01 && lat["p50"].as_f64().unwrap() < 50.0,
        "{lat}"
    );
    assert!(r["join_ms"]["p99"].as_f64().unwrap() < 5000.0);
    // The join's phases come in order: signaling, then ICE + DTLS. (Not
    // compared with the first packet: a packet's time is the kernel's
    // receive stamp, the connection's when the busy tester handled it.)
    let phase = |k: &str| {
        r[k]["p50"]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {}", r[k]))
    };
    assert!(phase("signaled_ms") > 0.0);
    assert!(phase("signaled_ms") <= phase("connected_ms"), "{r}");
    assert!(r["server"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["server"]["forwarded_packets"].as_u64().unwrap() > 0);
    assert!(r["tester_cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["timeline"].as_array().unwrap().len() >= 4);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("latency"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_websocket_reports_delivery_latency_and_cost() {
    run_and_check("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_whip_and_whep() {
    run_and_check("whip").await;
}

fn one_clear_line(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {err}");
    assert!(
        lines[0].starts_with("meridian load: ") && lines[0].contains(needle),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_one_clear_line() {
    let out = load(&["--pcap", "/nonexistent/capture.pcap"]);
    one_clear_line(&out, "/nonexistent/capture.pcap");

    let not_pcap = tmp("not.pcap");
    std::fs::write(&not_pcap, b"this is not a capture file at all").unwrap();
    let out = load(&["--pcap", not_pcap.to_str().unwrap()]);
    one_clear_line(&out, "not a pcap");

    // A real capture filtered to a port with no RTP on it.
    let out = load(&["--pcap", &sample_path(), "--udp-port", "9"]);
    one_clear_line(&out, "--udp-port");

    let closed = common::free_tcp();
    let out = load(&[
        "--pcap",
        &sample_path(),
        "--url",
        &format!("http://{closed}"),
    ]);
    one_clear_line(&out, "cannot reach");

    let server = Server::start(&[("MERIDIAN_API_SECRET", "the-secret")]).await;
    let url = server.base();
    let out = tokio::task::spawn_blocking(move || {
        load(&[
            "--pcap",
            &sample_path(),
            "--url",
            &url,
            "--token",
            "forged.token.value",
            "--duration",
            "2s",
        ])
    })
    .await
    .unwrap();
    one_clear_line(&out, "refused");
}
