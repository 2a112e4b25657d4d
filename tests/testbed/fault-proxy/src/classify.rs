//! Request classification the way the kube-apiserver does it (`RequestInfoFactory`): the verb
//! (`get`, `list`, `watch`, `create`, ...) and a path pattern with names replaced by
//! placeholders, so tests can count API traffic without knowing generated names.

use hyper::Method;

/// A Kubernetes authorization verb. Resource requests use the first eight; non-resource
/// requests (`/version`, `/healthz`, discovery) use the lowercase HTTP method, as the
/// apiserver does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    Post,
    Put,
    Head,
    Options,
    Other,
}

pub const VERB_COUNT: usize = 13;

pub const ALL_VERBS: [Verb; VERB_COUNT] = [
    Verb::Get,
    Verb::List,
    Verb::Watch,
    Verb::Create,
    Verb::Update,
    Verb::Patch,
    Verb::Delete,
    Verb::DeleteCollection,
    Verb::Post,
    Verb::Put,
    Verb::Head,
    Verb::Options,
    Verb::Other,
];

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Head => "head",
            Verb::Options => "options",
            Verb::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        ALL_VERBS.iter().copied().find(|v| v.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// What the proxy needs to know about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: Verb,
    /// `/api/...` or `/apis/...` with a resource (not discovery or health endpoints).
    pub resource_request: bool,
    /// The `log` subresource of a pod (follow or not).
    pub log: bool,
    /// Held open by the server: a watch, or a pod log with `follow` set.
    pub long_running: bool,
}

/// Go's `strconv.ParseBool` true values, which is what the apiserver accepts for
/// `watch=` and `follow=` (kubernetes_asyncio sends `True`).
fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Whether query parameter `key` is present with a true value.
pub fn query_flag(query: Option<&str>, key: &str) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|kv| match kv.split_once('=') {
        Some((k, v)) => k == key && truthy(v),
        None => false,
    })
}

/// The value of query parameter `key` (raw, not percent-decoded).
pub fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

const MAX_SEGMENTS: usize = 16;

