//! The `[attribution]` section: whether OTLP exports are enriched with commit attributes,
//! whether the sender's own values may be replaced, and which services map to which
//! repository branch (for resources without a version, and for deployment markers).

use toml::Spanned;

use super::Validator;
use super::file::FileAttribution;
use crate::attribution::{AttributionConfig, ServiceMapping};

impl Validator<'_> {
    /// `has_store`: whether `[webhooks]` is configured (the commits come from its store).
    pub(super) fn attribution(
        &mut self,
        a: Option<&Spanned<FileAttribution>>,
        has_store: bool,
    ) -> AttributionConfig {
        let Some(spanned) = a else {
            return AttributionConfig::default();
        };
        let a = spanned.get_ref();
        let enrich = a.enrich.unwrap_or(true);
        if !has_store && (enrich || !a.services.is_empty()) {
            self.report(
                spanned,
                "attribution",
                "needs [webhooks]: commits are known from the push webhooks it records",
            );
        }
        let mut services: Vec<ServiceMapping> = Vec::new();
        for (i, s) in a.services.iter().enumerate() {
            let key = format!("attribution.services[{i}]");
            let service = s.service.get_ref().trim().to_string();
            if service.is_empty() {
                self.report(&s.service, &format!("{key}.service"), "must not be empty");
            }
            if services.iter().any(|o| o.service == service) {
                self.report(
                    &s.service,
                    &format!("{key}.service"),
                    format!("service {service:?} is mapped twice"),
                );
            }
            let repo = s.repository.get_ref();
            let valid_repo = matches!(repo.split_once('/'), Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/'))
                && !repo.contains(char::is_whitespace);
            if !valid_repo {
                self.report(
                    &s.repository,
                    &format!("{key}.repository"),
                    format!("{repo:?} is not owner/name"),
                );
            }
            let branch = s.branch.as_ref().map_or("master", |b| b.get_ref().as_str());
            if let Some(b) = &s.branch
                && (branch.is_empty()
                    || branch.starts_with("refs/")
                    || branch.contains(char::is_whitespace))
            {
                self.report(
                    b,
                    &format!("{key}.branch"),
                    format!(
                        "{branch:?} is not a branch name (give \"main\", not \"refs/heads/main\")"
                    ),
                );
            }
            let environment = match &s.environment {
                Some(e) if e.get_ref().trim().is_empty() => {
                    self.report(e, &format!("{key}.environment"), "must not be empty");
                    None
                }
                Some(e) => Some(e.get_ref().clone()),
                None => None,
            };
            services.push(ServiceMapping {
                service,
                repo: repo.clone(),
                git_ref: format!("refs/heads/{branch}"),
                environment,
            });
        }
        AttributionConfig {
            enrich,
            overwrite: a.overwrite.unwrap_or(false),
            services,
        }
    }
}
