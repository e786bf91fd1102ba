//! Forwarding verified deliveries: one task takes due rows from the outbox, sends each with
//! the original body, Standard Webhooks headers and an `X-Gogs-Signature` made with the
//! receiver's own secret, and records the result. 2xx is delivered; 408, 429, 5xx, timeouts
//! and connection errors are retried with exponential backoff and jitter (at least as late as
//! `Retry-After`); other statuses, and the last allowed attempt, make a dead letter. A row is
//! leased while in flight, so a crash mid-attempt only means it is tried again after restart.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Notify, Semaphore, watch};

use super::store::{Forward, HookStore, StoreError};
use super::{Hooks, LoadedReceiver, WebhookMetrics, now_ms, signature};
use crate::audit::{Action, AuditLog, Kind, Record};
use crate::config::WebhookReceiver;

pub type ReceiverClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Forwards in flight at once (across receivers).
const IN_FLIGHT: usize = 16;
/// Rows taken from the outbox per look.
const BATCH: usize = 32;
/// Longest wait between looks at the outbox when nothing wakes the task.
const IDLE: Duration = Duration::from_secs(1);
/// Ceiling for a receiver's `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

pub static VERIFIED_PUSHER: HeaderName = HeaderName::from_static("x-gatehouse-verified-pusher");
pub static VERIFIED_PUSHER_EMAIL: HeaderName =
    HeaderName::from_static("x-gatehouse-verified-pusher-email");

/// The pooled client for one receiver: its own CA bundle if it names one, else the system
/// roots; http:// only when the URL says so.
pub fn client(r: &WebhookReceiver) -> Result<ReceiverClient, String> {
    let roots = crate::proxy::client::root_store(
        r.ca_file.as_deref(),
        &format!("webhook receiver {}", r.name),
    )
    .map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(r.timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if r.url.scheme() == Some(&http::uri::Scheme::HTTPS) {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    let connector = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

/// Handle on the forwarding task.
#[derive(Clone)]
pub struct Forwarder {
    wake: Arc<Notify>,
}

impl Forwarder {
    /// Starts the task; it stops when `stop` turns true.
    pub fn start(
        store: Arc<dyn HookStore>,
        hooks: Arc<ArcSwapOption<Hooks>>,
        audit: AuditLog,
        metrics: Arc<WebhookMetrics>,
        mut stop: watch::Receiver<bool>,
    ) -> Forwarder {
        let wake = Arc::new(Notify::new());
        let task_wake = wake.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            loop {
                let full = match hooks.load_full() {
                    Some(h) => look(&store, &h, &audit, &metrics, &slots, &task_wake).await,
                    None => false,
                };
                let wait = if full {
                    Duration::ZERO
                } else {
                    next_wait(&store).await
                };
                tokio::select! {
                    _ = task_wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {
                        if *stop.borrow() { return; }
                    }
                }
            }
        });
        Forwarder { wake }
    }

    /// A delivery was queued: look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn next_wait(store: &Arc<dyn HookStore>) -> Duration {
    let s = store.clone();
    match blocking(move || s.next_due()).await {
        Some(Ok(Some(at))) => {
            Duration::from_millis((at - now_ms()).clamp(0, IDLE.as_millis() as i64) as u64)
        }
        _ => IDLE,
    }
}

/// Takes due rows and starts their attempts; true when it took a full batch.
async fn look(
    store: &Arc<dyn HookStore>,
    hooks: &Arc<Hooks>,
    audit: &AuditLog,
    metrics: &Arc<WebhookMetrics>,
    slots: &Arc<Semaphore>,
    wake: &Arc<Notify>,
) -> bool {
    let free = slots.available_permits().min(BATCH);
    if free == 0 {
        return false;
    }
    let lease = hooks
        .receivers
        .iter()
        .map(|r| r.config.timeout)
        .max()
        .unwrap_or(Duration::from_secs(15))
        + Duration::from_secs(30);
    let s = store.clone();
    let due = match blocking(move || s.take_due(now_ms(), lease.as_millis() as i64, free)).await {
        Some(Ok(due)) => due,
        Some(Err(e)) => {
            tracing::error!(error = %e, "webhook outbox cannot be read");
            return false;
        }
        None => return false,
    };
    let full = due.len() == free;
    for f in due {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return false;
        };
        let (store, hooks, audit, metrics, wake) = (
            store.clone(),
            hooks.clone(),
            audit.clone(),
            metrics.clone(),
            wake.clone(),
        );
        tokio::spawn(async move {
            attempt(&store, &hooks, &audit, &metrics, f).await;
            drop(permit);
            wake.notify_one();
        });
    }
    update_gauges(store, metrics).await;
    full
}

