//! Operator endpoints through `router(state)` with `oneshot` (no socket).

#![allow(clippy::unwrap_used)]

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use signaling_server::{AppState, Config, router};
use tower::ServiceExt;

/// GET from the operator's own host (admin routes are local-only without a token).
async fn get(state: &AppState, path: &str) -> (StatusCode, String) {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    let local: std::net::SocketAddr = ([127, 0, 0, 1], 50_000).into();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(local));
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn operator_endpoints() {
    let state = AppState::new(Config::default());
    assert_eq!(
        get(&state, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );

    let (status, metrics) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "signaling_connections 0",
        "signaling_swarms 0",
        "signaling_messages_in_total{type=\"signal\"} 0",
        "signaling_relays_total 0",
        "signaling_errors_total{code=\"rate_limited\"} 0",
        "signaling_rejects_total{reason=\"origin\"} 0",
        "signaling_offload_ratio 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }

    let (status, api) = get(&state, "/api/swarms").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["connections"], 0);
    assert!(v["top"].as_array().unwrap().is_empty());

    for path in ["/", "/dashboard"] {
        let (status, html) = get(&state, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains("api/swarms") && !html.contains("http://") && !html.contains("https://")
        );
    }

    // A plain GET on /ws is not an upgrade.
    let (status, _) = get(&state, "/ws").await;
    assert!(status.is_client_error());

    state.begin_shutdown();
    assert_eq!(
        get(&state, "/healthz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
