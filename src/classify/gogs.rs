//! What a request to Gogs is (web page, API call, git fetch, git push) and which repository
//! it touches, decided from the method, path and query alone.
//!
//! The rules follow Gogs's own routing so that policy and Gogs agree on what a request does:
//!
//! - git smart HTTP, dumb HTTP and LFS routes: `cmd/gogs/internal/web/web.go` ("HTTP Git
//!   routes") and `internal/route/repo/http.go` (`HTTPContexter`, `HTTP`, `getServiceType`);
//! - LFS access modes: `internal/route/lfs/route.go` (`RegisterRoutes`);
//! - reserved top-level names: `internal/database/users.go` (`reservedUsernames`) plus the
//!   route prefixes `web.go` registers ahead of `/:username/:reponame`.
//!
//! Where Gogs is lenient the classifier is at least as lenient, so a spelling Gogs would
//! serve as a push is never seen here as something milder: route literals (`info/refs`,
//! `git-receive-pack`, `api`, ...) match ASCII case-insensitively (Gogs lower-cases the path
//! before matching git routes), every segment is percent-decoded once before matching
//! (Go's `net/http` decodes `%2D` in `git%2Dreceive-pack`), the `service` query parameter
//! is percent-decoded and any occurrence of `git-receive-pack` counts, and an unexpected
//! method on a git path is treated as a push (Gogs itself demands write access for every
//! git request that is neither `GET` nor `git-upload-pack`).

use http::Method;

/// The broad kind of a Gogs request, which decides the policy that applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GogsKind {
    /// Browser UI (HTML pages, forms, assets).
    Web,
    /// The JSON API under `/api`.
    Api,
    /// Reads repository content over git (smart or dumb HTTP, LFS downloads).
    GitFetch,
    /// Writes repository content over git (receive-pack, LFS uploads).
    GitPush,
}

/// A repository as Gogs resolves it: lower-cased, because Gogs looks names up by their
/// lower-case form, and without the `.git` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
}

impl RepoRef {
    /// `owner/name`, the form policies and audit records use.
    pub fn full(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// The classification of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GogsRequest {
    pub kind: GogsKind,
    pub repo: Option<RepoRef>,
    /// A git request for the repository's wiki (`/o/r.wiki.git/...`). Gogs authorises it as
    /// `o/r`, so `repo` names `o/r`; the wiki's branches are not the code's branches.
    pub wiki: bool,
}

/// First path segments Gogs never treats as an owner, so `/<name>/<x>` has no repository.
///
/// From `internal/database/users.go` (`reservedUsernames`: names nobody can register,
/// hence names that own no repository) and, after them, the top-level route prefixes
/// `cmd/gogs/internal/web/web.go` serves before `/:username/:reponame` (static avatars,
/// captcha, attachments, health check). Gogs does not refuse those last five as user
/// names, so a user so named would have repository pages classified without a repository.
const RESERVED_TOP_LEVEL: &[&str] = &[
    // internal/database/users.go reservedUsernames
    "-",
    "explore",
    "create",
    "assets",
    "css",
    "img",
    "js",
    "less",
    "plugins",
    "debug",
    "raw",
    "install",
    "api",
    "avatar",
    "user",
    "org",
    "help",
    "stars",
    "issues",
    "pulls",
    "commits",
    "repo",
    "template",
    "admin",
    "new",
    // web.go route prefixes registered ahead of /:username/:reponame
    "avatars",
    "repo-avatars",
    "captcha",
    "attachments",
    "healthcheck",
];

/// Classifies a request by method, origin-form path (without query) and raw query.
///
/// Pure and total: any input gives an answer. Paths are expected to have passed
/// [`crate::proxy::path::check_path`]; other input is classified but not meaningfully.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> GogsRequest {
    let segments = split_segments(path);
    let seg = |i: usize| segments.get(i).map(String::as_str);

    if seg(0).is_some_and(|s| eq(s, "api")) {
        let repo = match (seg(1), seg(2), seg(3), seg(4)) {
            (Some(v1), Some(repos), Some(owner), Some(name))
                if eq(v1, "v1") && eq(repos, "repos") =>
            {
                repo_ref(owner, name)
            }
            _ => None,
        };
        return GogsRequest {
            kind: GogsKind::Api,
            repo,
            wiki: false,
        };
    }

