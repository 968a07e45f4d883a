//! The Redis job doorbell against the real Redis of the stack.

use mpanel_adapters::queue::JobQueue;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL must be set; run the suite with scripts/test.sh")
}

fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &redis_url()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn dispatched_jobs_are_delivered_once_acknowledged_and_an_empty_wait_is_not_an_error() {
    let prefix = format!("mpanel-qtest-{}", Uuid::new_v4().simple());
    let queue = JobQueue::connect(&redis_url(), &prefix)
        .await
        .expect("connect");
    assert!(queue
        .receive("w1", 10, 50)
        .await
        .expect("empty wait")
        .is_empty());
    let jobs: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for j in &jobs {
        queue.dispatch(*j).await.expect("dispatch");
    }
    let first = queue.receive("w1", 2, 100).await.expect("receive");
    let second = queue.receive("w2", 10, 100).await.expect("receive");
    let got: Vec<Uuid> = first
        .iter()
        .chain(second.iter())
        .map(|d| d.job_id)
        .collect();
    assert_eq!(got, jobs, "each entry to exactly one consumer, in order");
    for d in first.iter().chain(second.iter()) {
        queue.ack(&d.entry_id).await.expect("ack");
    }
    assert_eq!(
        redis_cli(&["XPENDING", &format!("{prefix}:jobs"), "mpanel-workers"])
            .lines()
            .next(),
        Some("0")
    );
    assert!(queue
        .receive("w1", 10, 50)
        .await
        .expect("drained")
        .is_empty());
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
}

#[tokio::test]
async fn a_flushed_stream_is_recreated_and_keeps_working() {
    let prefix = format!("mpanel-qtest-{}", Uuid::new_v4().simple());
    let queue = JobQueue::connect(&redis_url(), &prefix)
        .await
        .expect("connect");
    queue.dispatch(Uuid::new_v4()).await.expect("dispatch");
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
    // The group went with the stream: the next read recreates it and sees nothing.
    assert!(queue
        .receive("w1", 10, 50)
        .await
        .expect("after flush")
        .is_empty());
    let job = Uuid::new_v4();
    queue.dispatch(job).await.expect("dispatch");
    let got = queue.receive("w1", 10, 200).await.expect("receive");
    assert_eq!(got.iter().map(|d| d.job_id).collect::<Vec<_>>(), vec![job]);
    queue.ping().await.expect("ping");
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
}

#[tokio::test]
async fn a_dispatch_reaches_a_worker_already_blocked_in_its_read() {
    // One client shared by a blocking XREADGROUP and the XADD would queue the XADD behind the
    // read: the reader would time out empty-handed and only a later read would see the job.
    let prefix = format!("mpanel-qtest-{}", Uuid::new_v4().simple());
    let queue = JobQueue::connect(&redis_url(), &prefix)
        .await
        .expect("connect");
    let reader = queue.clone();
    let blocked = tokio::spawn(async move { reader.receive("w1", 10, 5000).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let job = Uuid::new_v4();
    queue.dispatch(job).await.expect("dispatch");
    let got = blocked.await.expect("task").expect("receive");
    assert_eq!(
        got.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        vec![job],
        "the blocked read got the job"
    );
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
}

#[tokio::test]
async fn undelivered_counts_the_bells_the_workers_have_not_heard() {
    let prefix = format!("mpanel-qtest-{}", Uuid::new_v4().simple());
    let queue = JobQueue::connect(&redis_url(), &prefix)
        .await
        .expect("connect");
    // Nothing rung yet: nothing to hear.
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
    assert_eq!(queue.undelivered().await.expect("no stream"), Some(0));
    queue.ensure_group().await.expect("group");
    for _ in 0..5 {
        queue.dispatch(Uuid::new_v4()).await.expect("dispatch");
    }
    assert_eq!(queue.undelivered().await.expect("lag"), Some(5));
    let got = queue.receive("w1", 3, 100).await.expect("receive");
    assert_eq!(got.len(), 3);
    // Read is heard, whether acknowledged yet or not.
    assert_eq!(queue.undelivered().await.expect("lag"), Some(2));
    queue.receive("w1", 10, 100).await.expect("receive");
    assert_eq!(queue.undelivered().await.expect("lag"), Some(0));
    redis_cli(&["DEL", &format!("{prefix}:jobs")]);
}
