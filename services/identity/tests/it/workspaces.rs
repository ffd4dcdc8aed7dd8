//! Workspaces, members, invitations, roles and tenancy.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::TestApp;

use crate::*;

/// An owner's workspace with an admin, a member and a viewer who joined by
/// invitation; returns (workspace id, [(role, email, access token, user id)]).
async fn team(app: &TestApp, prefix: &str) -> (String, Vec<(&'static str, String, String, String)>) {
    let owner_email = format!("{prefix}-owner@example.com");
    let owner = register(app, &owner_email).await;
    let ws = owner["workspace"]["id"].as_str().unwrap().to_string();
    let owner_token = access(&owner);
    let mut people =
        vec![("owner", owner_email, owner_token.clone(), owner["user"]["id"].as_str().unwrap().to_string())];
    for role in ["admin", "member", "viewer"] {
        let email = format!("{prefix}-{role}@example.com");
        let (status, inv) = post(
            app,
            &format!("/v1/workspaces/{ws}/invitations"),
            Some(&owner_token),
            json!({ "email": email, "role": role }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{inv}");
        let token = token_in(&last_mail(app, &email, "Invitation").await, "Invitation");
        let mine = register(app, &email).await;
        let (status, joined) =
            post(app, "/v1/auth/invitations/accept", Some(&access(&mine)), json!({ "token": token })).await;
        assert_eq!(status, StatusCode::OK, "{joined}");
        assert_eq!(joined["workspace"]["id"], ws.as_str());
        assert_eq!(joined["workspace"]["role"], role);
        people.push((role, email, access(&joined), mine["user"]["id"].as_str().unwrap().to_string()));
    }
    (ws, people)
}

#[tokio::test]
async fn a_role_by_endpoint_matrix_holds() {
    let app = spawn(&[]).await;
    let (ws, people) = team(&app, "m").await;
    let member_id = people[2].3.clone();
    // (method, path, body, least role allowed)
    let routes: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("GET", format!("/v1/workspaces/{ws}/members"), None, "viewer"),
        ("GET", "/v1/workspaces".into(), None, "viewer"),
        ("GET", "/v1/auth/me".into(), None, "viewer"),
        ("GET", "/v1/auth/sessions".into(), None, "viewer"),
        ("GET", "/v1/auth/api-keys".into(), None, "viewer"),
        ("GET", format!("/v1/users/{member_id}"), None, "admin"),
        ("GET", "/v1/users".into(), None, "admin"),
        ("GET", format!("/v1/workspaces/{ws}/invitations"), None, "admin"),
        (
            "POST",
            format!("/v1/workspaces/{ws}/invitations"),
            Some(json!({"email": "x@example.com", "role": "viewer"})),
            "admin",
        ),
        ("POST", "/v1/auth/api-keys".into(), Some(json!({"name": "k", "scopes": ["links:read"]})), "member"),
        (
            "PATCH",
            format!("/v1/workspaces/{ws}/members/{member_id}"),
            Some(json!({"role": "member"})),
            "admin",
        ),
        ("PATCH", format!("/v1/users/{member_id}"), Some(json!({"locale": "en"})), "admin"),
    ];
    for (role, _, token, user_id) in &people {
        for (method, path, body, least) in &routes {
            let rank = |r: &str| ["viewer", "member", "admin", "owner"].iter().position(|x| *x == r).unwrap();
            // Everyone may read and change themselves.
            let own = path.starts_with("/v1/users/") && path.ends_with(user_id.as_str());
            let allowed = rank(role) >= rank(least) || own;
            let (status, res) = call(&app, method.parse().unwrap(), path, Some(token), body.clone()).await;
            if allowed {
                assert!(status.is_success(), "{role} {method} {path}: {status} {res}");
            } else {
                assert!(
                    status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
                    "{role} {method} {path}: {status} {res}"
                );
            }
        }
    }
    let token = |r: &str| people.iter().find(|p| p.0 == r).unwrap().2.clone();
    let id = |r: &str| people.iter().find(|p| p.0 == r).unwrap().3.clone();
    // Admins cannot demote or remove the owner, nor make anyone an owner.
    let owner = id("owner");
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{owner}"),
        Some(&token("admin")),
        json!({"role": "viewer"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        delete(&app, &format!("/v1/workspaces/{ws}/members/{owner}"), Some(&token("admin"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{}", id("viewer")),
        Some(&token("admin")),
        json!({"role": "owner"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The last owner can neither leave nor be demoted.
    let (status, body) =
        delete(&app, &format!("/v1/workspaces/{ws}/members/{owner}"), Some(&token("owner"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/last-owner");
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{owner}"),
        Some(&token("owner")),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Viewers cannot write; members cannot invite.
    let (status, _) = post(
        &app,
        "/v1/auth/api-keys",
        Some(&token("viewer")),
        json!({"name": "k", "scopes": ["links:read"]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post(
        &app,
        &format!("/v1/workspaces/{ws}/invitations"),
        Some(&token("member")),
        json!({"email": "y@example.com", "role": "viewer"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // With a second owner, the first may step down.
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{}", id("admin")),
        Some(&token("owner")),
        json!({"role": "owner"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{owner}"),
        Some(&token("owner")),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.stop().await;
}

#[tokio::test]
async fn invitations_are_single_use_bound_to_email_and_capped_at_the_inviters_role() {
    let app = spawn(&[]).await;
    let (ws, people) = team(&app, "inv").await;
    let admin = &people[1].2;
    let (status, _) = post(
        &app,
        &format!("/v1/workspaces/{ws}/invitations"),
        Some(admin),
        json!({"email": "boss@example.com", "role": "owner"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admin cannot grant owner");
    let (status, _) = post(
        &app,
        &format!("/v1/workspaces/{ws}/invitations"),
        Some(admin),
        json!({"email": "Bound@Example.com", "role": "member"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mail = last_mail(&app, "bound@example.com", "Invitation").await;
    let token = token_in(&mail, "Invitation");
    assert!(token.len() >= 22, "at least 128 bits");
    // Someone else with the token cannot use it.
    let thief = register(&app, "thief@example.com").await;
    let (status, _) =
        post(&app, "/v1/auth/invitations/accept", Some(&access(&thief)), json!({ "token": token })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&app, "/v1/auth/invitations/accept", None, json!({ "token": token })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bound = register(&app, "bound@example.com").await;
    let (status, joined) =
        post(&app, "/v1/auth/invitations/accept", Some(&access(&bound)), json!({ "token": token })).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["workspace"]["role"], "member");
    let (status, _) =
        post(&app, "/v1/auth/invitations/accept", Some(&access(&joined)), json!({ "token": token })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "single use");
    // A revoked invitation cannot be accepted.
    let (_, inv) = post(
        &app,
        &format!("/v1/workspaces/{ws}/invitations"),
        Some(admin),
        json!({"email": "late@example.com", "role": "viewer"}),
    )
    .await;
    let token = token_in(&last_mail(&app, "late@example.com", "Invitation").await, "Invitation");
    let (status, _) = delete(
        &app,
        &format!("/v1/workspaces/{ws}/invitations/{}", inv["id"].as_str().unwrap()),
        Some(admin),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let late = register(&app, "late@example.com").await;
    let (status, _) =
        post(&app, "/v1/auth/invitations/accept", Some(&access(&late)), json!({ "token": token })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = get(&app, &format!("/v1/workspaces/{ws}/invitations"), Some(admin)).await;
    let expires = list["items"][0]["expires_at"].as_str().unwrap();
    let created = list["items"][0]["created_at"].as_str().unwrap();
    let parse =
        |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!((parse(expires) - parse(created)).whole_days(), 7);
    app.stop().await;
}

#[tokio::test]
async fn removing_a_member_or_changing_their_role_ends_their_sessions_at_once() {
    let app = spawn(&[]).await;
    let (ws, people) = team(&app, "rm").await;
    let owner = &people[0].2;
    let (_, _, viewer_token, viewer_id) = &people[3];
    let (_, _, member_token, member_id) = &people[2];
    assert_eq!(
        get(&app, &format!("/v1/workspaces/{ws}/members"), Some(viewer_token)).await.0,
        StatusCode::OK
    );
    let (status, _) = delete(&app, &format!("/v1/workspaces/{ws}/members/{viewer_id}"), Some(owner)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, &format!("/v1/workspaces/{ws}/members"), Some(viewer_token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = patch(
        &app,
        &format!("/v1/workspaces/{ws}/members/{member_id}"),
        Some(owner),
        json!({"role": "viewer"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, "/v1/auth/me", Some(member_token)).await.0,
        StatusCode::UNAUTHORIZED,
        "the old role's token is gone"
    );
    let (_, relogin) = login(&app, "rm-member@example.com", PASSWORD).await;
    let (_, ws_list) = get(&app, "/v1/workspaces", Some(&access(&relogin))).await;
    let theirs = ws_list["items"].as_array().unwrap().iter().find(|w| w["id"] == ws.as_str()).unwrap();
    assert_eq!(theirs["role"], "viewer");
    app.stop().await;
}

#[tokio::test]
async fn switching_workspaces_issues_tokens_for_the_other_tenant_only_for_members() {
    let app = spawn(&[]).await;
    let me = register(&app, "two@example.com").await;
    let token = access(&me);
    let (status, second) =
        post(&app, "/v1/workspaces", Some(&token), json!({ "name": "Side project" })).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_id = second["id"].as_str().unwrap();
    let (_, list) = get(&app, "/v1/workspaces", Some(&token)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, switched) =
        post(&app, &format!("/v1/workspaces/{second_id}/switch"), Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{switched}");
    let (_, who) = get(&app, "/v1/auth/me", Some(&access(&switched))).await;
    assert_eq!(who["workspace"]["id"], second_id);
    assert_eq!(who["role"], "owner");
    // The new refresh token works; a stranger's workspace is not found.
    let (status, _) =
        post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": switched["refresh_token"] })).await;
    assert_eq!(status, StatusCode::OK);
    let other = register(&app, "other@example.com").await;
    let their_ws = other["workspace"]["id"].as_str().unwrap();
    let (status, _) =
        post(&app, &format!("/v1/workspaces/{their_ws}/switch"), Some(&access(&switched)), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_objects_are_not_found() {
    let app = spawn(&[]).await;
    let (ws_a, a) = team(&app, "ta").await;
    let b = register(&app, "tb-owner@example.com").await;
    let b_token = access(&b);
    let a_member = &a[2].3;
    let (_, inv) = get(&app, &format!("/v1/workspaces/{ws_a}/invitations"), Some(&a[0].2)).await;
    let inv_id = inv["items"][0]["id"].as_str().unwrap();
    let (_, key) =
        post(&app, "/v1/auth/api-keys", Some(&a[0].2), json!({"name": "a", "scopes": ["links:read"]})).await;
    let key_id = key["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/workspaces/{ws_a}/members")),
        ("GET", format!("/v1/workspaces/{ws_a}/invitations")),
        ("DELETE", format!("/v1/workspaces/{ws_a}/invitations/{inv_id}")),
        ("PATCH", format!("/v1/workspaces/{ws_a}/members/{a_member}")),
        ("DELETE", format!("/v1/workspaces/{ws_a}/members/{a_member}")),
        ("GET", format!("/v1/users/{a_member}")),
        ("PATCH", format!("/v1/users/{a_member}")),
        ("DELETE", format!("/v1/users/{a_member}")),
        ("DELETE", format!("/v1/auth/api-keys/{key_id}")),
        ("POST", format!("/v1/workspaces/{ws_a}/switch")),
    ] {
        let body = matches!(method, "PATCH" | "POST").then(|| json!({"role": "viewer"}));
        let body = if path.starts_with("/v1/users") && method == "PATCH" {
            Some(json!({"name": "Hacked"}))
        } else {
            body
        };
        let body = if path.ends_with("/switch") { Some(json!({})) } else { body };
        let (status, res) = call(&app, method.parse().unwrap(), &path, Some(&b_token), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {res}");
    }
    // Nothing changed for tenant A.
    let (_, members) = get(&app, &format!("/v1/workspaces/{ws_a}/members"), Some(&a[0].2)).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 4);
    let (_, m) = get(&app, &format!("/v1/users/{a_member}"), Some(&a[0].2)).await;
    assert_ne!(m["name"], "Hacked");
    app.stop().await;
}

#[tokio::test]
async fn admins_search_filter_and_page_through_members() {
    let app = spawn(&[]).await;
    let (ws, people) = team(&app, "list").await;
    let admin = &people[1].2;
    let (status, page) = get(&app, "/v1/users?limit=2", Some(admin)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = get(&app, &format!("/v1/users?limit=2&cursor={cursor}"), Some(admin)).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());
    let (_, found) = get(&app, "/v1/users?q=VIEW", Some(admin)).await;
    let found = found["items"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["email"], "list-viewer@example.com");
    let (_, admins) = get(&app, "/v1/users?role=admin", Some(admin)).await;
    assert_eq!(admins["items"][0]["role"], "admin");
    let (_, none) = get(&app, "/v1/users?q=%25", Some(admin)).await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0, "% is a character, not a wildcard");
    let (status, _) = get(&app, "/v1/users?role=emperor", Some(admin)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = get(&app, "/v1/users?cursor=garbage", Some(admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        get(&app, &format!("/v1/workspaces/{ws}/members?status=active&limit=500"), Some(admin)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test]
async fn profiles_and_preferences_follow_their_schema() {
    let app = spawn(&[]).await;
    let me = register(&app, "prof@example.com").await;
    let (token, id) = (access(&me), me["user"]["id"].as_str().unwrap().to_string());
    let (status, user) = patch(
        &app,
        &format!("/v1/users/{id}"),
        Some(&token),
        json!({"name": "Prof. X", "locale": "pt-BR", "timezone": "America/Sao_Paulo", "preferences": {"theme": "dark", "weekly_digest": false}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["preferences"]["theme"], "dark");
    assert_eq!(user["timezone"], "America/Sao_Paulo");
    for bad in [
        json!({"preferences": {"theme": "neon"}}),
        json!({"preferences": {"unknown": 1}}),
        json!({"timezone": "Mars/Olympus Mons"}),
        json!({"locale": "klingon-language-tag"}),
        json!({"status": "disabled"}),
        json!({"email": "new@example.com"}),
    ] {
        let (status, body) = patch(&app, &format!("/v1/users/{id}"), Some(&token), bad.clone()).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY
                || status == StatusCode::FORBIDDEN
                || status == StatusCode::BAD_REQUEST,
            "{bad}: {status} {body}"
        );
    }
    let (_, again) = get(&app, &format!("/v1/users/{id}"), Some(&token)).await;
    assert_eq!(again["name"], "Prof. X", "nothing was lost");
    let (status, cleared) =
        patch(&app, &format!("/v1/users/{id}"), Some(&token), json!({"timezone": null})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cleared["timezone"].is_null());
    assert_eq!(cleared["locale"], "pt-BR");
    app.stop().await;
}

#[tokio::test]
async fn platform_admins_see_every_workspace_and_disabling_a_user_ends_their_sessions() {
    let app = spawn(&[("SIGNPOST_PLATFORM_ADMINS", "root@example.com")]).await;
    let root = register(&app, "root@example.com").await;
    assert_eq!(root["user"]["platform_admin"], true);
    let root_token = access(&root);
    let user = register(&app, "plain@example.com").await;
    let user_token = access(&user);
    let user_id = user["user"]["id"].as_str().unwrap();
    let (status, all) = get(&app, "/v1/workspaces?all=true", Some(&root_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(all["items"].as_array().unwrap().len() >= 2);
    assert_eq!(get(&app, "/v1/workspaces?all=true", Some(&user_token)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(&app, "/v1/users?all=true", Some(&user_token)).await.0, StatusCode::FORBIDDEN);
    let (status, users) = get(&app, "/v1/users?all=true&q=plain", Some(&root_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users["items"][0]["email"], "plain@example.com");
    let (status, body) =
        patch(&app, &format!("/v1/users/{user_id}"), Some(&root_token), json!({"status": "disabled"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&app, "/v1/auth/me", Some(&user_token)).await.0, StatusCode::UNAUTHORIZED, "at once");
    assert_eq!(login(&app, "plain@example.com", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn deleting_an_account_ends_it_unless_it_is_the_last_owner_of_a_team() {
    let app = spawn(&[]).await;
    let (_, people) = team(&app, "del").await;
    let (_, _, owner_token, owner_id) = &people[0];
    let (status, body) = delete(&app, &format!("/v1/users/{owner_id}"), Some(owner_token)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let solo = register(&app, "solo@example.com").await;
    let solo_id = solo["user"]["id"].as_str().unwrap();
    let (status, _) = delete(&app, &format!("/v1/users/{solo_id}"), Some(&access(&solo))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/auth/me", Some(&access(&solo))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, "solo@example.com", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    app.stop().await;
}
