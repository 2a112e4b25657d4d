//! Request counters: by verb, by (normalised pattern, verb), by (raw path, verb), by response
//! status, and the number of long-running requests (watches, followed logs) open now and at
//! peak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::classify::{Verb, ALL_VERBS, VERB_COUNT};

type PerVerb = [u64; VERB_COUNT];

#[derive(Default)]
struct Inner {
    total: u64,
    verbs: PerVerb,
    patterns: HashMap<String, PerVerb>,
    paths: HashMap<String, PerVerb>,
}

pub struct Counts {
    inner: Mutex<Inner>,
    statuses: Box<[AtomicU64]>,
    long_open: AtomicI64,
    long_peak: AtomicI64,
    long_total: AtomicU64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            inner: Mutex::default(),
            statuses: (0..600).map(|_| AtomicU64::new(0)).collect(),
            long_open: AtomicI64::new(0),
            long_peak: AtomicI64::new(0),
            long_total: AtomicU64::new(0),
        }
    }
}

fn bump(map: &mut HashMap<String, PerVerb>, key: &str, verb: Verb) {
    // Look up by &str first: a String is only allocated the first time a key is seen.
    match map.get_mut(key) {
        Some(v) => v[verb.index()] += 1,
        None => {
            let mut v = [0; VERB_COUNT];
            v[verb.index()] = 1;
            map.insert(key.to_owned(), v);
        }
    }
}

fn per_verb_json(v: &PerVerb) -> Value {
    let mut m = Map::new();
    for verb in ALL_VERBS {
        let n = v[verb.index()];
        if n > 0 {
            m.insert(verb.as_str().into(), n.into());
        }
    }
    Value::Object(m)
}

fn map_json(map: &HashMap<String, PerVerb>) -> Value {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), per_verb_json(&map[k])))
            .collect(),
    )
}

impl Counts {
    pub fn record_request(&self, verb: Verb, pattern: &str, path: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.total += 1;
        inner.verbs[verb.index()] += 1;
        bump(&mut inner.patterns, pattern, verb);
        bump(&mut inner.paths, path, verb);
    }

    pub fn record_status(&self, code: u16) {
        if let Some(c) = self.statuses.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Mark a long-running request open until the guard is dropped.
    pub fn long_running(self: &Arc<Self>) -> LongGuard {
        let now = self.long_open.fetch_add(1, Ordering::AcqRel) + 1;
        self.long_peak.fetch_max(now, Ordering::AcqRel);
        self.long_total.fetch_add(1, Ordering::Relaxed);
        LongGuard(self.clone())
    }

    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap();
        *inner = Inner::default();
        for c in self.statuses.iter() {
            c.store(0, Ordering::Relaxed);
        }
        self.long_total.store(0, Ordering::Relaxed);
        self.long_peak
            .store(self.long_open.load(Ordering::Acquire), Ordering::Release);
    }

    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock().unwrap();
        let statuses: Map<String, Value> = self
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (code.to_string(), n.into()))
            })
            .collect();
        serde_json::json!({
            "total": inner.total,
            "verbs": per_verb_json(&inner.verbs),
            "patterns": map_json(&inner.patterns),
            "paths": map_json(&inner.paths),
            "statuses": statuses,
            "long_running": {
                "open": self.long_open.load(Ordering::Acquire),
                "peak": self.long_peak.load(Ordering::Acquire),
                "total": self.long_total.load(Ordering::Relaxed),
            },
        })
    }
}

pub struct LongGuard(Arc<Counts>);

impl Drop for LongGuard {
    fn drop(&mut self) {
        self.0.long_open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_peak() {
        let c = Arc::new(Counts::default());
        c.record_request(
            Verb::Create,
            "/apis/batch/v1/namespaces/{ns}/jobs",
            "/apis/batch/v1/namespaces/a/jobs",
        );
        c.record_request(
            Verb::Create,
            "/apis/batch/v1/namespaces/{ns}/jobs",
            "/apis/batch/v1/namespaces/b/jobs",
        );
        c.record_request(
            Verb::List,
            "/apis/batch/v1/namespaces/{ns}/jobs",
            "/apis/batch/v1/namespaces/a/jobs",
        );
        c.record_status(201);
        c.record_status(503);
        c.record_status(201);
        let g1 = c.long_running();
        let g2 = c.long_running();
        drop(g1);
        let j = c.to_json();
        assert_eq!(j["total"], 3);
        assert_eq!(j["verbs"], serde_json::json!({"create": 2, "list": 1}));
        assert_eq!(
            j["patterns"]["/apis/batch/v1/namespaces/{ns}/jobs"],
            serde_json::json!({"create": 2, "list": 1})
        );
        assert_eq!(
            j["paths"]["/apis/batch/v1/namespaces/a/jobs"],
            serde_json::json!({"create": 1, "list": 1})
        );
        assert_eq!(j["statuses"], serde_json::json!({"201": 2, "503": 1}));
        assert_eq!(
            j["long_running"],
            serde_json::json!({"open": 1, "peak": 2, "total": 2})
        );
        c.reset();
        let j = c.to_json();
        assert_eq!(j["total"], 0);
        assert_eq!(
            j["long_running"],
            serde_json::json!({"open": 1, "peak": 1, "total": 0})
        );
        drop(g2);
        assert_eq!(c.to_json()["long_running"]["open"], 0);
    }
}