/// Classify a request and write its normalised path into `pattern` (cleared first).
///
/// Resource paths become `/api/v1/namespaces/{ns}/pods/{name}/log`,
/// `/apis/batch/v1/namespaces/{ns}/jobs`, `/api/v1/nodes/{name}/status`,
/// `/api/v1/namespaces/{name}`; the `/watch/` prefix is dropped (the verb says `watch`);
/// anything after a subresource becomes `/{rest}`. Other paths are kept as they are.
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    pattern: &mut String,
) -> RequestInfo {
    pattern.clear();
    let non_resource = |pattern: &mut String| {
        pattern.push_str(path);
        RequestInfo {
            verb: match *method {
                Method::GET => Verb::Get,
                Method::POST => Verb::Post,
                Method::PUT => Verb::Put,
                Method::PATCH => Verb::Patch,
                Method::DELETE => Verb::Delete,
                Method::HEAD => Verb::Head,
                Method::OPTIONS => Verb::Options,
                _ => Verb::Other,
            },
            resource_request: false,
            log: false,
            long_running: false,
        }
    };

    let trimmed = path.trim_matches('/');
    let mut segs = [""; MAX_SEGMENTS];
    let mut n = 0;
    let mut overflow = false;
    if !trimmed.is_empty() {
        for s in trimmed.split('/') {
            if n == MAX_SEGMENTS {
                overflow = true;
                break;
            }
            segs[n] = s;
            n += 1;
        }
    }
    // Same thresholds as the apiserver: fewer than three parts (or four for a group) is
    // discovery, not a resource.
    let prefix_len = match segs[0] {
        "api" if n >= 3 => 2,
        "apis" if n >= 4 => 3,
        _ => return non_resource(pattern),
    };
    let mut p = prefix_len;
    let watch_prefix = segs[p] == "watch";
    if watch_prefix {
        if n < p + 2 {
            return non_resource(pattern);
        }
        p += 1;
    }
    for s in &segs[..prefix_len] {
        pattern.push('/');
        pattern.push_str(s);
    }

    let rest = &segs[p..n];
    let namespaced =
        rest[0] == "namespaces" && rest.len() > 2 && !matches!(rest[2], "status" | "finalize");
    let parts = if namespaced {
        pattern.push_str("/namespaces/{ns}");
        &rest[2..]
    } else {
        rest
    };
    let resource = parts[0];
    let has_name = parts.len() >= 2;
    let subresource = parts.get(2).copied();
    pattern.push('/');
    pattern.push_str(resource);
    if has_name {
        pattern.push_str("/{name}");
    }
    if let Some(sub) = subresource {
        pattern.push('/');
        pattern.push_str(sub);
    }
    if parts.len() > 3 || overflow {
        pattern.push_str("/{rest}");
    }

    let verb = if watch_prefix {
        Verb::Watch
    } else {
        match *method {
            Method::GET | Method::HEAD => {
                if has_name {
                    Verb::Get
                } else if query_flag(query, "watch") {
                    Verb::Watch
                } else {
                    Verb::List
                }
            }
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE => {
                if has_name {
                    Verb::Delete
                } else {
                    Verb::DeleteCollection
                }
            }
            _ => Verb::Other,
        }
    };
    let log = subresource == Some("log");
    let long_running = verb == Verb::Watch || (log && query_flag(query, "follow"));
    RequestInfo {
        verb,
        resource_request: true,
        log,
        long_running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path_and_query: &str) -> (Verb, String, bool) {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut pat = String::new();
        let info = classify(&method.parse().unwrap(), path, query, &mut pat);
        (info.verb, pat, info.long_running)
    }

    #[test]
    fn verbs_like_the_apiserver() {
        use Verb::*;
        let cases = [
            ("GET", "/api/v1/namespaces/default/pods", List),
            ("GET", "/api/v1/namespaces/default/pods?watch=true", Watch),
            (
                "GET",
                "/api/v1/namespaces/default/pods?watch=1&resourceVersion=5",
                Watch,
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods?labelSelector=a&watch=True",
                Watch,
            ),
            ("GET", "/api/v1/namespaces/default/pods?watch=false", List),
            ("GET", "/api/v1/namespaces/default/pods?watch", List),
            ("GET", "/api/v1/watch/namespaces/default/pods", Watch),
            ("GET", "/api/v1/watch/namespaces/default/pods/p1", Watch),
            ("GET", "/api/v1/namespaces/default/pods/p1", Get),
            ("GET", "/api/v1/namespaces/default/pods/p1?watch=true", Get),
            ("HEAD", "/api/v1/namespaces/default/pods/p1", Get),
            ("POST", "/apis/batch/v1/namespaces/default/jobs", Create),
            ("POST", "/api/v1/namespaces/default/pods/p1/binding", Create),
            ("PUT", "/apis/batch/v1/namespaces/default/jobs/j1", Update),
            ("PATCH", "/api/v1/namespaces/default/pods/p1/status", Patch),
            (
                "DELETE",
                "/apis/batch/v1/namespaces/default/jobs/j1",
                Delete,
            ),
            (
                "DELETE",
                "/apis/batch/v1/namespaces/default/jobs",
                DeleteCollection,
            ),
            ("GET", "/api/v1/pods", List),
            ("GET", "/api/v1/namespaces", List),
            ("GET", "/api/v1/namespaces/default", Get),
            ("DELETE", "/api/v1/namespaces/ns1", Delete),
            ("GET", "/version", Get),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                Create,
            ),
            ("GET", "/apis/batch/v1", Get),
            ("POST", "/api", Post),
            ("PUT", "/healthz", Put),
            ("TRACE", "/api/v1/pods", Other),
        ];
        for (m, p, want) in cases {
            assert_eq!(c(m, p).0, want, "{m} {p}");
        }
    }

    #[test]
    fn patterns() {
        let cases = [
            (
                "/apis/batch/v1/namespaces/default/jobs",
                "/apis/batch/v1/namespaces/{ns}/jobs",
            ),
            (
                "/apis/batch/v1/namespaces/x/jobs/run-1",
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            ),
            (
                "/apis/batch/v1/namespaces/x/jobs/run-1/status",
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}/status",
            ),
            (
                "/api/v1/namespaces/default/pods/p-abc/log",
                "/api/v1/namespaces/{ns}/pods/{name}/log",
            ),
            (
                "/api/v1/watch/namespaces/default/pods",
                "/api/v1/namespaces/{ns}/pods",
            ),
            ("/api/v1/watch/pods", "/api/v1/pods"),
            ("/api/v1/nodes/n1/status", "/api/v1/nodes/{name}/status"),
            ("/api/v1/nodes", "/api/v1/nodes"),
            ("/api/v1/namespaces", "/api/v1/namespaces"),
            ("/api/v1/namespaces/default", "/api/v1/namespaces/{name}"),
            (
                "/api/v1/namespaces/default/status",
                "/api/v1/namespaces/{name}/status",
            ),
            (
                "/api/v1/namespaces/default/finalize",
                "/api/v1/namespaces/{name}/finalize",
            ),
            (
                "/api/v1/namespaces/default/pods/p/proxy/a/b",
                "/api/v1/namespaces/{ns}/pods/{name}/proxy/{rest}",
            ),
            (
                "/api/v1/namespaces/default/events/",
                "/api/v1/namespaces/{ns}/events",
            ),
            ("/version", "/version"),
            ("/apis/batch/v1", "/apis/batch/v1"),
            ("/api/v1", "/api/v1"),
            ("/api/v1/watch", "/api/v1/watch"),
            ("/", "/"),
            ("/openapi/v2", "/openapi/v2"),
        ];
        for (p, want) in cases {
            assert_eq!(c("GET", p).1, want, "{p}");
        }
        let deep = format!("/api/v1/namespaces/a/pods/b/proxy{}", "/x".repeat(30));
        assert_eq!(
            c("GET", &deep).1,
            "/api/v1/namespaces/{ns}/pods/{name}/proxy/{rest}"
        );
    }

    #[test]
    fn long_running() {
        assert!(c("GET", "/api/v1/namespaces/d/pods?watch=true").2);
        assert!(
            c(
                "GET",
                "/api/v1/namespaces/d/pods/p/log?follow=true&container=c"
            )
            .2
        );
        assert!(c("GET", "/api/v1/namespaces/d/pods/p/log?follow=True").2);
        assert!(!c("GET", "/api/v1/namespaces/d/pods/p/log").2);
        assert!(!c("GET", "/api/v1/namespaces/d/pods/p/log?follow=false").2);
        assert!(!c("GET", "/api/v1/namespaces/d/pods").2);
    }

    #[test]
    fn query_helpers() {
        assert_eq!(
            query_value(Some("a=1&resourceVersion=42"), "resourceVersion"),
            Some("42")
        );
        assert_eq!(query_value(Some("a=1"), "resourceVersion"), None);
        assert_eq!(query_value(None, "a"), None);
        assert!(query_flag(Some("x=1&follow=t"), "follow"));
        assert!(!query_flag(Some("nofollow=true"), "follow"));
    }

    #[test]
    fn verb_names_round_trip() {
        for v in ALL_VERBS {
            assert_eq!(Verb::parse(v.as_str()), Some(v));
            assert_eq!(ALL_VERBS[v.index()], v);
        }
        assert_eq!(Verb::parse("nope"), None);
    }
}
