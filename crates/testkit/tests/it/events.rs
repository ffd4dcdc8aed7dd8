//! Outbox → relay → bus → idempotent consumer, on the in-process bus or NATS.

use kernel::TenantId;
use kernel::events::Envelope;
use testkit::TestApp;

use crate::{create_note, eventually, settles_at, stats};

async fn metrics_text(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap_or_else(|e| panic!("{e}"));
    res.text().await.unwrap_or_default()
}

/// Posts `n` views of note `id` concurrently; returns how many were accepted.
async fn post_views(app: &TestApp, tenant: TenantId, id: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let req = app.client.post(app.url(&format!("/v1/fixture/notes/{id}/views")));
        let req = req.header("x-tenant-id", tenant.to_string());
        tasks.push(tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) }));
    }
    let mut accepted = 0;
    for t in tasks {
        if t.await.ok().and_then(Result::ok) == Some(202) {
            accepted += 1;
        }
    }
    accepted
}

#[tokio::test]
async fn a_committed_change_reaches_the_consumer_exactly_once() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    for i in 0..3 {
        create_note(&app, tenant, &format!("n{i}")).await;
    }
    settles_at(&app, tenant, (3, 0)).await;
    let (outbox, _) = app.db("fixture").kernel_counts().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outbox, 0, "delivered events leave the outbox");
    app.stop().await;
}

#[tokio::test]
async fn an_event_delivered_twice_has_one_effect() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let event = Envelope::new("note.created", tenant, "system", serde_json::json!({ "body": "dup" }));
    // What a crash between publishing and clearing the outbox leaves behind, twice over.
    let db = app.db("fixture");
    db.outbox_reinsert(&event).await.unwrap_or_else(|e| panic!("{e}"));
    let drained = || {
        eventually("outbox drained", || async {
            (db.kernel_counts().await.map(|c| c.0).unwrap_or(-1) == 0).then_some(())
        })
    };
    eventually("first delivery", || async { (stats(&app, tenant).await.0 == 1).then_some(()) }).await;
    // The relay clears the row after the consumer has applied the event: wait for
    // that, else the event is still there to collide with its copy.
    drained().await;
    db.outbox_reinsert(&event).await.unwrap_or_else(|e| panic!("{e}"));
    app.kernel.bus.publish(std::slice::from_ref(&event)).await.unwrap_or_else(|e| panic!("{e}"));
    drained().await;
    settles_at(&app, tenant, (1, 0)).await;
    // One batch carrying an old event and a new one twice: the new one counts once.
    let new = Envelope::new("note.created", tenant, "system", serde_json::json!({ "body": "new" }));
    let batch = [event.clone(), new.clone(), new];
    app.kernel.bus.publish(&batch).await.unwrap_or_else(|e| panic!("{e}"));
    settles_at(&app, tenant, (2, 0)).await;
    app.stop().await;
}

#[tokio::test]
async fn the_inbox_forgets_events_past_its_retention_and_still_recognises_recent_ones() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let db = app.db("fixture");
    // An event made 30 days ago (its UUIDv7 id says when) and one made now.
    let mut old = Envelope::new("note.created", tenant, "system", serde_json::json!({ "body": "old" }));
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 24 * 3600);
    let since_epoch = month_ago.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since_epoch.as_secs(), since_epoch.subsec_nanos());
    old.event_id = uuid::Uuid::new_v7(ts);
    let recent = Envelope::new("note.created", tenant, "system", serde_json::json!({ "body": "new" }));
    let both = [old, recent.clone()];
    app.kernel.bus.publish(&both).await.unwrap_or_else(|e| panic!("{e}"));
    settles_at(&app, tenant, (2, 0)).await;
    let rows = || async { db.inbox_count("fixture.stats").await.unwrap_or_else(|e| panic!("{e}")) };
    assert_eq!(rows().await, 2, "both events are remembered once handled");

    let removed = kernel::events::prune_inbox(&db, "fixture.stats", kernel::events::INBOX_RETENTION)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(removed, 1, "only the event older than the retention is forgotten");
    assert_eq!(rows().await, 1);
    // Pruning again finds nothing more.
    let again = kernel::events::prune_inbox(&db, "fixture.stats", kernel::events::INBOX_RETENTION).await;
    assert_eq!(again.ok(), Some(0));
    // The recent event, delivered again, still has no second effect.
    app.kernel.bus.publish(std::slice::from_ref(&recent)).await.unwrap_or_else(|e| panic!("{e}"));
    let marker = Envelope::new("note.created", tenant, "system", serde_json::json!({ "body": "marker" }));
    app.kernel.bus.publish(std::slice::from_ref(&marker)).await.unwrap_or_else(|e| panic!("{e}"));
    settles_at(&app, tenant, (3, 0)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_the_pipeline_goes_on() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    create_note(&app, tenant, "poison").await;
    create_note(&app, tenant, "fine").await;
    settles_at(&app, tenant, (1, 0)).await;
    let (_, dead) = app.db("fixture").kernel_counts().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead, 1, "the poison event is kept for inspection");
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains("events_dead_lettered_total{consumer=\"fixture.stats\"}"), "and counted");
    app.stop().await;
}

