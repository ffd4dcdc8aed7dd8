//! PostgreSQL only: row-level security is on for every tenant table and the
//! application role can neither bypass it nor own anything; a tenant setting
//! never leaks to the next transaction on a pooled connection.

use kernel::TenantId;
use kernel::platform::DbBackend;
use sqlx::Connection;
use testkit::TestApp;

use crate::create_note;

fn postgres(app: &TestApp) -> Option<kernel::db::PgBackend> {
    match &app.database {
        DbBackend::Postgres(pg) => Some(pg.clone()),
        DbBackend::Sqlite(_) => {
            eprintln!("skipped: needs SIGNPOST_TEST_DATABASE_URL (PostgreSQL)");
            None
        }
    }
}

#[tokio::test]
async fn catalog_every_tenant_table_forces_rls_and_the_app_role_is_powerless() {
    let app = TestApp::spawn().await;
    let Some(pg) = postgres(&app) else { return app.stop().await };
    let (tables, problems) = testkit::rls_catalog(&pg).await;
    assert!(tables.len() >= 4, "the fixture and kernel tenant tables are found: {tables:?}");
    assert_eq!(problems, Vec::<String>::new(), "tenant isolation holds in the catalog");
    let role = pg.app_role().to_string();
    let current: String =
        sqlx::query_scalar("select current_user::text").fetch_one(pg.app_pool()).await.unwrap_or_default();
    assert_eq!(current, role, "application queries run as the app role");
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_setting_does_not_survive_its_transaction_on_a_pooled_connection() {
    let app = TestApp::spawn().await;
    let Some(pg) = postgres(&app) else { return app.stop().await };
    let (a, b) = (TenantId::new(), TenantId::new());
    create_note(&app, a, "A's note").await;
    let mut conn = pg.app_pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
    let count = "select count(*) from fixture.notes";
    {
        let mut tx = conn.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("select set_config('app.tenant_id', $1, true)")
            .bind(a.to_string())
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1, "tenant A sees its row");
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }
    {
        // Same connection, no tenant: nothing (and no error from an empty setting).
        let mut tx = conn.begin().await.unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 0, "no tenant set means no rows");
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *conn).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 0, "outside any transaction too");
    {
        let mut tx = conn.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("select set_config('app.tenant_id', $1, true)")
            .bind(b.to_string())
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 0, "tenant B sees none of A's rows at the database");
        let wrong = sqlx::query(
            "insert into fixture.notes (tenant_id, id, body) values ($1, gen_random_uuid(), 'x')",
        )
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await;
        assert!(wrong.is_err(), "B cannot write a row for A (WITH CHECK)");
    }
    drop(conn);
    app.stop().await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_refuse_an_edited_migration() {
    let app = TestApp::spawn().await;
    let again = app.database.migrate(&[testkit::fixture::MIGRATIONS]).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(again.is_empty(), "nothing to apply twice: {again:?}");
    let edited = kernel::db::Migrations {
        schema: "fixture",
        steps: &[kernel::db::Migration { version: "0001_notes", postgres: "select 1", sqlite: "select 1" }],
    };
    let err = app.database.migrate(&[edited]).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("was edited after it was applied"), "{err}");
    if postgres(&app).is_none() {
        return app.stop().await;
    }
    let mut c = sqlx::PgConnection::connect(&testkit::with_database(
        app.engines.database_url.as_deref().unwrap_or_default(),
        app.isolation.database.as_deref().unwrap_or_default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let owner: String = sqlx::query_scalar(
        "select tableowner::text from pg_tables where schemaname = 'fixture' and tablename = 'notes'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap_or_default();
    assert_eq!(owner, "signpost_owner", "migrations ran as the owner role");
    let _ = c.close().await;
    app.stop().await;
}
