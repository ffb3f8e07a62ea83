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
        "signaling_p2p_bytes_total 0",
        "signaling_http_bytes_total 0",
        "signaling_relay_latency_seconds_count{path=\"local\"} 0",
        "signaling_relay_latency_seconds_bucket{path=\"cluster\",le=\"+Inf\"} 0",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // A since-start ratio is PromQL's job (`deploy/grafana/signaling.json`).
    assert!(!metrics.contains("offload_ratio"), "{metrics}");
    // Counters are named once, with their `_total`.
    assert!(!metrics.contains("_total_total"), "{metrics}");

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

/// The names of the samples in a Prometheus text exposition (`name{labels} value`).
fn sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every metric the Grafana dashboard queries exists in `/metrics` of a cluster node, so a
/// renamed series breaks this test rather than a panel.
#[tokio::test]
async fn grafana_dashboard_queries_existing_metrics() {
    let state = AppState::new(Config {
        // A cluster node (its series are registered at start; nothing connects in this test).
        cluster_nats: Some("nats://127.0.0.1:1".into()),
        ..Config::default()
    });
    let (status, metrics) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let names = sample_names(&metrics);

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/signaling.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut checked = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            // Metric names: identifiers with our prefixes (PromQL functions, labels and
            // Grafana variables have none of them).
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("signaling_") || w.starts_with("process_"))
                .collect();
            assert!(!used.is_empty(), "panel {title}: no metric in {expr}");
            for name in used {
                assert!(
                    names.contains(name),
                    "panel {title}: {name} is not in /metrics"
                );
                checked += 1;
            }
        }
    }
    // The panels the cluster needs are there.
    let all: String = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for needed in [
        "signaling_connections",
        "histogram_quantile(0.99",
        "signaling_relay_latency_seconds_bucket",
        "signaling_cluster_relays_forwarded_total",
        "signaling_cluster_dropped_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "signaling_p2p_bytes_total",
    ] {
        assert!(all.contains(needed), "no panel queries {needed}");
    }
    assert!(checked >= 20, "{checked}");
}
