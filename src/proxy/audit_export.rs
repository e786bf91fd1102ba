//! `/.gatehouse/audit/export`: the audit export over HTTPS, for the callers the policy lets
//! `GET` that path on the `gatehouse` route (an `auditor` role, typically).
//!
//! Same filters and formats as `gatehouse audit export` (`since`, `until` and `format` are
//! required; `user`, `route`, `decision`, `kind` optional), read from the query string. The
//! export is itself audited: its `admin` record, query included, is written before the first
//! byte leaves (or the request is refused with 503), and its outcome carries the export's
//! summary line. The chain is verified as the records stream; if it does not verify, the
//! response is cut off with an error instead of ending cleanly, so a client never mistakes a
//! tampered log for a complete export (curl: exit 18 or 56).
//!
//! One export runs at a time: it reads the whole range with every core, and a second one
//! would only halve the speed of both (the second caller gets 503 with `Retry-After`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{Semaphore, mpsc};

use super::RequestContext;
use super::audit::{Arrival, Draft};
use super::authorize;
use super::error::ProxyError;
use super::headers::X_REQUEST_ID;
use super::response::{ResponseBody, Streamed};
use crate::audit::export::{self, Filter, Format};
use crate::audit::{AuditLog, Kind, checkpoint};
use crate::config::{RouteAuth, RouteKind};
use crate::identity::Outcome;
use crate::policy::{self, SubjectRef};

pub const PATH: &str = "/.gatehouse/audit/export";

/// Bytes handed to the connection at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered between the export thread and the connection.
const IN_FLIGHT: usize = 8;

/// Admits one export at a time.
pub struct Exports {
    slot: Arc<Semaphore>,
}

impl Default for Exports {
    fn default() -> Self {
        Exports {
            slot: Arc::new(Semaphore::new(1)),
        }
    }
}

/// Authenticates, authorizes, records, then streams the export.
pub async fn serve(
    req: Request<Incoming>,
    ctx: &RequestContext<'_>,
    arrival: &Arrival<'_>,
    draft: &mut Draft,
    log: &AuditLog,
    exports: &Exports,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(audit) = &ctx.rt.config.audit else {
        return Err(ProxyError::UnknownEndpoint);
    };
    if req.method() != Method::GET {
        return Err(ProxyError::EndpointMethod { allow: "GET" });
    }
    let (mut parts, _body) = req.into_parts();
    let identity = &ctx.rt.identity;
    let auth = RouteAuth {
        session: identity.oidc.is_some(),
        bearer: identity.bearer.is_some(),
        basic: false,
        public: false,
    };
    let caller = match identity
        .authenticate(&mut parts, auth, ctx.host_str())
        .await
    {
        Outcome::Caller(c) => c,
        Outcome::Challenge(c) => {
            if c.refused {
                draft.kind = Kind::TokenRejected;
            }
            draft.deny(&c.reason);
            return Ok(super::challenge_response(c, &parts, ctx).await);
        }
    };
    draft.kind = Kind::Admin;
    draft.caller(&caller.identity, caller.method);

    let query = parts.uri.query().unwrap_or("");
    let request = crate::classify::policy_request(
        RouteKind::Plain,
        policy::GATEWAY_ROUTE,
        parts.method.as_str(),
        PATH,
        Some(query),
        Vec::new(),
        Vec::new(),
    );
    let store = ctx.rt.policy.current();
    let decision = policy::evaluate(&store, Some(SubjectRef::from(&*caller.identity)), &request);
    draft.decided(&decision, &store.version);
    draft.detail = Some(crate::audit::record::cap(
        &format!("audit export {query}"),
        "detail",
        &mut draft.truncated,
    ));
    if !decision.allowed {
        tracing::info!(
            rule = decision.rule.as_deref().unwrap_or("-"),
            "audit export denied by policy"
        );
        return Ok(authorize::forbidden(&parts, &decision, ctx));
    }
    let (filter, format) = Filter::from_query(query).map_err(ProxyError::BadQuery)?;
    let permit = exports
        .slot
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::ExportBusy)?;

    // The export is on record before anything of the log leaves.
    super::audit::write_first(log, draft, arrival, "an audit export").await?;

    let dir = audit.dir.clone();
    let key_file = audit.signing_key_file.clone();
    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        run(dir, key_file, &filter, format, tx);
    });
    drop(job);

    // The first message tells whether the export could start at all (no files, unreadable
    // directory): that is still a plain error answer.
    let first = match rx.recv().await {
        Some(Streamed::Fail(why)) => return Err(ProxyError::ExportFailed(why)),
        Some(first) => first,
        None => return Err(ProxyError::ExportFailed("the export stopped".into())),
    };
    let mut resp = Response::new(ResponseBody::channel(first, rx));
    *resp.status_mut() = StatusCode::OK;
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8; header=present", "csv"),
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"gatehouse-audit.{extension}\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    Ok(resp)
}

/// The export itself, on a blocking thread: chunks go to `tx`, then the summary line, or why
/// it failed.
fn run(
    dir: PathBuf,
    key_file: Option<PathBuf>,
    filter: &Filter,
    format: Format,
    tx: mpsc::Sender<Streamed>,
) {
    let public = match key_file.as_deref().map(checkpoint::load_public_key) {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            let _ = tx.blocking_send(Streamed::Fail(format!("the signing key: {e}")));
            return;
        }
        None => None,
    };
    let mut out = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
    };
    let result = export::export(
        &[dir],
        filter,
        format,
        public.as_deref(),
        &mut out,
        &mut |_| {},
    )
    .and_then(|summary| {
        out.flush().map_err(export::ExportError::Write)?;
        Ok(summary)
    });
    let last = match result {
        Ok(summary) if summary.chain_ok() => {
            let mut line = summary.to_string();
            for note in &summary.notes {
                line.push_str("; note: ");
                line.push_str(note);
            }
            Streamed::End(line)
        }
        Ok(summary) => {
            tracing::error!(summary = %summary, "audit export: the chain does not verify");
            Streamed::Fail(summary.to_string())
        }
        Err(e) => Streamed::Fail(e.to_string()),
    };
    let _ = tx.blocking_send(last);
}

/// Hands the export's output to the connection in chunks; fails once the client has gone,
/// which stops the export.
struct ChannelWriter {
    tx: mpsc::Sender<Streamed>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Streamed::Data(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
