//! The HTTP endpoint: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
pub async fn serve_http(
    listener: TcpListener,
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(AppState { db, metrics });
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

/// Liveness: the process answers.
async fn health() -> &'static str {
    "ok"
}

/// Readiness: the node is part of a Raft group with a known leader, so it
/// can serve reads and route writes.
async fn ready(State(state): State<AppState>) -> Response {
    let status = state.db.raft().status();
    match readiness(status.role, status.leader_id, status.term) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

fn readiness(role: &str, leader_id: Option<u64>, term: u64) -> Result<(), String> {
    match (role, leader_id) {
        ("leader" | "follower", Some(_)) => Ok(()),
        ("leader" | "follower", None) => Err(format!("no known leader (role {role}, term {term})")),
        (role, _) => Err(format!("node is {role} (term {term})")),
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

    #[test]
    fn ready_only_with_a_known_leader() {
        assert!(readiness("leader", Some(1), 3).is_ok());
        assert!(readiness("follower", Some(2), 3).is_ok());
        assert_eq!(
            readiness("follower", None, 3).unwrap_err(),
            "no known leader (role follower, term 3)"
        );
        assert_eq!(
            readiness("candidate", None, 3).unwrap_err(),
            "node is candidate (term 3)"
        );
        assert!(readiness("shutdown", Some(1), 3).is_err());
    }

    #[tokio::test]
    async fn health_says_ok() {
        assert_eq!(health().await, "ok");
    }
}
