//! Replays the request bytes recorded from each real SDK
//! (`protocol-fixtures/*.json`, see its README) into weir and checks that
//! every answer is byte for byte the recorded expectation.

mod common;

use common::{hex, read_exactly, unhex};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fixture {
    sdk: String,
    auth_token: String,
    ingest_time_millis: i64,
    server_version: String,
    exchanges: Vec<Exchange>,
}

#[derive(Deserialize)]
struct Exchange {
    name: String,
    request: String,
    response: String,
}

async fn replay(path: &std::path::Path) -> usize {
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let server = common::start(
        Some(&fixture.auth_token),
        fixture.ingest_time_millis,
        &fixture.server_version,
    )
    .await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    for exchange in &fixture.exchanges {
        socket.write_all(&unhex(&exchange.request)).await.unwrap();
        let expected = unhex(&exchange.response);
        let got = read_exactly(&mut socket, expected.len()).await;
        assert_eq!(
            hex(&got),
            exchange.response,
            "{}: answer to {} differs",
            fixture.sdk,
            exchange.name
        );
    }
    drop(socket);
    server.shutdown.cancel();
    server.task.await.unwrap();
    fixture.exchanges.len()
}

#[tokio::test]
async fn every_recorded_sdk_session_gets_the_expected_bytes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol-fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let labels: Vec<_> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        labels,
        [
            "node-aws-greengrass-core-sdk-1.7.0",
            "py-greengrasssdk-1.5.0",
            "py-greengrasssdk-1.6.1",
            "py-stream-manager-1.1.2"
        ]
    );
    for file in &files {
        assert!(replay(file).await >= 28, "{} is too short", file.display());
    }
}
