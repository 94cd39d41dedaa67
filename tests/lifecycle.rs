//! Process-level behaviour: `meridian token` prints tokens the server
//! accepts, and SIGTERM stops joins, tells clients, closes peers, exits 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use meridian_client::{Client, ClientConfig, ClientEvent};
use meridian_signaling::auth::Auth;
use meridian_signaling::protocol::ServerMsg;

fn meridian(args: &[&str], secret: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meridian"));
    c.args(args).env_remove("MERIDIAN_API_SECRET");
    if let Some(s) = secret {
        c.env("MERIDIAN_API_SECRET", s);
    }
    c.output().expect("meridian runs")
}

#[test]
fn token_command_prints_a_valid_token_and_refuses_bad_use() {
    let out = meridian(
        &[
            "token",
            "--room",
            "r1",
            "--identity",
            "ann",
            "--publish",
            "--ttl",
            "2h",
        ],
        Some("sekrit"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let grants = Auth::new("meridian", Some("sekrit".into()))
        .verify(Some(&token), "r1")
        .expect("the printed token verifies");
    assert_eq!(grants.identity.as_deref(), Some("ann"));
    assert!(grants.publish && !grants.subscribe);

    let out = meridian(
        &["token", "--room", "r1", "--identity", "ann", "--publish"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API secret"));
    let out = meridian(&["token", "--room", "r1", "--identity", "ann"], Some("s"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--publish"));
    let out = meridian(
        &[
            "token",
            "--room",
            "r",
            "--identity",
            "a",
            "--subscribe",
            "--ttl",
            "5y",
        ],
        Some("s"),
    );
    assert!(!out.status.success());
}

#[test]
fn serve_refuses_bad_configuration_clearly() {
    let dir = std::env::temp_dir().join(format!("meridian-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "http = \"not an address\"\n").unwrap();
    let out = meridian(&["serve", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("not valid"),
        "{err}"
    );
    std::fs::write(&cfg, "colour = \"blue\"\n").unwrap();
    let out = meridian(&["serve", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "unknown keys are refused");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_and_exits_zero() {
    let server = Server::start(&[]).await;
    let mut client =
        Client::connect(ClientConfig::new(server.base(), "bye", "c").publish(true, false))
            .await
            .expect("joins");
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connects");
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut told = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), client.next_event()).await
    {
        match ev {
            ClientEvent::Signal(ServerMsg::ServerShutdown { .. }) => told = true,
            ClientEvent::Closed(_) => break,
            _ => {}
        }
    }
    assert!(told, "the client was told the server is stopping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ip_goes_into_the_candidate() {
    let http = common::free_tcp();
    let udp = common::free_udp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "serve",
            "--http",
            &http.to_string(),
            "--udp",
            &udp.to_string(),
            "--public-ip",
            "192.0.2.7",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MERIDIAN_API_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let offer = common::audio_offer();
    let mut answer = None;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .post(format!("http://{http}/whip/pubip"))
            .header("content-type", "application/sdp")
            .body(offer.clone())
            .send()
            .await;
        if let Ok(r) = r {
            assert_eq!(r.status().as_u16(), 201);
            answer = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.expect("server answered");
    let want = format!("192.0.2.7 {} typ host", udp.port());
    assert!(
        answer.contains(&want),
        "candidate uses --public-ip:\n{answer}"
    );
}
