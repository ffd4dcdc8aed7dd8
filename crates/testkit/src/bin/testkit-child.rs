//! A process the crash tests kill with SIGKILL. It reads the same configuration
//! as the platform (environment), writes through the kernel, prints what has
//! returned, and never exits by itself.
//!
//! `testkit-child write-note TENANT`   — one note + its outbox event, then wait.
//! `testkit-child append-views TENANT` — journal appends from 8 tasks, forever,
//! in a platform running the fixture service (which drains them).

use std::io::Write;

use kernel::TenantId;
use kernel::config::{Config, Overrides};
use std::sync::Arc;

use kernel::events::Envelope;
use kernel::platform::{DbBackend, Platform};
use testkit::fixture;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(command), Some(tenant)) = (args.get(1), args.get(2).and_then(|t| TenantId::parse(t).ok()))
    else {
        eprintln!("usage: testkit-child write-note|append-views TENANT");
        std::process::exit(2);
    };
    let (config, _) = Config::load(None, &Overrides::default()).unwrap_or_else(|e| fail(e));
    let backend = DbBackend::connect(&config).await.unwrap_or_else(|e| fail(e));
    backend.migrate(&[fixture::MIGRATIONS]).await.unwrap_or_else(|e| fail(e));
    let db = backend.db("fixture").await.unwrap_or_else(|e| fail(e));
    match command.as_str() {
        "write-note" => {
            let note = fixture::store(&db)
                .create(tenant, "written before the crash")
                .await
                .unwrap_or_else(|e| fail(e));
            say(&format!("written {}", note.id));
        }
        "append-views" => {
            drop(db);
            let platform =
                Platform::start(config, vec![Arc::new(fixture::Fixture)]).await.unwrap_or_else(|e| fail(e));
            let journal = platform.kernel().journal("fixture").unwrap_or_else(|e| fail(e));
            for _ in 0..8 {
                let journal = journal.clone();
                tokio::spawn(async move {
                    loop {
                        let e = Envelope::new("note.viewed", tenant, "anonymous", serde_json::json!({}));
                        match journal.append(&e) {
                            Ok(()) => say(&format!("appended {}", e.event_id)),
                            Err(err) => fail(err),
                        }
                        tokio::task::yield_now().await;
                    }
                });
            }
            // Keep the platform (its drainers and consumers) alive until the kill.
            std::future::pending::<()>().await;
            drop(platform);
        }
        other => fail(format!("unknown command {other}")),
    }
    std::future::pending::<()>().await;
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("testkit-child: {e}");
    std::process::exit(1)
}
