//! A process the crash tests kill with SIGKILL. It reads the same configuration
//! as the platform (environment), writes through the kernel, prints what has
//! returned, and never exits by itself.
//!
//! `testkit-child write-note TENANT`   — one note + its outbox event, then wait.
//! `testkit-child append-views TENANT` — batched appends from 8 tasks, forever.

use std::io::Write;

use kernel::TenantId;
use kernel::config::{Config, Overrides};
use kernel::events::{Appender, Envelope};
use kernel::platform::{CancellationToken, DbBackend};
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
            let (appender, _task) = Appender::start(db, 512, CancellationToken::new());
            for _ in 0..8 {
                let appender: Appender = appender.clone();
                tokio::spawn(async move {
                    loop {
                        let e = Envelope::new("note.viewed", tenant, "anonymous", serde_json::json!({}));
                        let id = e.event_id;
                        match appender.append(e).await {
                            Ok(()) => say(&format!("appended {id}")),
                            Err(err) => fail(err),
                        }
                    }
                });
            }
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