async fn update_gauges(store: &Arc<dyn HookStore>, metrics: &Arc<WebhookMetrics>) {
    let s = store.clone();
    if let Some(Ok(c)) = blocking(move || s.counts()).await {
        metrics
            .outbox
            .with_label_values(&["pending"])
            .set(c.pending as i64);
        metrics
            .outbox
            .with_label_values(&["dead"])
            .set(c.dead as i64);
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered(u16),
    Retry {
        why: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
    Dead {
        why: String,
        status: Option<u16>,
    },
}

async fn attempt(
    store: &Arc<dyn HookStore>,
    hooks: &Hooks,
    audit: &AuditLog,
    metrics: &WebhookMetrics,
    f: Forward,
) {
    let n = f.attempts + 1;
    // Names the replica holding the forward while it is in flight (its lease).
    tracing::debug!(receiver = %f.receiver, delivery = %f.delivery, attempt = n, "webhook forward attempt started");
    let result = match hooks.receiver(&f.receiver) {
        Some(r) => send(r, &f).await,
        None => Attempt::Dead {
            why: "the receiver is no longer configured".into(),
            status: None,
        },
    };
    let max = hooks.config.max_attempts;
    let now = now_ms();
    type Update = Arc<dyn Fn(&dyn HookStore) -> Result<(), StoreError> + Send + Sync>;
    let (label, text, status, update): (&str, String, Option<u16>, Update) = match result {
        Attempt::Delivered(status) => (
            "delivered",
            format!("delivered ({status})"),
            Some(status),
            Arc::new(move |s: &dyn HookStore| s.delivered(f.id, n, now)),
        ),
        Attempt::Retry { why, status, after } if n < max => {
            let delay = backoff(hooks, n).max(after.unwrap_or_default().min(MAX_RETRY_AFTER));
            let next = now + delay.as_millis() as i64;
            let text = format!(
                "{why}; retry {} of {} in {}s",
                n + 1,
                max,
                delay.as_secs_f64().ceil()
            );
            let error = why.clone();
            (
                "retry",
                text,
                status,
                Arc::new(move |s: &dyn HookStore| s.retry_at(f.id, n, next, &error, now)),
            )
        }
        Attempt::Retry { why, status, .. } => {
            let error = format!("{why}; gave up after {n} attempts");
            let text = format!("dead letter: {error}");
            (
                "dead",
                text,
                status,
                Arc::new(move |s: &dyn HookStore| s.dead(f.id, n, &error, now)),
            )
        }
        Attempt::Dead { why, status } => {
            let error = format!("{why}; not retried");
            let text = format!("dead letter: {error}");
            (
                "dead",
                text,
                status,
                Arc::new(move |s: &dyn HookStore| s.dead(f.id, n, &error, now)),
            )
        }
    };
    metrics
        .forwards
        .with_label_values(&[&f.receiver, label])
        .inc();
    let mut record = Record::event(
        Kind::Webhook,
        format!(
            "forward of delivery {} ({} {}) to receiver {}, attempt {n}: {text}",
            f.delivery, f.event, f.repo, f.receiver
        ),
    );
    record.route = Some(crate::policy::GATEWAY_ROUTE.to_string());
    record.request_id = Some(f.delivery.clone());
    record.status = status;
    record.action = Some(Action {
        kind: Some("webhook_forward".into()),
        repository: Some(f.repo.clone()),
        ..Default::default()
    });
    audit.submit(record);
    match label {
        "delivered" => {
            tracing::info!(receiver = %f.receiver, delivery = %f.delivery, attempt = n, "webhook forwarded")
        }
        _ => {
            tracing::warn!(receiver = %f.receiver, delivery = %f.delivery, attempt = n, result = %text, "webhook forward failed")
        }
    }
    // An update that is lost lets the lease run out, and the forward is sent again. The
    // attempt took at most the receiver's timeout, so 30 s of the lease remain: keep trying
    // for part of it, so that a shared store restarting does not make a duplicate. The
    // updates are idempotent (a retried one whose first reply was lost changes nothing).
    let give_up = std::time::Instant::now() + UPDATE_RETRY;
    let mut delay = Duration::from_millis(250);
    loop {
        let (s, u) = (store.clone(), update.clone());
        match blocking(move || u(&*s)).await {
            Some(Err(e)) if std::time::Instant::now() + delay < give_up => {
                tracing::warn!(error = %e, delivery = %f.delivery, "webhook outbox cannot be updated; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Some(Err(e)) => {
                // At least once, never lost: the forward is sent again after its lease.
                tracing::error!(error = %e, delivery = %f.delivery, "webhook outbox cannot be updated; the forward will be sent again when its lease runs out");
                break;
            }
            Some(Ok(())) | None => break,
        }
    }
}

/// How long a forward's outcome is retried into an unreachable store (within its lease).
const UPDATE_RETRY: Duration = Duration::from_secs(20);

/// Exponential backoff with jitter: a random delay in [d/2, d], d = base * 2^(n-1), capped.
fn backoff(hooks: &Hooks, attempt: u32) -> Duration {
    let base = hooks.config.retry_base;
    let max = hooks.config.retry_max;
    let d = base
        .checked_mul(1u32 << (attempt.saturating_sub(1)).min(20))
        .unwrap_or(max)
        .min(max);
    let mut r = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    d.mul_f64(0.5 + 0.5 * frac)
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(v: Option<&HeaderValue>) -> Option<Duration> {
    let text = v?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn header(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

async fn send(r: &LoadedReceiver, f: &Forward) -> Attempt {
    let timestamp = now_ms() / 1000;
    let body = Bytes::from(f.body.clone());
    let mut req = http::Request::new(Full::new(body.clone()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = r.config.url.clone();
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("gatehouse-webhooks"),
    );
    let gogs_sig = signature::gogs_signature(r.secret.expose().as_bytes(), &body);
    let standard = signature::standard_signature(&r.standard_key, &f.delivery, timestamp, &body);
    for (name, value) in [
        ("x-gogs-event", f.event.as_str()),
        ("x-gogs-delivery", f.delivery.as_str()),
        ("x-gogs-signature", gogs_sig.as_str()),
        ("webhook-id", f.delivery.as_str()),
        ("webhook-signature", standard.as_str()),
    ] {
        if let Some(v) = header(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(v) = header(&timestamp.to_string()) {
        h.insert(HeaderName::from_static("webhook-timestamp"), v);
    }
    if let Some(p) = &f.pusher {
        if let Some(v) = header(p.name()) {
            h.insert(VERIFIED_PUSHER.clone(), v);
        }
        if let Some(v) = p.email.as_deref().and_then(header) {
            h.insert(VERIFIED_PUSHER_EMAIL.clone(), v);
        }
    }
    let exchange = async {
        let resp = r.client.request(req).await?;
        let status = resp.status();
        let after = retry_after(resp.headers().get(header::RETRY_AFTER));
        // Read (a bounded part of) the answer so the connection can be reused.
        let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
        Ok::<_, hyper_util::client::legacy::Error>((status, after))
    };
    match tokio::time::timeout(r.config.timeout, exchange).await {
        Err(_) => Attempt::Retry {
            why: format!("no answer within {}s", r.config.timeout.as_secs_f64()),
            status: None,
            after: None,
        },
        Ok(Err(e)) => Attempt::Retry {
            why: format!("cannot reach the receiver: {}", error_chain(&e)),
            status: None,
            after: None,
        },
        Ok(Ok((status, after))) => {
            let code = status.as_u16();
            if status.is_success() {
                Attempt::Delivered(code)
            } else if code == 408 || code == 429 || status.is_server_error() {
                Attempt::Retry {
                    why: format!("the receiver answered {code}"),
                    status: Some(code),
                    after,
                }
            } else {
                Attempt::Dead {
                    why: format!("the receiver answered {code}"),
                    status: Some(code),
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
