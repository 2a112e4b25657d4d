//! Fault rules: parsing (from the control API's JSON), matching and combining them into a
//! plan for one request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::classify::{RequestInfo, Verb};

/// Keys every rule may have.
const COMMON_KEYS: &[&str] = &[
    "action", "verb", "path", "pattern", "query", "times", "skip", "name",
];

/// Action-specific keys.
fn action_keys(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "status" => &["code", "retry_after", "message", "reason", "after_upstream"],
        "delay" => &["ms"],
        "reset" => &["after_upstream"],
        "cut-after-events" => &["events", "abrupt"],
        "cut-after-bytes" => &["bytes", "abrupt"],
        "cut-after-seconds" => &["seconds", "abrupt"],
        "gone-event" => &["events", "message"],
        "drop-bookmarks" => &[],
        _ => return None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimesSpec {
    Count(u64),
    Word(String),
}

#[derive(Debug, Deserialize)]
struct RuleSpec {
    #[serde(default)]
    verb: Option<OneOrMany>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    times: Option<TimesSpec>,
    #[serde(default)]
    skip: u64,
    #[serde(flatten)]
    action: ActionSpec,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
enum ActionSpec {
    Status {
        code: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        after_upstream: bool,
    },
    Delay {
        ms: u64,
    },
    Reset {
        #[serde(default)]
        after_upstream: bool,
    },
    CutAfterEvents {
        events: u64,
        #[serde(default)]
        abrupt: bool,
    },
    CutAfterBytes {
        bytes: u64,
        #[serde(default)]
        abrupt: bool,
    },
    CutAfterSeconds {
        seconds: f64,
        #[serde(default)]
        abrupt: bool,
    },
    GoneEvent {
        #[serde(default)]
        events: u64,
        #[serde(default)]
        message: Option<String>,
    },
    DropBookmarks,
}

/// A rule's action, ready to apply.
#[derive(Debug, Clone)]
pub enum Action {
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: Bytes,
        after_upstream: bool,
    },
    Delay(Duration),
    Reset {
        after_upstream: bool,
    },
    CutAfterEvents {
        events: u64,
        abrupt: bool,
    },
    CutAfterBytes {
        bytes: u64,
        abrupt: bool,
    },
    CutAfterSeconds {
        after: Duration,
        abrupt: bool,
    },
    GoneEvent {
        events: u64,
        message: Option<String>,
    },
    DropBookmarks,
}

/// The `reason` the apiserver uses for an HTTP status code.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// A Kubernetes `Status` object (as the apiserver sends for errors), as JSON bytes.
pub fn status_body(code: u16, reason: &str, message: &str, retry_after: Option<u64>) -> Bytes {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(s) = retry_after {
        v["details"] = json!({ "retryAfterSeconds": s });
    }
    Bytes::from(serde_json::to_vec(&v).expect("status JSON"))
}

/// The watch `ERROR` event the apiserver sends when a resourceVersion is too old.
pub fn gone_event_line(message: &str) -> Bytes {
    let v = json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Expired",
            "code": 410,
        }
    });
    let mut out = serde_json::to_vec(&v).expect("event JSON");
    out.push(b'\n');
    Bytes::from(out)
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: u64,
    pub spec: Value,
    verbs: u32,
    path: Option<Regex>,
    pattern: Option<Regex>,
    query: Option<String>,
    times: Option<u64>,
    skip: u64,
    pub action: Action,
    matched: AtomicU64,
    applied: AtomicU64,
}

impl Rule {
    /// Parse and validate a rule from its JSON form.
    pub fn from_json(id: u64, spec: Value) -> Result<Rule, String> {
        let obj = spec.as_object().ok_or("a rule must be a JSON object")?;
        let action = obj
            .get("action")
            .and_then(Value::as_str)
            .ok_or("missing \"action\" (status, delay, reset, cut-after-events, cut-after-bytes, cut-after-seconds, gone-event, drop-bookmarks)")?;
        let extra = action_keys(action).ok_or_else(|| format!("unknown action {action:?}"))?;
        for k in obj.keys() {
            if !COMMON_KEYS.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
                return Err(format!(
                    "unknown key {k:?} for action {action:?} (allowed: {}, {})",
                    COMMON_KEYS.join(", "),
                    extra.join(", ")
                ));
            }
        }
        let parsed: RuleSpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;