    if let (Some(owner), Some(name)) = (seg(0), seg(1))
        && let Some(kind) = git_kind(method, &segments[2..], query)
    {
        let (repo, wiki) = match repo_ref(owner, name) {
            Some(mut repo) => {
                // Gogs's HTTPContexter trims ".git" then ".wiki" and authorises the result.
                let wiki = repo.name.len() > ".wiki".len() && repo.name.ends_with(".wiki");
                if wiki {
                    repo.name.truncate(repo.name.len() - ".wiki".len());
                }
                (Some(repo), wiki)
            }
            None => (None, false),
        };
        return GogsRequest { kind, repo, wiki };
    }

    let repo = match (seg(0), seg(1)) {
        (Some(owner), Some(name)) if !web_route_without_repo(owner, name) => repo_ref(owner, name),
        _ => None,
    };
    GogsRequest {
        kind: GogsKind::Web,
        repo,
        wiki: false,
    }
}

/// Whether the request is the `git-receive-pack` RPC, whose body starts with the ref-update
/// commands, spelled any way Gogs would route it (`git%2Dreceive-pack`, any case, a trailing
/// slash). Deciding this from the raw path would let another spelling push unread refs.
pub fn is_receive_pack_rpc(path: &str) -> bool {
    split_segments(path)
        .last()
        .is_some_and(|s| eq(s, "git-receive-pack"))
}

/// Percent-decoded path segments, ignoring one trailing slash (Gogs's router does too).
fn split_segments(path: &str) -> Vec<String> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        return Vec::new();
    }
    p.split('/').map(percent_decode).collect()
}

/// The git operation a path below `/:owner/:repo/` asks for, if it is a git route.
fn git_kind(method: &Method, rest: &[String], query: Option<&str>) -> Option<GogsKind> {
    let reads = is_read_method(method);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        [info, refs] if eq(info, "info") && eq(refs, "refs") => {
            // `?service=` decides; none (or any other value) is the dumb protocol, a read.
            Some(if reads && !asks_receive_pack(query) {
                GogsKind::GitFetch
            } else {
                GogsKind::GitPush
            })
        }
        [svc] if eq(svc, "git-upload-pack") => Some(GogsKind::GitFetch),
        [svc] if eq(svc, "git-receive-pack") => Some(GogsKind::GitPush),
        [head] if eq(head, "HEAD") => Some(read_or_push(reads)),
        [objects, _, ..] if eq(objects, "objects") => Some(read_or_push(reads)),
        [info, lfs, lfs_rest @ ..] if eq(info, "info") && eq(lfs, "lfs") => {
            Some(lfs_kind(method, lfs_rest))
        }
        _ => None,
    }
}

/// Git LFS below `info/lfs/`. Gogs demands write access for `PUT objects/basic/:oid` and
/// `POST objects/basic/verify`, read access for the rest. A batch request announcing an
/// upload is only a read: the bytes arrive later by `PUT`, which is where an upload is
/// authorised.
fn lfs_kind(method: &Method, rest: &[&str]) -> GogsKind {
    if is_read_method(method) {
        return GogsKind::GitFetch;
    }
    let is_batch = matches!(rest, [objects, batch] if eq(objects, "objects") && eq(batch, "batch"));
    if *method == Method::POST && is_batch {
        GogsKind::GitFetch
    } else {
        GogsKind::GitPush
    }
}

fn read_or_push(reads: bool) -> GogsKind {
    if reads {
        GogsKind::GitFetch
    } else {
        GogsKind::GitPush
    }
}

/// Methods that cannot change a git repository (OPTIONS is the CORS preflight Gogs answers).
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// Whether any `service` parameter asks for `git-receive-pack`. Gogs reads the first one
/// only; counting any is the stricter reading.
fn asks_receive_pack(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        form_decode(key).eq_ignore_ascii_case("service")
            && form_decode(value).eq_ignore_ascii_case("git-receive-pack")
    })
}

/// Web paths whose first two segments are a Gogs route rather than `owner/repo`.
fn web_route_without_repo(owner: &str, name: &str) -> bool {
    let owner = owner.to_lowercase();
    RESERVED_TOP_LEVEL.contains(&owner.as_str())
        || (owner == "releases" && name.eq_ignore_ascii_case("attachments"))
}

/// Builds the lower-cased reference, dropping one `.git` suffix; `None` for names Gogs could
/// never resolve (empty, dot segments, embedded separators).
fn repo_ref(owner: &str, name: &str) -> Option<RepoRef> {
    let owner = owner.to_lowercase();
    let mut name = name.to_lowercase();
    if name.len() > ".git".len() && name.ends_with(".git") {
        name.truncate(name.len() - ".git".len());
    }
    let plausible = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']);
    (plausible(&owner) && plausible(&name)).then_some(RepoRef { owner, name })
}

