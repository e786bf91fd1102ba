//! Command-line sign-in for git and other tools.
//!
//! `gatehouse login --gateway https://git.example.com` runs the OAuth 2.0 device
//! authorization grant (RFC 8628) against the gateway's provider, using what the gateway
//! publishes at `/.gatehouse/cli.json`, and stores the tokens (see [`store`]).
//! `gatehouse git-credential get|store|erase` speaks git's credential-helper protocol with
//! those tokens, refreshing them when they are about to expire, so that
//! `git config --global credential.https://git.example.com.helper "!gatehouse git-credential"`
//! makes `git clone` just work.

pub mod audit;
pub mod store;
pub mod webhooks;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use http::header;
use serde_json::Value;

use crate::identity::oidc::percent_encode;
use crate::identity::outbound::Outbound;
use crate::identity::session::now;
use store::{Entry, Store};

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
    #[error("{}: {message}", path.display())]
    Store { path: PathBuf, message: String },
    #[error("not a gateway URL: {0}")]
    BadGateway(String),
    #[error("{0}")]
    Http(String),
    #[error("sign-in was not completed: {0}")]
    Denied(String),
    #[error("the sign-in code expired before it was used; run `gatehouse login` again")]
    Expired,
}

fn client(ca_file: Option<&std::path::Path>) -> Result<Outbound, CliError> {
    Outbound::new(ca_file, "gatehouse login").map_err(|e| CliError::Http(e.to_string()))
}

async fn get_json(http: &Outbound, url: &str) -> Result<Value, CliError> {
    http.get_json(url)
        .await
        .map_err(|e| CliError::Http(e.to_string()))
}

/// POSTs a form and returns (status, JSON body).
async fn post_form(
    http: &Outbound,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Value), CliError> {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let req = http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body.join("&").into_bytes())
        .map_err(|e| CliError::Http(e.to_string()))?;
    let resp = http
        .send(req)
        .await
        .map_err(|e| CliError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let json = serde_json::from_slice(resp.body())
        .map_err(|_| CliError::Http(format!("{url} answered {status} without JSON")))?;
    Ok((status, json))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Runs the device grant and stores the tokens. Progress goes to `out` (the verification
/// URL on its own line starting with `Open `, so scripts can find it).
pub async fn login(
    gateway: &str,
    ca_file: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let origin = store::origin(gateway)?;
    let http = client(ca_file)?;
    let cli = get_json(&http, &format!("{origin}/.gatehouse/cli.json")).await?;
    let issuer =
        text(&cli, "issuer").ok_or_else(|| CliError::Http("cli.json has no issuer".into()))?;
    let client_id = text(&cli, "client_id")
        .ok_or_else(|| CliError::Http("cli.json has no client_id".into()))?;
    let scopes: Vec<String> = cli
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let discovery = get_json(
        &http,
        &format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ),
    )
    .await?;
    let device_endpoint = text(&discovery, "device_authorization_endpoint").ok_or_else(|| {
        CliError::Http("the provider does not support the device authorization grant".into())
    })?;
    let token_endpoint = text(&discovery, "token_endpoint")
        .ok_or_else(|| CliError::Http("the provider has no token endpoint".into()))?;

    let scope = scopes.join(" ");
    let (status, grant) = post_form(
        &http,
        &device_endpoint,
        &[("client_id", &client_id), ("scope", &scope)],
    )
    .await?;
    if status != 200 {
        return Err(CliError::Http(format!(
            "device authorization failed ({status}): {grant}"
        )));
    }
    let device_code =
        text(&grant, "device_code").ok_or_else(|| CliError::Http("no device_code".into()))?;
    let user_code = text(&grant, "user_code").unwrap_or_default();
    let verification = text(&grant, "verification_uri_complete")
        .or_else(|| text(&grant, "verification_uri"))
        .unwrap_or_default();
    let mut interval = grant
        .get("interval")
        .and_then(Value::as_u64)
        .unwrap_or(5)
        .max(1);
    let deadline = now()
        + grant
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(600);
    let _ = writeln!(out, "To sign in to {origin}:");
    let _ = writeln!(out, "Open {verification}");
    let _ = writeln!(out, "and confirm the code {user_code}. Waiting...");
    let _ = out.flush();

    loop {
        if now() > deadline {
            return Err(CliError::Expired);
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let (status, tokens) = post_form(
            &http,
            &token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", &client_id),
            ],
        )
        .await?;
        if status == 200 {
            let entry = Entry {
                issuer,
                client_id,
                token_endpoint,
                access_token: text(&tokens, "access_token"),
                refresh_token: text(&tokens, "refresh_token"),
                expires_at: now()
                    + tokens
                        .get("expires_in")
                        .and_then(Value::as_u64)
                        .unwrap_or(300),
            };
            let mut store = Store::load()?;
            store.gateways.insert(origin.clone(), entry);
            store.save()?;
            let _ = writeln!(
                out,
                "Signed in. Tokens stored in {}.",
                store::path()?.display()
            );
            return Ok(());
        }
        match text(&tokens, "error").as_deref() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some("expired_token") => return Err(CliError::Expired),
            Some(other) => {
                return Err(CliError::Denied(
                    format!(
                        "{other} {}",
                        text(&tokens, "error_description").unwrap_or_default()
                    )
                    .trim()
                    .to_string(),
                ));
            }
            None => return Err(CliError::Http(format!("token endpoint answered {status}"))),
        }
    }
}