        let mut verbs = 0u32;
        let names: Vec<String> = match parsed.verb {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        for name in &names {
            let v = Verb::parse(name).ok_or_else(|| format!("unknown verb {name:?}"))?;
            verbs |= v.bit();
        }
        let regex = |s: Option<String>, what: &str| -> Result<Option<Regex>, String> {
            s.map(|s| Regex::new(&s).map_err(|e| format!("bad {what} regex: {e}")))
                .transpose()
        };
        let times = match parsed.times {
            None => None,
            Some(TimesSpec::Count(n)) => Some(n),
            Some(TimesSpec::Word(w)) if w == "all" => None,
            Some(TimesSpec::Word(w)) => {
                return Err(format!("times must be a number or \"all\", not {w:?}"))
            }
        };
        let action = match parsed.action {
            ActionSpec::Status {
                code,
                retry_after,
                message,
                reason,
                after_upstream,
            } => {
                if !(100..=599).contains(&code) {
                    return Err(format!("bad status code {code}"));
                }
                // The apiserver always sends Retry-After with 429.
                let retry_after = retry_after.or(if code == 429 { Some(1) } else { None });
                let reason = reason.unwrap_or_else(|| reason_for(code).to_string());
                let message = message.unwrap_or_else(|| match code {
                    410 => "too old resource version (injected by fault-proxy)".to_string(),
                    _ => format!("injected by fault-proxy: {code} {reason}"),
                });
                Action::Status {
                    code,
                    retry_after,
                    body: status_body(code, &reason, &message, retry_after),
                    after_upstream,
                }
            }
            ActionSpec::Delay { ms } => Action::Delay(Duration::from_millis(ms)),
            ActionSpec::Reset { after_upstream } => Action::Reset { after_upstream },
            ActionSpec::CutAfterEvents { events, abrupt } => {
                Action::CutAfterEvents { events, abrupt }
            }
            ActionSpec::CutAfterBytes { bytes, abrupt } => Action::CutAfterBytes { bytes, abrupt },
            ActionSpec::CutAfterSeconds { seconds, abrupt } => {
                let after = Duration::try_from_secs_f64(seconds)
                    .map_err(|e| format!("bad seconds: {e}"))?;
                Action::CutAfterSeconds { after, abrupt }
            }
            ActionSpec::GoneEvent { events, message } => Action::GoneEvent { events, message },
            ActionSpec::DropBookmarks => Action::DropBookmarks,
        };
        Ok(Rule {
            id,
            verbs,
            path: regex(parsed.path, "path")?,
            pattern: regex(parsed.pattern, "pattern")?,
            query: parsed.query,
            times,
            skip: parsed.skip,
            action,
            matched: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            spec,
        })
    }

    fn terminal(&self) -> bool {
        matches!(self.action, Action::Status { .. } | Action::Reset { .. })
    }

    /// Does the request pass this rule's filters? Stream actions only match requests whose
    /// responses they can shape: event actions need a watch; byte and time cuts a watch or a
    /// pod log.
    pub fn matches(&self, req: &Req<'_>) -> bool {
        if self.verbs != 0 && self.verbs & req.info.verb.bit() == 0 {
            return false;
        }
        let watch = req.info.verb == Verb::Watch;
        let ok_kind = match self.action {
            Action::CutAfterEvents { .. } | Action::GoneEvent { .. } | Action::DropBookmarks => {
                watch
            }
            Action::CutAfterBytes { .. } | Action::CutAfterSeconds { .. } => watch || req.info.log,
            _ => true,
        };
        if !ok_kind {
            return false;
        }
        if let Some(q) = &self.query {
            if !req.query.unwrap_or("").contains(q.as_str()) {
                return false;
            }
        }
        if let Some(re) = &self.path {
            if !re.is_match(req.path) {
                return false;
            }
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(req.pattern) {
                return false;
            }
        }
        true
    }

    /// Count a match; true if this match is one the rule applies to (after `skip`, within
    /// `times`).
    fn take(&self) -> bool {
        let i = self.matched.fetch_add(1, Ordering::Relaxed);
        if i < self.skip {
            return false;
        }
        if let Some(t) = self.times {
            if i - self.skip >= t {
                return false;
            }
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn exhausted(&self) -> bool {
        match self.times {
            Some(t) => self.matched.load(Ordering::Relaxed) >= self.skip + t,
            None => false,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "rule": self.spec,
            "matched": self.matched.load(Ordering::Relaxed),
            "applied": self.applied.load(Ordering::Relaxed),
            "exhausted": self.exhausted(),
        })
    }
}

/// The request as rules see it.
pub struct Req<'a> {
    pub info: RequestInfo,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub pattern: &'a str,
}

