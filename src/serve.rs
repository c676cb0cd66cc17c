//! `xos-vmm serve`: a function behind HTTP. The request body is the guest's
//! stdin, its stdout the response body, its exit status the HTTP status;
//! every request runs in a freshly reset instance (a warm pool when the
//! guest has a ready point, a fresh virtine otherwise). Prometheus metrics
//! at `/metrics`; SIGINT/SIGTERM stop accepting and finish in-flight
//! requests.

use crate::{CallResult, Function, FunctionPool};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vmm::{Fault, GuestExit};

/// How a server runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Largest request body accepted (bigger ones get 413).
    pub max_input: usize,
    /// Warm instances at most.
    pub instances: usize,
}

/// What serves requests.
pub enum Backend {
    /// A warm pool (the guest has a ready point).
    Pool(FunctionPool),
    /// A fresh virtine per request.
    Cold(Box<Function>),
}

impl Backend {
    /// A warm pool when the function reaches a ready point, otherwise a
    /// fresh virtine per request.
    pub fn for_function(f: &Function, instances: usize) -> Result<Backend, crate::Error> {
        match f.pool(instances) {
            Ok(pool) => Ok(Backend::Pool(pool)),
            Err(crate::Error::Icf(icf::IcfError::NotReady { .. })) => {
                Ok(Backend::Cold(Box::new(f.clone())))
            }
            Err(e) => Err(e),
        }
    }

    fn call(&self, input: &[u8]) -> Result<CallResult, crate::Error> {
        match self {
            Backend::Pool(p) => p.call(input),
            Backend::Cold(f) => f.call(input),
        }
    }

    /// One word for logs: "warm pool" or "fresh virtine per request".
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::Pool(_) => "warm pool",
            Backend::Cold(_) => "fresh virtine per request",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

/// Counters exported at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    invocations: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_ns: AtomicU64,
}

impl Metrics {
    fn observe(&self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        };
        counter(
            "xos_invocations_total",
            "Requests that ran the function.",
            load(&self.invocations),
        );
        counter(
            "xos_errors_total",
            "Invocations that did not exit with status 0 (timeouts included).",
            load(&self.errors),
        );
        counter(
            "xos_timeouts_total",
            "Invocations stopped at their time limit.",
            load(&self.timeouts),
        );
        counter(
            "xos_refused_total",
            "Requests refused before running (input too large).",
            load(&self.refused),
        );
        s.push_str("# HELP xos_invocation_duration_seconds Time to run one invocation.\n");
        s.push_str("# TYPE xos_invocation_duration_seconds histogram\n");
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            s.push_str(&format!(
                "xos_invocation_duration_seconds_bucket{{le=\"{bound}\"}} {}\n",
                load(count)
            ));
        }
        let n = load(&self.invocations);
        s.push_str(&format!(
            "xos_invocation_duration_seconds_bucket{{le=\"+Inf\"}} {n}\n"
        ));
        s.push_str(&format!(
            "xos_invocation_duration_seconds_sum {}\n",
            load(&self.latency_sum_ns) as f64 / 1e9
        ));
        s.push_str(&format!("xos_invocation_duration_seconds_count {n}\n"));
        s
    }
}

struct AppState {
    backend: Backend,
    metrics: Metrics,
}

/// The HTTP status for how an invocation ended, with a short reason.
fn status_for(exit: &GuestExit) -> (StatusCode, Option<String>) {
    match exit {
        GuestExit::Exited(0) => (StatusCode::OK, None),
        GuestExit::Exited(code) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(format!("the function exited with status {code}")),
        ),
        GuestExit::TimedOut { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            Some("the function ran past its time limit".into()),
        ),
        GuestExit::Faulted {
            fault: Fault::OutputLimit { limit },
            ..
        } => (
            StatusCode::BAD_GATEWAY,
            Some(format!("the function's output exceeded {limit} bytes")),
        ),
        other => (StatusCode::BAD_GATEWAY, Some(other.to_string())),
    }
}

async fn invoke(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let app = state.clone();
    let result = tokio::task::spawn_blocking(move || app.backend.call(&body)).await;
    let m = &state.metrics;
    m.invocations.fetch_add(1, Ordering::Relaxed);
    m.observe(started.elapsed().as_secs_f64());
    let result = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            m.errors.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
        Err(e) => {
            m.errors.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    let (status, reason) = status_for(&result.exit);
    if status != StatusCode::OK {
        m.errors.fetch_add(1, Ordering::Relaxed);
    }
    if matches!(result.exit, GuestExit::TimedOut { .. }) {
        m.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = (status, result.stdout).into_response();
    let headers = response.headers_mut();
    if let GuestExit::Exited(code) = result.exit {
        headers.insert("x-xos-exit-code", HeaderValue::from(u16::from(code)));
    }
    if let Some(reason) = reason.and_then(|r| HeaderValue::from_str(&r.replace('\n', " ")).ok()) {
        headers.insert("x-xos-error", reason);
    }
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn too_large(State(state): State<Arc<AppState>>, max: usize) -> Response {
    state.metrics.refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the {max}-byte input limit\n"),
    )
        .into_response()
}

/// Serves `backend` until `shutdown` completes, then finishes the requests
/// in flight. `on_listening` gets the bound address (useful with port 0).
pub async fn serve(
    backend: Backend,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let state = Arc::new(AppState {
        backend,
        metrics: Metrics::default(),
    });
    let max = config.max_input;
    let limited = {
        let state = state.clone();
        move |body: Result<Bytes, axum::extract::rejection::BytesRejection>| {
            let state = state.clone();
            async move {
                match body {
                    Ok(b) => invoke(State(state), b).await,
                    Err(_) => too_large(State(state), max).await,
                }
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", post(limited.clone()))
        .route("/{*path}", post(limited))
        .layer(DefaultBodyLimit::max(config.max_input))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    on_listening(listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = term.recv() => {}
    }
}
