//! Deployment markers: Lightstep draws one where a service's `service.version` changes, and
//! has no API to write them, so when a push lands on a service's deploy branch (or a tag or
//! release is created in its repository) the gateway emits a span on behalf of that service
//! carrying the new SHA as its version. Only services mapped in `[[attribution.services]]`
//! with an `environment` get markers; a push that deletes the branch gets none.

use std::sync::Arc;
use std::time::SystemTime;

use super::{AttributionConfig, ServiceMapping};
use crate::telemetry::trace_context::{new_span_id, new_trace_id};
use crate::telemetry::traces::{AttrValue, SpanKind, SpanRecord, SpanStatus};
use crate::webhook::store::{Marker, Pusher};

/// What a delivery changed that may be a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub repo: String,
    /// `refs/heads/main`, `refs/tags/v1.2.0`.
    pub git_ref: String,
    pub sha: String,
    /// `push`, `tag` or `release`.
    pub trigger: &'static str,
}

/// The changes of one delivery: the pushed ref, and tags or releases with a known SHA.
pub fn changes(
    repo: &str,
    push: Option<&(String, String, String)>,
    markers: &[Marker],
) -> Vec<Change> {
    let mut out = Vec::new();
    if let Some((git_ref, _, after)) = push
        && !after.is_empty()
        && !after.bytes().all(|b| b == b'0')
    {
        out.push(Change {
            repo: repo.to_string(),
            git_ref: git_ref.clone(),
            sha: after.clone(),
            trigger: "push",
        });
    }
    for m in markers {
        if let Some(sha) = &m.sha {
            out.push(Change {
                repo: m.repo.clone(),
                git_ref: format!("refs/tags/{}", m.name),
                sha: sha.clone(),
                trigger: if m.kind == "release" {
                    "release"
                } else {
                    "tag"
                },
            });
        }
    }
    out
}

fn deploys(m: &ServiceMapping, c: &Change) -> bool {
    m.environment.is_some()
        && m.repo.eq_ignore_ascii_case(&c.repo)
        && (c.trigger != "push" || m.git_ref == c.git_ref)
}

/// One marker span per mapped service each change deploys.
pub fn marker_spans(
    config: &AttributionConfig,
    changes: &[Change],
    pusher: Option<&Pusher>,
    delivery: &str,
) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for c in changes {
        for m in config.services.iter().filter(|m| deploys(m, c)) {
            let env = m.environment.clone().unwrap_or_default();
            let ref_name = c
                .git_ref
                .strip_prefix("refs/heads/")
                .or_else(|| c.git_ref.strip_prefix("refs/tags/"))
                .unwrap_or(&c.git_ref)
                .to_string();
            let resource: Vec<(String, AttrValue)> = vec![
                ("service.name".into(), m.service.as_str().into()),
                ("service.version".into(), c.sha.as_str().into()),
                ("deployment.environment.name".into(), env.as_str().into()),
                ("vcs.ref.head.revision".into(), c.sha.as_str().into()),
                ("vcs.repository.name".into(), c.repo.as_str().into()),
                ("vcs.provider.name".into(), "gogs".into()),
            ];
            let mut attributes: Vec<(String, AttrValue)> = vec![
                ("deployment.environment.name".into(), env.as_str().into()),
                ("vcs.ref.head.name".into(), ref_name.into()),
                ("vcs.ref.head.revision".into(), c.sha.as_str().into()),
                ("gatehouse.deployment.trigger".into(), c.trigger.into()),
                ("gatehouse.webhook.delivery".into(), delivery.into()),
            ];
            if let Some(p) = pusher {
                attributes.push(("gatehouse.push.verified_pusher".into(), p.name().into()));
            }
            let now = SystemTime::now();
            out.push(SpanRecord {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent_span_id: None,
                name: format!("deploy {}", m.service),
                kind: SpanKind::Internal,
                start: now,
                end: now,
                status: SpanStatus::Unset,
                attributes,
                resource: Some(Arc::new(resource)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AttributionConfig {
        AttributionConfig {
            services: vec![
                ServiceMapping {
                    service: "checkout".into(),
                    repo: "platform/checkout".into(),
                    git_ref: "refs/heads/main".into(),
                    environment: Some("production".into()),
                },
                ServiceMapping {
                    service: "checkout-worker".into(),
                    repo: "platform/checkout".into(),
                    git_ref: "refs/heads/main".into(),
                    environment: Some("production".into()),
                },
                ServiceMapping {
                    service: "cart".into(),
                    repo: "platform/cart".into(),
                    git_ref: "refs/heads/main".into(),
                    environment: None,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_push_to_the_deploy_branch_marks_every_service_built_from_it() {
        let sha = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";
        let push = (
            "refs/heads/main".to_string(),
            "0".repeat(40),
            sha.to_string(),
        );
        let c = changes("Platform/Checkout", Some(&push), &[]);
        let pusher = Pusher {
            subject: "s".into(),
            username: Some("bob".into()),
            email: None,
        };
        let spans = marker_spans(&config(), &c, Some(&pusher), "d-1");
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["deploy checkout", "deploy checkout-worker"]);
        let r = spans[0].resource.as_ref().unwrap();
        assert!(r.contains(&("service.version".into(), sha.into())));
        assert!(r.contains(&("deployment.environment.name".into(), "production".into())));
        assert!(
            spans[0]
                .attributes
                .contains(&("gatehouse.push.verified_pusher".into(), "bob".into()))
        );
    }

    #[test]
    fn other_branches_deletions_and_unmapped_environments_mark_nothing() {
        let sha = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";
        let feature = (
            "refs/heads/feature".to_string(),
            "0".repeat(40),
            sha.to_string(),
        );
        assert!(
            marker_spans(
                &config(),
                &changes("platform/checkout", Some(&feature), &[]),
                None,
                "d"
            )
            .is_empty()
        );
        let deleted = (
            "refs/heads/main".to_string(),
            sha.to_string(),
            "0".repeat(40),
        );
        assert!(
            marker_spans(
                &config(),
                &changes("platform/checkout", Some(&deleted), &[]),
                None,
                "d"
            )
            .is_empty()
        );
        let cart = (
            "refs/heads/main".to_string(),
            "0".repeat(40),
            sha.to_string(),
        );
        assert!(
            marker_spans(
                &config(),
                &changes("platform/cart", Some(&cart), &[]),
                None,
                "d"
            )
            .is_empty()
        );
    }

    #[test]
    fn tags_and_releases_with_a_known_sha_mark_the_repositorys_services() {
        let sha = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";
        let markers = [
            Marker {
                repo: "platform/checkout".into(),
                name: "v1.2.0".into(),
                kind: "tag".into(),
                sha: Some(sha.into()),
            },
            Marker {
                repo: "platform/checkout".into(),
                name: "v1.3.0".into(),
                kind: "release".into(),
                sha: None,
            },
        ];
        let spans = marker_spans(
            &config(),
            &changes("platform/checkout", None, &markers),
            None,
            "d",
        );
        assert_eq!(spans.len(), 2);
        assert!(
            spans[0]
                .attributes
                .contains(&("vcs.ref.head.name".into(), "v1.2.0".into()))
        );
        assert!(
            spans[0]
                .attributes
                .contains(&("gatehouse.deployment.trigger".into(), "tag".into()))
        );
    }
}
