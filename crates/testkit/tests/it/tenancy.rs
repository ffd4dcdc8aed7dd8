//! Another tenant's objects are 404, on every route of the fixture.

use kernel::TenantId;
use serde_json::Value;
use testkit::TestApp;

use crate::{create_note, settles_at};

#[tokio::test]
async fn tenant_b_gets_404_for_every_object_of_tenant_a() {
    let app = TestApp::spawn().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let note = create_note(&app, a, "private to A").await;
    let id = note["id"].as_str().unwrap_or_default().to_string();
    let get = |tenant: TenantId, path: String| {
        app.client.get(app.url(&path)).header("x-tenant-id", tenant.to_string()).send()
    };
    let res = get(a, format!("/v1/fixture/notes/{id}")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 200, "the owner sees it");
    let res = get(b, format!("/v1/fixture/notes/{id}")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 404, "another tenant does not");
    let list: Value = get(b, "/v1/fixture/notes".into())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(list["items"], serde_json::json!([]), "nor in lists");
    let res = app
        .client
        .post(app.url(&format!("/v1/fixture/notes/{id}/views")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 401, "no tenant, no access");
    // A's event counted for A only.
    settles_at(&app, a, (1, 0)).await;
    settles_at(&app, b, (0, 0)).await;
    app.stop().await;
}
