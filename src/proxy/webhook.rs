//! `POST <webhooks.path>` (default `/.gatehouse/hooks/gogs`): Gogs deliveries.
//!
//! The size cap is checked before anything is hashed (Content-Length first, then the stream);
//! the signature and payload are checked on a blocking thread; the delivery's audit record is
//! written before anything is recorded or queued (503 if it cannot be), and its outcome says
//! what was done: commits recorded, receivers queued, or which earlier delivery it repeats.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::RequestContext;
use super::audit::{Arrival, Draft};
use super::error::ProxyError;
use super::response::ResponseBody;
use super::response::plain;
use crate::audit::{Action, AuditLog, AuditRef, Kind};
use crate::webhook::receive::{self, Inbound, Receipt, Rejection};
use crate::webhook::store::{HookStore, Pusher, Received, Retention};
use crate::webhook::{Forwarder, Hooks, WebhookMetrics, now_ms};

/// A delivery body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The webhook machinery that outlives configurations.
pub struct WebhookService {
    pub store: Arc<dyn HookStore>,
    /// The store as attribution reads it; told when deliveries are recorded.
    pub commits: Arc<crate::attribution::CommitCache>,
    /// Emits deployment markers (`[telemetry.traces]`).
    pub tracer: Option<crate::telemetry::traces::Tracer>,
    pub forwarder: Forwarder,
    pub metrics: Arc<WebhookMetrics>,
    /// The current configuration's sources and receivers.
    pub hooks: Arc<ArcSwapOption<Hooks>>,
}

impl WebhookService {
    /// Notes a push the gateway authorised (its ref updates), so the webhook that follows
    /// can name the person who pushed. Best effort: a failure only loses the attribution.
    pub fn note_push(&self, repo: String, refs: Vec<(String, String)>, pusher: Pusher) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.note_push(&repo, &refs, &pusher, now_ms()) {
                tracing::warn!(error = %e, "push not noted for webhook attribution");
            }
        });
    }

    /// Applies retention once now and then every hour.
    pub fn start_pruning(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (store, hooks) = (self.store.clone(), self.hooks.clone());
        tokio::spawn(async move {
            loop {
                if let Some(h) = hooks.load_full() {
                    let c = &h.config;
                    let r = Retention {
                        now_ms: now_ms(),
                        replay_window_ms: c.replay_window.as_millis() as i64,
                        commit_retention_ms: c.commit_retention.as_millis() as i64,
                        commit_max: c.commit_max,
                        delivered_ms: 7 * 24 * 3600 * 1000,
                    };
                    let s = store.clone();
                    match tokio::task::spawn_blocking(move || s.prune(&r)).await {
                        Ok(Ok(p)) => tracing::debug!(?p, "webhook store pruned"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "webhook store cannot be pruned"),
                        Err(_) => {}
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.changed() => if *stop.borrow() { return },
                }
            }
        });
    }
}

fn rejected(r: &Rejection) -> ProxyError {
    let message = match r {
        // The details (paths, SQLite's words) are for the log, not for the sender.
        Rejection::Store(e) => {
            tracing::error!(error = %e, "webhook store failed");
            "the webhook store is unavailable; try again later".to_string()
        }
        other => other.to_string(),
    };
    ProxyError::WebhookRejected {
        status: r.status(),
        message,
    }
}

fn too_large(max: u64) -> ProxyError {
    ProxyError::WebhookRejected {
        status: 413,
        message: format!("the delivery exceeds webhooks.max_body ({max} bytes)"),
    }
}

fn update_kind(before: &str, after: &str) -> &'static str {
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    match (zero(before), zero(after)) {
        (true, _) => "create",
        (_, true) => "delete",
        _ => "update",
    }
}

pub async fn serve(
    req: Request<Incoming>,
    ctx: &RequestContext<'_>,
    arrival: &Arrival<'_>,
    draft: &mut Draft,
    log: &AuditLog,
    svc: &WebhookService,
) -> Result<Response<ResponseBody>, ProxyError> {
    let answer = receive_delivery(req, ctx, arrival, draft, log, svc).await;
    if answer.is_err() {
        svc.metrics.received.with_label_values(&["rejected"]).inc();
    }
    answer
}