/// What to do to the response stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamPlan {
    pub max_events: Option<u64>,
    pub gone_at: Option<u64>,
    pub gone_message: Option<String>,
    pub drop_bookmarks: bool,
    pub max_bytes: Option<u64>,
    pub max_duration: Option<Duration>,
    pub abrupt: bool,
}

impl StreamPlan {
    pub fn is_empty(&self) -> bool {
        self.max_events.is_none()
            && self.gone_at.is_none()
            && !self.drop_bookmarks
            && self.max_bytes.is_none()
            && self.max_duration.is_none()
    }

    pub fn needs_events(&self) -> bool {
        self.max_events.is_some() || self.gone_at.is_some() || self.drop_bookmarks
    }
}

#[derive(Debug, Clone)]
pub enum Terminal {
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: Bytes,
        after_upstream: bool,
    },
    Reset {
        after_upstream: bool,
    },
}

/// Everything the rules say about one request.
#[derive(Debug, Default)]
pub struct Plan {
    pub delay: Duration,
    pub terminal: Option<Terminal>,
    pub stream: StreamPlan,
}

fn min_opt<T: Ord + Copy>(a: Option<T>, b: T) -> Option<T> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Plan {
    fn add(&mut self, action: &Action, req: &Req<'_>) {
        let s = &mut self.stream;
        match action {
            Action::Delay(d) => self.delay += *d,
            Action::Status {
                code,
                retry_after,
                body,
                after_upstream,
            } => {
                self.terminal = Some(Terminal::Status {
                    code: *code,
                    retry_after: *retry_after,
                    body: body.clone(),
                    after_upstream: *after_upstream,
                })
            }
            Action::Reset { after_upstream } => {
                self.terminal = Some(Terminal::Reset {
                    after_upstream: *after_upstream,
                })
            }
            Action::CutAfterEvents { events, abrupt } => {
                s.max_events = min_opt(s.max_events, *events);
                s.abrupt |= abrupt;
            }
            Action::CutAfterBytes { bytes, abrupt } => {
                s.max_bytes = min_opt(s.max_bytes, *bytes);
                s.abrupt |= abrupt;
            }
            Action::CutAfterSeconds { after, abrupt } => {
                s.max_duration = min_opt(s.max_duration, *after);
                s.abrupt |= abrupt;
            }
            Action::GoneEvent { events, message } => {
                if s.gone_at.is_none_or(|g| *events < g) {
                    s.gone_at = Some(*events);
                    s.gone_message = Some(message.clone().unwrap_or_else(|| {
                        let rv = crate::classify::query_value(req.query, "resourceVersion")
                            .unwrap_or("0");
                        format!("too old resource version: {rv} (injected by fault-proxy)")
                    }));
                }
            }
            Action::DropBookmarks => s.drop_bookmarks = true,
        }
    }
}

/// The live rule set.
#[derive(Default)]
pub struct Rules {
    rules: RwLock<Vec<Rule>>,
    len: AtomicUsize,
    next_id: AtomicU64,
}

