//! The few HTML pages the gateway shows people itself. Every value is escaped.

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}\
button{{font-size:1em;padding:.4em 1.2em}}code{{background:#eee;padding:0 .2em}}</style></head>\
<body><h1>{title}</h1>{body}</body></html>\n",
        title = escape(title)
    )
}

/// Asks for confirmation before signing out (the form posts back with a CSRF token).
pub fn logout_form(who: &str, csrf: &str) -> String {
    page(
        "Sign out",
        &format!(
            "<p>Signed in as <strong>{}</strong>.</p><form method=\"post\" action=\"/.gatehouse/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"signout\">Sign out</button></form>",
            escape(who),
            escape(csrf)
        ),
    )
}

/// A request the policy refused: which rule, and the id to quote when asking for access.
pub fn forbidden(reason: &str, rule: &str, request_id: &str) -> String {
    page(
        "Access denied",
        &format!(
            "<p>{}</p><p>Rule: <code>{}</code></p><p>If you need access, ask your security team and quote the request id <code>{}</code>.</p>",
            escape(reason),
            escape(rule),
            escape(request_id)
        ),
    )
}

pub fn signed_out() -> String {
    page(
        "Signed out",
        "<p>You are signed out.</p><p><a href=\"/\">Sign in again</a></p>",
    )
}

/// A failed sign-in: what went wrong and the request id to quote.
pub fn login_failed(reason: &str, request_id: &str) -> String {
    page(
        "Sign-in failed",
        &format!(
            "<p>{}</p><p><a href=\"/\">Try again</a></p><p>Request id: <code>{}</code></p>",
            escape(reason),
            escape(request_id)
        ),
    )
}

/// The provider is needed and cannot be reached.
pub fn unavailable(reason: &str, request_id: &str) -> String {
    page(
        "Sign-in is unavailable",
        &format!(
            "<p>The identity provider cannot be reached right now, so you cannot be signed in. Please try again in a minute.</p>\
<p>{}</p><p>Request id: <code>{}</code></p>",
            escape(reason),
            escape(request_id)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        let html = login_failed("<script>alert(1)</script>\" onload=\"x", "id\n<b>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("\" onload"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("id\n"));
        let form = logout_form("Mallory<script>", "tok\"en");
        assert!(form.contains("Mallory&lt;script&gt;") && form.contains("tok&quot;en"));
    }
}