#[tokio::test]
async fn batched_appends_are_each_delivered_once() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let note = create_note(&app, tenant, "viewed").await;
    let id = note["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(post_views(&app, tenant, &id, 60).await, 60);
    settles_at(&app, tenant, (1, 60)).await;
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains("event_journal_batch_size_bucket"), "batch sizes are measured");
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_flushes_appends_and_the_outbox() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let accepted = post_views(&app, tenant, &uuid::Uuid::now_v7().to_string(), 40).await;
    assert_eq!(accepted, 40);
    // Restart right away: whatever was accepted is counted after the restart.
    let app = app.restart().await;
    settles_at(&app, tenant, (0, 40)).await;
    app.stop().await;
}

/// `fixture.mirror`'s count of created notes (the prompt lane's consumer).
async fn mirrored(app: &TestApp, tenant: TenantId) -> i64 {
    crate::get_json(app, "/v1/fixture/stats", tenant).await["mirrored"].as_i64().unwrap_or(-1)
}

/// Transactions of the test's PostgreSQL database open for more than half a
/// second and idle now (0 on SQLite).
async fn long_open_transactions(app: &TestApp) -> i64 {
    let (Some(url), Some(db)) = (&app.engines.database_url, &app.isolation.database) else { return 0 };
    use sqlx::Connection as _;
    let mut c =
        sqlx::PgConnection::connect(&testkit::with_database(url, db)).await.unwrap_or_else(|e| panic!("{e}"));
    let n = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and state like 'idle in transaction%' and xact_start < now() - interval '500 milliseconds'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = c.close().await;
    n
}

#[tokio::test]
async fn a_read_model_gets_new_events_while_a_click_consumer_is_still_busy() {
    let app = TestApp::spawn().await;
    let (busy, other) = (TenantId::new(), TenantId::new());
    let db = app.db("fixture");
    let outbox = || async { db.kernel_counts().await.unwrap_or_else(|e| panic!("{e}")).0 };
    // The bulk lane's consumer applies this note, then does not finish.
    let held = testkit::fixture::hold(busy);
    create_note(&app, busy, "first").await;
    eventually("both consumers applied the first note", || async {
        (stats(&app, busy).await.0 == 1 && mirrored(&app, busy).await == 1).then_some(())
    })
    .await;
    // A later change reaches the prompt lane's consumer all the same.
    create_note(&app, other, "second").await;
    eventually("the read model has the second note", || async {
        (mirrored(&app, other).await == 1).then_some(())
    })
    .await;
    assert_eq!(stats(&app, other).await.0, 0, "the busy consumer has not taken it yet");
    if app.kernel.bus.kind() == "memory" {
        // In process the outbox is the only durable copy: it keeps both rows
        // until the slow consumer has them.
        assert_eq!(outbox().await, 2, "nothing leaves the outbox before every consumer has it");
        // The relay waiting on that consumer keeps no transaction open (one
        // would hold back vacuum on PostgreSQL for as long as it waits).
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert_eq!(long_open_transactions(&app).await, 0, "no transaction waits with the relay");
    }
    held.release();
    settles_at(&app, other, (1, 0)).await;
    eventually("outbox drained", || async { (outbox().await == 0).then_some(()) }).await;
    assert_eq!((mirrored(&app, busy).await, mirrored(&app, other).await), (1, 1), "each applied once");
    assert_eq!(stats(&app, busy).await, (1, 0));
    app.stop().await;
}
