//! `dev` stops with an error when one of its roles cannot run, instead of
//! hanging half-started.

use std::time::Duration;

use streambus::dev::{self, DevListeners};
use streambus::settings::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_fails_fast_when_the_storage_data_dir_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the storage node's directory must go.
    std::fs::write(dir.path().join("storage"), b"not a directory").unwrap();
    let listeners = DevListeners::ephemeral().await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        dev::run(
            Settings::default(),
            listeners,
            Some(dir.path()),
            std::future::pending(),
            |_| panic!("must not become ready"),
        ),
    )
    .await
    .expect("dev returns instead of hanging");
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("storage node"), "{err}");
}