/// Refreshes an entry's tokens when the access token is (nearly) expired.
async fn fresh(entry: &mut Entry, http: &Outbound) -> Result<bool, CliError> {
    if entry.access_token.is_some() && entry.expires_at > now() + REFRESH_MARGIN {
        return Ok(false);
    }
    let Some(refresh) = entry.refresh_token.clone() else {
        return Err(CliError::Denied(
            "the stored sign-in has expired; run `gatehouse login`".into(),
        ));
    };
    let (status, tokens) = post_form(
        http,
        &entry.token_endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &entry.client_id),
        ],
    )
    .await?;
    if status != 200 {
        entry.access_token = None;
        entry.refresh_token = None;
        return Err(CliError::Denied(format!(
            "refresh refused ({}); run `gatehouse login`",
            text(&tokens, "error").unwrap_or_default()
        )));
    }
    entry.access_token = text(&tokens, "access_token");
    if let Some(r) = text(&tokens, "refresh_token") {
        entry.refresh_token = Some(r);
    }
    entry.expires_at = now()
        + tokens
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300);
    Ok(true)
}

/// git's credential-helper protocol (`git help credential`): `get` prints a username and the
/// access token as password for a gateway the user signed in to (nothing otherwise, so git
/// falls back to its other helpers); `erase` forgets a token git found refused; `store` is
/// ignored (the tokens came from here).
pub async fn git_credential(
    operation: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    ca_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let mut fields = std::collections::HashMap::new();
    let mut line = String::new();
    while input
        .read_line(&mut line)
        .map_err(|e| CliError::Http(e.to_string()))?
        > 0
    {
        let l = line.trim_end_matches(['\n', '\r']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
        line.clear();
    }
    if fields.get("protocol").map(String::as_str) != Some("https") {
        return Ok(());
    }
    let Some(host) = fields.get("host") else {
        return Ok(());
    };
    let origin = store::origin(host)?;
    let mut store = Store::load()?;
    let Some(entry) = store.gateways.get_mut(&origin) else {
        return Ok(());
    };
    match operation {
        "get" => {
            let http = client(ca_file)?;
            let refreshed = fresh(entry, &http).await;
            let changed = matches!(refreshed, Ok(true)) || refreshed.is_err();
            if changed {
                store.save()?;
            }
            refreshed?;
            let Some(entry) = store.gateways.get(&origin) else {
                return Ok(());
            };
            if let Some(token) = &entry.access_token {
                let _ = writeln!(out, "username=gatehouse");
                let _ = writeln!(out, "password={token}");
                let _ = writeln!(out, "password_expiry_utc={}", entry.expires_at);
            }
            Ok(())
        }
        "erase" => {
            if fields
                .get("password")
                .is_some_and(|p| Some(p) == entry.access_token.as_ref())
            {
                entry.access_token = None;
                entry.expires_at = 0;
                store.save()?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