impl Rules {
    pub fn add(&self, spec: Value) -> Result<u64, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let rule = Rule::from_json(id, spec)?;
        let mut rules = self.rules.write().unwrap();
        rules.push(rule);
        self.len.store(rules.len(), Ordering::Release);
        Ok(id)
    }

    pub fn remove(&self, id: u64) -> bool {
        let mut rules = self.rules.write().unwrap();
        let before = rules.len();
        rules.retain(|r| r.id != id);
        self.len.store(rules.len(), Ordering::Release);
        rules.len() != before
    }

    pub fn clear(&self) -> usize {
        let mut rules = self.rules.write().unwrap();
        let n = rules.len();
        rules.clear();
        self.len.store(0, Ordering::Release);
        n
    }

    pub fn to_json(&self) -> Value {
        let rules = self.rules.read().unwrap();
        Value::Array(rules.iter().map(Rule::to_json).collect())
    }

    /// Combine every matching rule, in the order they were added. Delays add up; the first
    /// `status` or `reset` that applies wins (later ones are not consumed); stream limits
    /// combine (the smallest limit of each kind ends the stream).
    pub fn evaluate(&self, req: &Req<'_>) -> Plan {
        let mut plan = Plan::default();
        if self.len.load(Ordering::Acquire) == 0 {
            return plan;
        }
        let rules = self.rules.read().unwrap();
        for rule in rules.iter() {
            if rule.terminal() && plan.terminal.is_some() {
                continue;
            }
            if rule.matches(req) && rule.take() {
                tracing::debug!(rule = rule.id, path = req.path, "rule applies");
                plan.add(&rule.action, req);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn eval(rules: &Rules, method: &str, pq: &str) -> Plan {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let mut pattern = String::new();
        let info = classify(&method.parse().unwrap(), path, query, &mut pattern);
        rules.evaluate(&Req {
            info,
            path,
            query,
            pattern: &pattern,
        })
    }

    fn status_code(p: &Plan) -> Option<u16> {
        match &p.terminal {
            Some(Terminal::Status { code, .. }) => Some(*code),
            _ => None,
        }
    }

    const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

    #[test]
    fn times_and_skip() {
        let rules = Rules::default();
        rules
            .add(json!({"verb": "create", "path": "/jobs$", "action": "status", "code": 503, "times": 1}))
            .unwrap();
        assert_eq!(status_code(&eval(&rules, "POST", JOBS)), Some(503));
        assert_eq!(status_code(&eval(&rules, "POST", JOBS)), None);

        let rules = Rules::default();
        rules
            .add(
                json!({"verb": ["create"], "action": "status", "code": 500, "times": 2, "skip": 1}),
            )
            .unwrap();
        let got: Vec<_> = (0..5)
            .map(|_| status_code(&eval(&rules, "POST", JOBS)))
            .collect();
        assert_eq!(got, [None, Some(500), Some(500), None, None]);
        let listed = rules.to_json();
        assert_eq!(listed[0]["matched"], 5);
        assert_eq!(listed[0]["applied"], 2);
        assert_eq!(listed[0]["exhausted"], true);

        let rules = Rules::default();
        rules
            .add(json!({"action": "status", "code": 500, "times": "all"}))
            .unwrap();
        for _ in 0..3 {
            assert_eq!(status_code(&eval(&rules, "GET", JOBS)), Some(500));
        }
    }

    #[test]
    fn filters() {
        let rules = Rules::default();
        rules
            .add(json!({"verb": "list", "pattern": "^/api/v1/namespaces/\\{ns\\}/pods$", "action": "status", "code": 429}))
            .unwrap();
        assert_eq!(
            status_code(&eval(&rules, "GET", "/api/v1/namespaces/x/pods")),
            Some(429)
        );
        assert_eq!(
            status_code(&eval(&rules, "GET", "/api/v1/namespaces/x/pods?watch=1")),
            None
        );
        assert_eq!(
            status_code(&eval(&rules, "GET", "/api/v1/namespaces/x/pods/p")),
            None
        );
        assert_eq!(status_code(&eval(&rules, "GET", JOBS)), None);

        let rules = Rules::default();
        rules
            .add(json!({"query": "labelSelector=app%3Dx", "action": "status", "code": 403}))
            .unwrap();
        assert_eq!(
            status_code(&eval(&rules, "GET", "/api/v1/pods?labelSelector=app%3Dx")),
            Some(403)
        );
        assert_eq!(
            status_code(&eval(&rules, "GET", "/api/v1/pods?labelSelector=app%3Dy")),
            None
        );
        assert_eq!(status_code(&eval(&rules, "GET", "/api/v1/pods")), None);
    }

    #[test]
    fn stream_actions_only_match_streams() {
        let rules = Rules::default();
        rules
            .add(json!({"action": "cut-after-events", "events": 2, "times": 1}))
            .unwrap();
        // A list does not consume the rule...
        assert!(eval(&rules, "GET", "/api/v1/pods").stream.is_empty());
        // ...the watch does.
        assert_eq!(
            eval(&rules, "GET", "/api/v1/pods?watch=true")
                .stream
                .max_events,
            Some(2)
        );
        assert!(eval(&rules, "GET", "/api/v1/pods?watch=true")
            .stream
            .is_empty());

        let rules = Rules::default();
        rules
            .add(json!({"action": "cut-after-bytes", "bytes": 10}))
            .unwrap();
        assert_eq!(
            eval(&rules, "GET", "/api/v1/namespaces/d/pods/p/log?follow=true")
                .stream
                .max_bytes,
            Some(10)
        );
        assert_eq!(
            eval(&rules, "GET", "/api/v1/namespaces/d/pods/p/log")
                .stream
                .max_bytes,
            Some(10)
        );
        assert_eq!(
            eval(&rules, "GET", "/api/v1/watch/pods").stream.max_bytes,
            Some(10)
        );
        assert!(eval(&rules, "GET", "/api/v1/namespaces/d/pods/p")
            .stream
            .is_empty());
    }

    #[test]
    fn combination() {
        let rules = Rules::default();
        rules.add(json!({"action": "delay", "ms": 100})).unwrap();
        rules
            .add(json!({"verb": "watch", "action": "delay", "ms": 50}))
            .unwrap();
        rules
            .add(json!({"action": "cut-after-seconds", "seconds": 3}))
            .unwrap();
        rules
            .add(json!({"action": "cut-after-events", "events": 5}))
            .unwrap();
        rules
            .add(json!({"action": "cut-after-events", "events": 3, "abrupt": true}))
            .unwrap();
        rules
            .add(json!({"action": "gone-event", "events": 4}))
            .unwrap();
        rules.add(json!({"action": "drop-bookmarks"})).unwrap();
        let p = eval(
            &rules,
            "GET",
            "/api/v1/namespaces/d/pods?watch=1&resourceVersion=77",
        );
        assert_eq!(p.delay, Duration::from_millis(150));
        assert!(p.terminal.is_none());
        assert_eq!(
            p.stream,
            StreamPlan {
                max_events: Some(3),
                gone_at: Some(4),
                gone_message: Some("too old resource version: 77 (injected by fault-proxy)".into()),
                drop_bookmarks: true,
                max_bytes: None,
                max_duration: Some(Duration::from_secs(3)),
                abrupt: true,
            }
        );
        let p = eval(&rules, "GET", "/api/v1/namespaces/d/pods");
        assert_eq!(p.delay, Duration::from_millis(100));
        assert!(p.stream.is_empty());
    }

    #[test]
    fn first_terminal_wins_and_later_ones_are_not_consumed() {
        let rules = Rules::default();
        let a = rules
            .add(json!({"action": "status", "code": 503, "times": 1}))
            .unwrap();
        let b = rules.add(json!({"action": "reset", "times": 1})).unwrap();
        assert_eq!(status_code(&eval(&rules, "GET", JOBS)), Some(503));
        assert!(matches!(
            eval(&rules, "GET", JOBS).terminal,
            Some(Terminal::Reset { .. })
        ));
        assert!(eval(&rules, "GET", JOBS).terminal.is_none());
        assert!(rules.remove(a));
        assert!(!rules.remove(a));
        assert!(rules.remove(b));
        assert_eq!(rules.to_json(), json!([]));
    }

    #[test]
    fn status_bodies() {
        let r = Rule::from_json(
            1,
            json!({"action": "status", "code": 429, "retry_after": 3}),
        )
        .unwrap();
        let Action::Status {
            body, retry_after, ..
        } = &r.action
        else {
            panic!()
        };
        assert_eq!(*retry_after, Some(3));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "TooManyRequests");
        assert_eq!(v["code"], 429);
        assert_eq!(v["details"]["retryAfterSeconds"], 3);
        let r = Rule::from_json(1, json!({"action": "status", "code": 429})).unwrap();
        assert!(matches!(
            r.action,
            Action::Status {
                retry_after: Some(1),
                ..
            }
        ));
        let r = Rule::from_json(1, json!({"action": "status", "code": 503})).unwrap();
        assert!(matches!(
            r.action,
            Action::Status {
                retry_after: None,
                ..
            }
        ));

        let line = gone_event_line("too old resource version: 5 (6)");
        assert!(line.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
    }

    #[test]
    fn validation() {
        let bad = [
            json!([]),
            json!({}),
            json!({"action": "explode"}),
            json!({"action": "status"}),
            json!({"action": "status", "code": 503, "retryAfter": 1}),
            json!({"action": "delay", "ms": 1, "bytes": 2}),
            json!({"action": "delay", "ms": 1, "verb": "fetch"}),
            json!({"action": "delay", "ms": 1, "path": "("}),
            json!({"action": "delay", "ms": 1, "times": "twice"}),
            json!({"action": "cut-after-seconds", "seconds": -1.0}),
            json!({"action": "status", "code": 42}),
        ];
        for b in bad {
            assert!(Rule::from_json(1, b.clone()).is_err(), "{b}");
        }
        let good = [
            json!({"action": "reset"}),
            json!({"action": "reset", "after_upstream": true, "name": "x"}),
            json!({"action": "drop-bookmarks", "verb": "watch"}),
            json!({"action": "gone-event"}),
            json!({"action": "cut-after-seconds", "seconds": 0.5, "times": "all"}),
        ];
        for g in good {
            assert!(Rule::from_json(1, g.clone()).is_ok(), "{g}");
        }
    }
}
