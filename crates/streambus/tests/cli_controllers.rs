//! `streambus cluster add-controller` and `remove-controller` as an operator
//! runs them: a dev instance (controller 1), and a second controller started
//! as its own process with an empty data directory and `controller.join`.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

fn streambus(gateway: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .env("STREAMBUS_GATEWAY", gateway)
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_and_removes_a_controller() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(&dir.path().join("dev")).await;
    let gw = dev.gateway();
    let address = format!("127.0.0.1:{}", free_port());
    let data_dir = dir.path().join("controller-2");
    let log = std::fs::File::create(dir.path().join("controller-2.log")).unwrap();
    let _second = Killed(
        Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args(["controller", "--set", "controller.node_id=2"])
            .args(["--set", "controller.join=true"])
            .args(["--set", &format!("controller.listen_addr={address}")])
            .args([
                "--set",
                &format!("controller.data_dir={}", data_dir.display()),
            ])
            .args([
                "--set",
                &format!("http.listen_addr=127.0.0.1:{}", free_port()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_path = dir.path().join("controller-2.log");
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "controller 2 not listening; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let gw = gw.as_str();

        let out = streambus(gw, &["cluster", "add-controller", "2", &address]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let added = text(&out.stdout);
        assert!(
            added.starts_with("controller 2 added as a voter"),
            "{added}"
        );
        assert!(added.contains("CONTROLLER  ADDRESS"), "{added}");
        assert!(
            added.contains(&format!("2           {address}  voter")),
            "{added}"
        );

        // Both are voters; the new one follows.
        let out = streambus(gw, &["cluster", "status", "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let controllers = status["controllers"].as_array().unwrap();
        assert_eq!(controllers.len(), 2, "{status}");
        for c in controllers {
            assert_eq!(c["voter"], true, "{status}");
            assert_eq!(c["reachable"], true, "{status}");
        }
        let out = streambus(gw, &["cluster", "status"]);
        let status = text(&out.stdout);
        assert!(status.contains("ROLE"), "{status}");
        assert!(
            status.contains(&format!("2           {address}  voter  follower")),
            "{status}"
        );

        // Writes go on with two voters.
        let out = streambus(gw, &["topic", "create", "after-add"]);
        assert!(out.status.success(), "{}", text(&out.stderr));

        // Refusals: the exit code is 1 and the reason comes first.
        for (args, want) in [
            (vec!["remove-controller", "9"], "not a member"),
            (vec!["add-controller", "3", "nonsense"], "HOST:PORT"),
            (
                vec!["add-controller", "1", "127.0.0.1:1"],
                "already a member",
            ),
        ] {
            let mut all = vec!["cluster"];
            all.extend(args);
            let out = streambus(gw, &all);
            assert_eq!(out.status.code(), Some(1), "{all:?}");
            let err = text(&out.stderr);
            assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
            assert!(err.contains(want), "{want:?} not in {err}");
        }

        let out = streambus(gw, &["cluster", "remove-controller", "2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let removed = text(&out.stdout);
        assert!(removed.starts_with("controller 2 removed"), "{removed}");
        assert!(!removed.contains(&address), "{removed}");

        let out = streambus(gw, &["cluster", "remove-controller", "1"]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains("last voter"),
            "{err}"
        );

        let out = streambus(gw, &["cluster", "status", "--format", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            status["controllers"].as_array().unwrap().len(),
            1,
            "{status}"
        );
        let out = streambus(gw, &["topic", "create", "after-remove"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    })
    .await
    .unwrap();
    dev.stop().await;
}