/// ASCII case-insensitive equality for route literals.
fn eq(segment: &str, literal: &str) -> bool {
    segment.eq_ignore_ascii_case(literal)
}

/// Decodes `%XX` once; a malformed escape stays literal. Invalid UTF-8 becomes U+FFFD.
fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// Query-string decoding as Go's `url.QueryUnescape` does it: `+` is a space.
fn form_decode(s: &str) -> String {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi << 4) | lo);
                    i += 3;
                } else {
                    out.push(b);
                    i += 1;
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::GogsKind::{Api, GitFetch, GitPush, Web};
    use super::*;

    fn repo(full: &str) -> Option<RepoRef> {
        let (owner, name) = full.split_once('/').expect("owner/name");
        Some(RepoRef {
            owner: owner.into(),
            name: name.into(),
        })
    }

    #[test]
    fn every_spelling_of_the_receive_pack_rpc_is_recognised() {
        for path in [
            "/o/r.git/git-receive-pack",
            "/o/r/git-receive-pack",
            "/o/r.git/git%2Dreceive-pack",
            "/o/r.git/git%2dreceive%2Dpack",
            "/o/r.git/GIT-RECEIVE-PACK",
            "/o/r.git/git-receive-pack/",
            "/o/r.wiki.git/Git-Receive-Pack",
        ] {
            assert!(is_receive_pack_rpc(path), "{path}");
            // The classifier and the command reader agree: every such POST is a push.
            assert_eq!(classify(&Method::POST, path, None).kind, GitPush, "{path}");
        }
        for path in [
            "/o/r.git/git-upload-pack",
            "/o/r.git/info/refs",
            "/o/r.git/git-receive-pack.x",
            "/o/r.git/git-receive-pack//",
        ] {
            assert!(!is_receive_pack_rpc(path), "{path}");
        }
    }

    /// (method, path, query, kind, repo as "owner/name" or "")
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        GogsKind,
        &'static str,
    );

    fn check(cases: &[Case]) {
        for &(method, path, query, kind, want_repo) in cases {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let got = classify(&method, path, query);
            let want = if want_repo.is_empty() {
                None
            } else {
                repo(want_repo)
            };
            assert_eq!(
                (got.kind, got.repo),
                (kind, want),
                "{method} {path} ?{query:?}"
            );
        }
    }

    #[test]
    fn smart_http_advertisement_is_decided_by_the_service_parameter() {
        check(&[
            (
                "GET",
                "/o/r.git/info/refs",
                Some("service=git-upload-pack"),
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r.git/info/refs",
                Some("service=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git-upload-pack"),
                GitFetch,
                "o/r",
            ),
            // No service: dumb protocol, a read.
            ("GET", "/o/r.git/info/refs", None, GitFetch, "o/r"),
            ("GET", "/o/r.git/info/refs", Some(""), GitFetch, "o/r"),
            (
                "GET",
                "/o/r.git/info/refs",
                Some("service=git-upload-archive"),
                GitFetch,
                "o/r",
            ),
            // Other parameters around it.
            (
                "GET",
                "/o/r/info/refs",
                Some("a=1&service=git-receive-pack&b=2"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git-receive-pack&x"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("x=service%3Dgit-receive-pack"),
                GitFetch,
                "o/r",
            ),
            // Any receive-pack occurrence wins, even after an upload-pack one.
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git-upload-pack&service=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            // Encodings and case Gogs (or a laxer upstream) would still read as receive-pack.
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git%2Dreceive%2Dpack"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("%73ervice=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=GIT-RECEIVE-PACK"),
                GitPush,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("SERVICE=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            // Not receive-pack.
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git-receive-pack2"),
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=git+receive-pack"),
                GitFetch,
                "o/r",
            ),
            // Writes to the advertisement are pushes whatever they ask.
            (
                "POST",
                "/o/r/info/refs",
                Some("service=git-upload-pack"),
                GitPush,
                "o/r",
            ),
            (
                "HEAD",
                "/o/r/info/refs",
                Some("service=git-upload-pack"),
                GitFetch,
                "o/r",
            ),
            ("OPTIONS", "/o/r/info/refs", None, GitFetch, "o/r"),
        ]);
    }

    #[test]
    fn smart_http_rpc_endpoints() {
        check(&[
            ("POST", "/o/r.git/git-upload-pack", None, GitFetch, "o/r"),
            ("POST", "/o/r/git-upload-pack", None, GitFetch, "o/r"),
            ("POST", "/o/r.git/git-receive-pack", None, GitPush, "o/r"),
            ("POST", "/o/r/git-receive-pack", None, GitPush, "o/r"),
            // Methods Gogs does not route still name the service.
            ("GET", "/o/r/git-receive-pack", None, GitPush, "o/r"),
            ("OPTIONS", "/o/r/git-receive-pack", None, GitPush, "o/r"),
            ("PUT", "/o/r/git-upload-pack", None, GitFetch, "o/r"),
            // Case and percent-encoding cannot hide a push.
            ("POST", "/o/r/GIT-RECEIVE-PACK", None, GitPush, "o/r"),
            ("POST", "/o/r/git%2Dreceive-pack", None, GitPush, "o/r"),
            ("POST", "/o/r/%67it-receive-pack", None, GitPush, "o/r"),
            (
                "GET",
                "/o/r/%69nfo/refs",
                Some("service=git-receive-pack"),
                GitPush,
                "o/r",
            ),
        ]);
    }

    #[test]
    fn dumb_protocol_reads_and_writes() {
        check(&[
            ("GET", "/o/r.git/HEAD", None, GitFetch, "o/r"),
            ("GET", "/o/r/HEAD", None, GitFetch, "o/r"),
            ("GET", "/o/r.git/objects/info/packs", None, GitFetch, "o/r"),
            (
                "GET",
                "/o/r.git/objects/info/alternates",
                None,
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r.git/objects/info/http-alternates",
                None,
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r.git/objects/ab/cdef0123456789abcdef0123456789abcdef01",
                None,
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r.git/objects/pack/pack-0123456789abcdef0123456789abcdef01234567.pack",
                None,
                GitFetch,
                "o/r",
            ),
            (
                "GET",
                "/o/r.git/objects/pack/pack-0123456789abcdef0123456789abcdef01234567.idx",
                None,
                GitFetch,
                "o/r",
            ),
            ("HEAD", "/o/r.git/objects/info/packs", None, GitFetch, "o/r"),
            // WebDAV-style writes (dumb push) are pushes.
            ("PUT", "/o/r.git/objects/ab/cd", None, GitPush, "o/r"),
            ("MKCOL", "/o/r.git/objects/ab", None, GitPush, "o/r"),
            ("DELETE", "/o/r.git/HEAD", None, GitPush, "o/r"),
        ]);
    }

    #[test]
    fn lfs_uploads_are_pushes_and_the_rest_fetches() {
        let oid = "/o/r.git/info/lfs/objects/basic/\
                   2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        check(&[
            (
                "POST",
                "/o/r.git/info/lfs/objects/batch",
                None,
                GitFetch,
                "o/r",
            ),
            ("POST", "/o/r/info/lfs/objects/batch", None, GitFetch, "o/r"),
            ("GET", oid, None, GitFetch, "o/r"),
            ("PUT", oid, None, GitPush, "o/r"),
            // Gogs authorises verify with write access.
            (
                "POST",
                "/o/r.git/info/lfs/objects/basic/verify",
                None,
                GitPush,
                "o/r",
            ),
            // Unknown LFS writes (e.g. locks, which Gogs lacks) are treated as pushes.
            ("POST", "/o/r.git/info/lfs/locks", None, GitPush, "o/r"),
            ("DELETE", oid, None, GitPush, "o/r"),
            ("GET", "/o/r.git/info/lfs/locks", None, GitFetch, "o/r"),
            (
                "PUT",
                "/O/R.GIT/INFO/LFS/objects/basic/x",
                None,
                GitPush,
                "o/r",
            ),
        ]);
    }

    #[test]
    fn repository_names_are_normalised() {
        check(&[
            (
                "GET",
                "/Owner/Repo.git/info/refs",
                Some("service=git-upload-pack"),
                GitFetch,
                "owner/repo",
            ),
            (
                "POST",
                "/OWNER/REPO.GIT/git-receive-pack",
                None,
                GitPush,
                "owner/repo",
            ),
            // Trailing slash is ignored, as Gogs's router ignores it.
            ("POST", "/o/r.git/git-receive-pack/", None, GitPush, "o/r"),
            (
                "GET",
                "/o/r/info/refs/",
                Some("service=git-receive-pack"),
                GitPush,
                "o/r",
            ),
            ("GET", "/o/r/", None, Web, "o/r"),
            // Only one .git is removed; a bare ".git" name is left alone.
            (
                "POST",
                "/o/r.git.git/git-receive-pack",
                None,
                GitPush,
                "o/r.git",
            ),
            ("POST", "/o/.git/git-receive-pack", None, GitPush, "o/.git"),
            // Percent-decoded once.
            ("GET", "/o%2Dx/r%5Fy/info/refs", None, GitFetch, "o-x/r_y"),
            ("GET", "/o/r%2525/info/refs", None, GitFetch, "o/r%25"),
            ("GET", "/%C3%89ve/r", None, Web, "\u{e9}ve/r"),
            ("GET", "/o/a.b-c_d", None, Web, "o/a.b-c_d"),
        ]);
    }

    #[test]
    fn wiki_repositories_are_authorised_as_their_repository() {
        let got = classify(&Method::POST, "/o/r.wiki.git/git-receive-pack", None);
        assert_eq!((got.kind, got.repo, got.wiki), (GitPush, repo("o/r"), true));
        let got = classify(
            &Method::GET,
            "/o/R.Wiki/info/refs",
            Some("service=git-upload-pack"),
        );
        assert_eq!(
            (got.kind, got.repo, got.wiki),
            (GitFetch, repo("o/r"), true)
        );
        let got = classify(&Method::POST, "/o/r.git/git-receive-pack", None);
        assert!(!got.wiki);
        // A web page of a repository named like a wiki is just that name.
        let got = classify(&Method::GET, "/o/r.wiki", None);
        assert_eq!(
            (got.kind, got.repo, got.wiki),
            (Web, repo("o/r.wiki"), false)
        );
    }

    #[test]
    fn api_paths() {
        check(&[
            ("GET", "/api/v1/repos/o/r", None, Api, "o/r"),
            ("POST", "/api/v1/repos/o/r/hooks", None, Api, "o/r"),
            (
                "GET",
                "/api/v1/repos/O/R/raw/main/README.md",
                None,
                Api,
                "o/r",
            ),
            ("GET", "/api/v1/repos/o/r/contents", None, Api, "o/r"),
            (
                "GET",
                "/api/v1/repos/o/r/archive/main.zip",
                None,
                Api,
                "o/r",
            ),
            ("GET", "/api/v1/repos/o/r/git/trees/abc", None, Api, "o/r"),
            ("GET", "/api/v1/repos/o/r/branches", None, Api, "o/r"),
            ("GET", "/api/v1/repos/o/r/issues", None, Api, "o/r"),
            (
                "DELETE",
                "/api/v1/repos/o/r/collaborators/u",
                None,
                Api,
                "o/r",
            ),
            ("GET", "/api/v1/repos/o/r.git", None, Api, "o/r"),
            ("GET", "/api/v1/repos/o/r/", None, Api, "o/r"),
            ("GET", "/API/V1/REPOS/o/r/hooks", None, Api, "o/r"),
            ("GET", "/api/v1/repos/search", Some("q=x"), Api, ""),
            ("POST", "/api/v1/repos/migrate", None, Api, ""),
            ("GET", "/api/v1/repos", None, Api, ""),
            ("GET", "/api/v1/users/search", None, Api, ""),
            ("GET", "/api/v1/users/u", None, Api, ""),
            ("GET", "/api/v1/user", None, Api, ""),
            ("GET", "/api/v1/user/repos", None, Api, ""),
            ("GET", "/api/v1/orgs/org", None, Api, ""),
            ("POST", "/api/v1/admin/users", None, Api, ""),
            ("POST", "/api/v1/markdown", None, Api, ""),
            ("GET", "/api", None, Api, ""),
            ("GET", "/api/", None, Api, ""),
            ("GET", "/api/v2/repos/o/r", None, Api, ""),
            ("GET", "/api/web/whatever", None, Api, ""),
            // `api` wins over git shapes: Gogs routes /api first.
            ("POST", "/api/v1/git-receive-pack", None, Api, ""),
        ]);
    }

    #[test]
    fn web_paths_and_reserved_names() {
        check(&[
            ("GET", "/", None, Web, ""),
            ("GET", "/o", None, Web, ""),
            ("GET", "/o/", None, Web, ""),
            ("GET", "/o/r", None, Web, "o/r"),
            ("GET", "/o/r.git", None, Web, "o/r"),
            ("GET", "/o/r/src/main/README.md", None, Web, "o/r"),
            ("POST", "/o/r/settings/hooks/gogs/new", None, Web, "o/r"),
            ("GET", "/o/r/issues/1", None, Web, "o/r"),
            ("GET", "/o/r/raw/main/file", None, Web, "o/r"),
            ("GET", "/o/r/archive/main.zip", None, Web, "o/r"),
            // Not git routes, despite the git words in them.
            (
                "GET",
                "/o/r/src/main/info/refs",
                Some("service=git-receive-pack"),
                Web,
                "o/r",
            ),
            ("POST", "/o/r/src/git-receive-pack", None, Web, "o/r"),
            ("GET", "/o/r/objects", None, Web, "o/r"),
            ("GET", "/o/r/info", None, Web, "o/r"),
            ("GET", "/o/r/info/lfs", None, GitFetch, "o/r"),
            (
                "GET",
                "/o/git-receive-pack",
                None,
                Web,
                "o/git-receive-pack",
            ),
            ("GET", "/git-receive-pack", None, Web, ""),
            (
                "GET",
                "/o/info/refs",
                Some("service=git-receive-pack"),
                Web,
                "o/info",
            ),
            // Reserved first segments (users.go and top-level routes).
            ("GET", "/user/login", None, Web, ""),
            ("GET", "/user/settings/applications", None, Web, ""),
            ("GET", "/org/create", None, Web, ""),
            ("GET", "/org/acme/teams", None, Web, ""),
            ("GET", "/explore/repos", None, Web, ""),
            ("GET", "/admin/users", None, Web, ""),
            ("GET", "/assets/app.js", None, Web, ""),
            ("GET", "/css/x.css", None, Web, ""),
            ("GET", "/img/favicon.png", None, Web, ""),
            ("GET", "/js/x.js", None, Web, ""),
            ("GET", "/less/x.less", None, Web, ""),
            ("GET", "/plugins/x/y.js", None, Web, ""),
            ("GET", "/install/x", None, Web, ""),
            ("GET", "/issues/x", None, Web, ""),
            ("GET", "/pulls/x", None, Web, ""),
            ("POST", "/issues/attachments", None, Web, ""),
            ("POST", "/releases/attachments", None, Web, ""),
            ("GET", "/releases/tool", None, Web, "releases/tool"),
            (
                "GET",
                "/attachments/2d4f0d6e-6c1c-4c5b-9c0e-3a7f1b2c3d4e",
                None,
                Web,
                "",
            ),
            ("GET", "/avatars/1", None, Web, ""),
            ("GET", "/repo-avatars/1-abc", None, Web, ""),
            ("GET", "/captcha/image.jpeg", None, Web, ""),
            ("GET", "/-/metrics", None, Web, ""),
            ("GET", "/repo/create", None, Web, ""),
            ("GET", "/repo/fork/3", None, Web, ""),
            ("GET", "/healthcheck", None, Web, ""),
            ("GET", "/healthcheck/x", None, Web, ""),
            ("GET", "/robots.txt", None, Web, ""),
            ("GET", "/USER/settings", None, Web, ""),
            ("GET", "/%75ser/settings", None, Web, ""),
            // Looks reserved but is not.
            ("GET", "/users/r", None, Web, "users/r"),
            ("GET", "/userx/r", None, Web, "userx/r"),
        ]);
    }

    #[test]
    fn git_routes_under_reserved_owners_still_classify_as_git() {
        // Gogs routes these to its git handler (which then finds no such owner); classifying
        // them as git keeps git policy in charge of anything git-shaped.
        check(&[
            ("POST", "/user/r/git-receive-pack", None, GitPush, "user/r"),
            ("GET", "/explore/r/info/refs", None, GitFetch, "explore/r"),
        ]);
    }

    #[test]
    fn odd_input_never_panics_and_stays_classified() {
        check(&[
            ("GET", "", None, Web, ""),
            ("GET", "o/r", None, Web, "o/r"),
            ("GET", "//", None, Web, ""),
            ("POST", "/o//git-receive-pack", None, GitPush, ""),
            ("POST", "//r/git-receive-pack", None, GitPush, ""),
            ("POST", "/o/./git-receive-pack", None, GitPush, ""),
            ("POST", "/o/a%2Fb/git-receive-pack", None, GitPush, ""),
            (
                "GET",
                "/o/r/info/refs",
                Some("service=%zz&&=&%"),
                GitFetch,
                "o/r",
            ),
            ("GET", "/%/%", None, Web, "%/%"),
            ("GET", "/%ff/r", None, Web, "\u{fffd}/r"),
        ]);
    }

    #[test]
    fn full_name() {
        let r = RepoRef {
            owner: "o".into(),
            name: "r".into(),
        };
        assert_eq!(r.full(), "o/r");
    }
}
