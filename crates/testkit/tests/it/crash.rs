//! Killing the process with SIGKILL loses nothing that was committed: an event
//! written with its state change is applied exactly once after a restart, and
//! an append that returned is stored.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use kernel::TenantId;
use testkit::{Engines, TestApp, fixture, test_env};

use crate::settles_at;

fn child(env: &std::collections::BTreeMap<String, String>, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_testkit-child"))
        .args(args)
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn child: {e}"))
}

/// Reads `n` lines from the child, then kills it with SIGKILL.
fn read_then_kill(mut c: Child, n: usize) -> Vec<String> {
    let out = c.stdout.take().unwrap_or_else(|| panic!("child stdout"));
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        match line {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
        if lines.len() >= n {
            break;
        }
    }
    c.kill().unwrap_or_else(|e| panic!("kill -9: {e}"));
    let status = c.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(!status.success(), "the child died by the signal");
    assert_eq!(lines.len(), n, "the child reported before dying: {lines:?}");
    lines
}

/// Runs the child on the test's environment, reads `n` lines, kills it.
async fn crash_child(
    env: &std::collections::BTreeMap<String, String>,
    args: [String; 2],
    n: usize,
) -> Vec<String> {
    let env = env.clone();
    tokio::task::spawn_blocking(move || read_then_kill(child(&env, &[&args[0], &args[1]]), n))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_applied_once_after_restart() {
    let engines = Engines::from_env();
    let (env, isolation) = test_env(&engines, &[]).await;
    let tenant = TenantId::new();
    let lines = crash_child(&env, ["write-note".into(), tenant.to_string()], 1).await;
    assert!(lines[0].starts_with("written "), "{lines:?}");
    // The process died before any relay ran; the platform's relay delivers it now.
    let app = TestApp::spawn_env(vec![Arc::new(fixture::Fixture)], engines, env, isolation).await;
    settles_at(&app, tenant, (1, 0)).await;
    let res = app
        .client
        .get(app.url(&format!("/v1/fixture/notes/{}", lines[0].trim_start_matches("written "))))
        .header("x-tenant-id", tenant.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 200, "the state change survived too");
    // Another restart delivers nothing twice.
    let app = app.restart().await;
    settles_at(&app, tenant, (1, 0)).await;
    app.stop().await;
}

#[tokio::test]
async fn an_append_that_returned_survives_kill_9() {
    let engines = Engines::from_env();
    let (env, isolation) = test_env(&engines, &[]).await;
    let tenant = TenantId::new();
    let lines = crash_child(&env, ["append-views".into(), tenant.to_string()], 300).await;
    let acknowledged: std::collections::HashSet<String> =
        lines.iter().map(|l| l.trim_start_matches("appended ").to_string()).collect();
    assert_eq!(acknowledged.len(), 300);
    let app = TestApp::spawn_env(vec![Arc::new(fixture::Fixture)], engines, env, isolation).await;
    // Appends kept running while the child was killed, so more than 300 may be stored;
    // every acknowledged one must be.
    let views = crate::eventually("views counted", || async {
        let (_, v) = crate::stats(&app, tenant).await;
        let (outbox, _) = app.db("fixture").kernel_counts().await.ok()?;
        (outbox == 0 && v >= 300).then_some(v)
    })
    .await;
    assert!(views >= 300, "every acknowledged append was stored: {views}");
    app.stop().await;
}