async fn receive_delivery(
    req: Request<Incoming>,
    ctx: &RequestContext<'_>,
    arrival: &Arrival<'_>,
    draft: &mut Draft,
    log: &AuditLog,
    svc: &WebhookService,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(hooks) = svc.hooks.load_full() else {
        return Err(ProxyError::UnknownEndpoint);
    };
    draft.kind = Kind::Webhook;
    if req.method() != Method::POST {
        return Err(ProxyError::EndpointMethod { allow: "POST" });
    }
    let max = hooks.config.max_body;
    let (parts, body) = req.into_parts();
    if super::headers::content_length(&parts.headers)?.is_some_and(|len| len > max) {
        return Err(too_large(max));
    }
    let bytes: Bytes = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(body, max as usize).collect(),
    )
    .await
    {
        Err(_) => return Err(ProxyError::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(max)),
        Ok(Err(_)) => return Err(ProxyError::BodyMalformed),
        Ok(Ok(c)) => c.to_bytes(),
    };
    draft.progress = Some(super::body::Progress::of_length(bytes.len() as u64));
    let h = &parts.headers;
    let owned = |name: &str| h.get(name).map(|v| v.as_bytes().to_vec());
    let (event, delivery, signature, content_type) = (
        owned("x-gogs-event"),
        owned("x-gogs-delivery"),
        owned("x-gogs-signature"),
        owned("content-type"),
    );
    let now = now_ms();
    let verifying = hooks.clone();
    let verified = tokio::task::spawn_blocking(move || {
        receive::verify(
            &verifying,
            &Inbound {
                event: event.as_deref(),
                delivery: delivery.as_deref(),
                signature: signature.as_deref(),
                content_type: content_type.as_deref(),
                body: &bytes,
                now_ms: now,
            },
        )
    })
    .await
    .map_err(|_| ProxyError::Unreadable("the webhook could not be checked".into()))?;
    let v = match verified {
        Ok(v) => v,
        Err(r) => {
            tracing::warn!(reason = %r, "webhook delivery refused");
            draft.deny(&r.to_string());
            return Err(rejected(&r));
        }
    };

    // What arrived, on record before anything is kept or queued.
    draft.action = Some(Action {
        kind: Some(format!("webhook_{}", v.event)),
        repository: Some(crate::audit::record::cap(
            &v.repository,
            "action.repository",
            &mut draft.truncated,
        )),
        refs: v
            .push
            .as_ref()
            .map(|(name, before, after)| AuditRef {
                name: name.clone(),
                kind: update_kind(before, after).to_string(),
                old: before.clone(),
                new: after.clone(),
            })
            .into_iter()
            .collect(),
        services: Vec::new(),
    });
    draft.allow(&if v.signed {
        format!("signature verified (source {})", v.source)
    } else {
        format!(
            "unsigned delivery accepted (source {} allows unsigned hooks)",
            v.source
        )
    });
    draft.detail = Some(format!("delivery {}", v.delivery));
    super::audit::write_first(log, draft, arrival, "a webhook delivery").await?;

    let changes = crate::attribution::deploy::changes(&v.repository, v.push.as_ref(), v.markers());
    let store = svc.store.clone();
    let window = hooks.config.replay_window.as_millis() as i64;
    let receipt = tokio::task::spawn_blocking(move || receive::record(&*store, v, now, window))
        .await
        .map_err(|_| ProxyError::Unreadable("the webhook could not be recorded".into()))?;
    let receipt = match receipt {
        Ok(r) => r,
        Err(r) => {
            tracing::warn!(reason = %r, "webhook delivery not recorded");
            return Err(rejected(&r));
        }
    };
    let text = summary(&receipt);
    match &receipt.outcome {
        Received::New { outbox, .. } => {
            svc.metrics.received.with_label_values(&["accepted"]).inc();
            svc.metrics.commits.inc_by(receipt.commits as u64);
            svc.commits.recorded();
            if !outbox.is_empty() {
                svc.forwarder.wake();
            }
            if let Some(tracer) = &svc.tracer {
                for span in crate::attribution::deploy::marker_spans(
                    &ctx.rt.config.attribution,
                    &changes,
                    receipt.verified_pusher(),
                    &receipt.delivery,
                ) {
                    tracer.record(span);
                }
            }
        }
        _ => svc.metrics.received.with_label_values(&["duplicate"]).inc(),
    }
    tracing::info!(delivery = %receipt.delivery, event = %receipt.event, repository = %receipt.repository, "{text}");
    draft.outcome_detail = Some(text.clone());
    let mut resp = plain(StatusCode::OK, format!("{text}\n"), ctx.request_id);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// One line saying what was done with a delivery.
fn summary(r: &Receipt) -> String {
    match &r.outcome {
        Received::Duplicate {
            delivery,
            first_seen_ms,
            same_id,
        } => {
            let when = crate::audit::record::timestamp(
                std::time::UNIX_EPOCH + Duration::from_millis((*first_seen_ms).max(0) as u64),
            );
            if *same_id {
                format!(
                    "duplicate: delivery {delivery} was already received at {when}; not processed again"
                )
            } else {
                format!(
                    "duplicate: this body was already received as delivery {delivery} at {when}; not processed again"
                )
            }
        }
        _ => {
            let mut text = format!(
                "accepted {} delivery {} for {}",
                r.event, r.delivery, r.repository
            );
            if r.event == "push" {
                text.push_str(&format!("; {} commit(s) recorded", r.commits));
            }
            match r.verified_pusher() {
                Some(p) => text.push_str(&format!("; verified pusher {}", p.name())),
                None if r.event == "push" => text.push_str("; pusher not seen by the gateway"),
                None => {}
            }
            if r.forwarded_to.is_empty() {
                text.push_str("; no receiver wants it");
            } else {
                text.push_str(&format!("; queued for {}", r.forwarded_to.join(", ")));
            }
            text
        }
    }
}
