//! Cache and rate limiter, in-process or on Redis.

use std::sync::Arc;
use std::time::Duration;

use kernel::cache::RedisConn;
use kernel::ratelimit::{RateLimiter, RedisLimiter};
use testkit::TestApp;

#[tokio::test]
async fn cache_values_expire_and_can_be_deleted() {
    let app = TestApp::spawn().await;
    let cache = &app.kernel.cache;
    cache.set("k1", b"v1", Duration::from_millis(300)).await.unwrap_or_else(|e| panic!("{e}"));
    cache.set("k2", b"v2", Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache.get("k1").await.ok().flatten().as_deref(), Some(&b"v1"[..]));
    cache.delete("k2").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache.get("k2").await.ok().flatten(), None, "deleted");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(cache.get("k1").await.ok().flatten(), None, "expired");
    assert_eq!(cache.get("never-set").await.ok().flatten(), None);
    app.stop().await;
}

async fn count_allowed(limiters: &[Arc<dyn RateLimiter>], key: &str, attempts: usize, limit: u64) -> usize {
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let limiter = limiters[i % limiters.len()].clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move { limiter.hit(&key, limit, Duration::from_secs(3600)).await }));
    }
    let mut allowed = 0;
    for t in tasks {
        let d = t.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
        if d.allowed {
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test]
async fn limiter_allows_exactly_the_limit_under_concurrency() {
    let app = TestApp::spawn().await;
    let allowed = count_allowed(std::slice::from_ref(&app.kernel.limiter), "burst", 120, 25).await;
    assert_eq!(allowed, 25);
    let d =
        app.kernel.limiter.peek("burst", 25, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    assert!(d.reset_after > Duration::from_secs(55) && d.reset_after <= Duration::from_secs(60), "{d:?}");
    app.stop().await;
}

#[tokio::test]
async fn two_processes_sharing_redis_enforce_one_combined_limit() {
    let app = TestApp::spawn().await;
    let Some(r) = &app.config.redis else {
        eprintln!("skipped: needs SIGNPOST_TEST_REDIS_URL");
        return app.stop().await;
    };
    // A second, independent connection stands for a second gateway process.
    let other = RedisConn::connect(&r.url, &r.prefix).await.unwrap_or_else(|e| panic!("{e}"));
    let limiters: Vec<Arc<dyn RateLimiter>> =
        vec![app.kernel.limiter.clone(), Arc::new(RedisLimiter::new(other))];
    let allowed = count_allowed(&limiters, "shared", 200, 40).await;
    assert_eq!(allowed, 40);
    app.stop().await;
}

#[tokio::test]
async fn the_window_slides_and_peek_does_not_count() {
    let app = TestApp::spawn().await;
    let l = &app.kernel.limiter;
    let w = Duration::from_millis(400);
    for _ in 0..3 {
        assert!(l.peek("slide", 2, w).await.map(|d| d.allowed).unwrap_or(false), "peeking records nothing");
    }
    assert!(l.hit("slide", 2, w).await.map(|d| d.allowed).unwrap_or(false));
    assert!(l.hit("slide", 2, w).await.map(|d| d.allowed && d.remaining == 0).unwrap_or(false));
    let refused = l.hit("slide", 2, w).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!refused.allowed && refused.reset_after <= w);
    tokio::time::sleep(w + Duration::from_millis(100)).await;
    assert!(
        l.hit("slide", 2, w).await.map(|d| d.allowed).unwrap_or(false),
        "allowed again once hits left the window"
    );
    l.reset("slide").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.peek("slide", 2, w).await.map(|d| d.remaining).unwrap_or(0), 2, "reset forgets");
    app.stop().await;
}

#[tokio::test]
async fn large_limits_use_a_window_counter_that_still_refuses_at_the_limit() {
    let app = TestApp::spawn().await;
    let l = &app.kernel.limiter;
    let limit = kernel::ratelimit::EXACT_LIMIT + 500;
    let allowed = count_allowed(std::slice::from_ref(l), "big", (limit + 300) as usize, limit).await;
    assert_eq!(allowed as u64, limit, "exact within one window");
    let d = l.peek("big", limit, Duration::from_secs(3600)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.allowed && d.remaining == 0);
    l.reset("big").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(l.hit("big", limit, Duration::from_secs(3600)).await.map(|d| d.allowed).unwrap_or(false));
    app.stop().await;
}
