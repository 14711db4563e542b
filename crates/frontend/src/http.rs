//! The HTTP endpoint: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sluice_planner::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

#[derive(Clone)]
struct AppState {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
}

/// Serves `/health`, `/ready` and `/metrics` until `shutdown`.
/// With `fault_injection`, also `POST /debug/isolate?peers=1,2` (drop all
/// traffic between this node and those peers), `POST /debug/delay?ms=N`
/// (delay every peer message it sends or answers) and `POST /debug/heal`.
pub async fn serve_http(
    listener: TcpListener,
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    fault_injection: bool,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut app = router(AppState {
        db: db.clone(),
        metrics,
    });
    if fault_injection {
        tracing::warn!("fault injection endpoints enabled on the HTTP port");
        app = app.merge(fault_router(db));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn fault_router(db: Arc<Database>) -> Router {
    Router::new()
        .route("/debug/isolate", post(isolate))
        .route("/debug/delay", post(delay))
        .route("/debug/heal", post(heal))
        .with_state(db)
}

async fn isolate(State(db): State<Arc<Database>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let Some(list) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("peers="))
    else {
        return (StatusCode::BAD_REQUEST, "expected ?peers=1,2\n").into_response();
    };
    let peers: Result<Vec<u64>, _> = list
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u64>())
        .collect();
    match peers {
        Ok(peers) => {
            tracing::warn!(?peers, "fault injection: isolating this node from peers");
            db.raft().faults().isolate_from(peers);
            let now = db.raft().faults().isolated_from_peers();
            (StatusCode::OK, format!("isolated from {now:?}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("peers: {e}\n")).into_response(),
    }
}

async fn delay(State(db): State<Arc<Database>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let ms = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse::<u64>().ok());
    match ms {
        Some(ms) => {
            tracing::warn!(ms, "fault injection: delaying every peer message");
            let delay = (ms > 0).then(|| std::time::Duration::from_millis(ms));
            db.raft().faults().set_delay(delay);
            (StatusCode::OK, format!("delay {ms} ms\n")).into_response()
        }
        None => (StatusCode::BAD_REQUEST, "expected ?ms=N\n").into_response(),
    }
}

async fn heal(State(db): State<Arc<Database>>) -> &'static str {
    tracing::warn!("fault injection: healed");
    db.raft().faults().heal();
    "healed\n"
}

/// Liveness: the process answers.
async fn health() -> &'static str {
    "ok"
}

/// Readiness: the node is a voter with a known leader, or a learner that
/// has caught up, so it can serve reads and route writes.
async fn ready(State(state): State<AppState>) -> Response {
    match state.db.raft().status().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.metrics.clone();
    let db = state.db.clone();
    // Engine statistics may read RocksDB properties: keep that off the async workers.
    match tokio::task::spawn_blocking(move || metrics.render(&db)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode metrics: {e}\n"),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics task failed\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_says_ok() {
        assert_eq!(health().await, "ok");
    }
}
