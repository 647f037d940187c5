//! A controller whose Raft store fails writes (as with a full
//! file-descriptor table or a failing disk) reports it, is not ready while
//! it lasts, answers (or refuses) every request at once meanwhile, and
//! recovers on its own once the store takes writes again, with everything
//! it had committed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use streambus_controller::{Metrics, ServeOptions, StoreFaults};

/// Linux `EMFILE` (too many open files) and `EIO` (I/O error).
const EMFILE: i32 = 24;
const EIO: i32 = 5;

async fn topic_names(c: &Controller) -> Vec<String> {
    let md = only(c).get_metadata().await.unwrap();
    let mut names: Vec<String> = md.topics.into_iter().map(|t| t.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_reported_and_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(StoreFaults::default());
    let metrics = Arc::new(Metrics::default());
    let mut c = start_with(
        config(1, dir.path(), Vec::new()),
        listener().await,
        ServeOptions {
            metrics: Some(metrics.clone()),
            store_faults: Some(faults.clone()),
            ..ServeOptions::default()
        },
    );
    c.wait_ready().await;
    let retrying = client(&[&c]).with_retry_for(WAIT);
    retrying
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    retrying.create_topic(topic("before", 3)).await.unwrap();

    for (round, errno) in [EMFILE, EIO].into_iter().enumerate() {
        faults.fail_writes(errno);
        let refused = only(&c)
            .with_attempt_timeout(Duration::from_secs(5))
            .create_topic(topic(&format!("during-{round}"), 1))
            .await;
        assert!(
            refused.is_err(),
            "a write the store failed is not acknowledged"
        );
        tokio::time::timeout(WAIT, c.ready.wait_for(|r| !*r))
            .await
            .expect("a controller whose store fails reports not ready")
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while metrics.store_failures.get() <= round as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "store failure counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Still failing: it keeps starting over and stays not ready, and
        // every request gets an answer (an error) at once, also while it
        // waits to start over, rather than hanging until its deadline.
        let probes = tokio::time::Instant::now();
        while probes.elapsed() < Duration::from_secs(4) {
            let asked = tokio::time::Instant::now();
            let answer = only(&c)
                .with_attempt_timeout(Duration::from_secs(10))
                .describe_controller()
                .await;
            assert!(
                asked.elapsed() < Duration::from_millis(1500),
                "answered after {:?}: {answer:?}",
                asked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(!*c.ready.borrow(), "not ready while the store fails");

        faults.heal();
        c.wait_ready().await;
        let name = format!("after-{round}");
        retrying.create_topic(topic(&name, 2)).await.unwrap();
        let names = topic_names(&c).await;
        assert!(names.contains(&"before".to_string()), "{names:?}");
        assert!(names.contains(&name), "{names:?}");
    }
    let before = topic_names(&c).await;
    c.shutdown().await;

    // What it committed around the failures survives a clean restart.
    let c = single(dir.path(), 10_000).await;
    assert_eq!(topic_names(&c).await, before);
    c.shutdown().await;
}
