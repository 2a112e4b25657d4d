//! Response bodies: passed through chunk by chunk, or shaped by a [`StreamPlan`] (cut after
//! N watch events, N bytes or N seconds, a 410 `ERROR` event, BOOKMARKs dropped).
//!
//! Watch events from the apiserver are JSON objects each followed by `\n` (JSON escapes
//! newlines inside strings, so `\n` only ever ends an event). Upstream chunks need not align
//! with events: [`LineSplitter`] reassembles events that straddle chunks and slices the
//! others out of the chunk without copying.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::counts::LongGuard;
use crate::rules::{gone_event_line, StreamPlan};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Splits a byte stream into `\n`-terminated lines.
#[derive(Default)]
pub struct LineSplitter {
    partial: BytesMut,
}

impl LineSplitter {
    /// Push a chunk; complete lines (with their `\n`) are appended to `out`.
    pub fn push(&mut self, mut chunk: Bytes, out: &mut VecDeque<Bytes>) {
        if !self.partial.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&chunk[..=i]);
                    out.push_back(self.partial.split().freeze());
                    let _ = chunk.split_to(i + 1);
                }
                None => {
                    self.partial.extend_from_slice(&chunk);
                    return;
                }
            }
        }
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            out.push_back(chunk.split_to(i + 1));
        }
        if !chunk.is_empty() {
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// The unterminated tail, if any.
    pub fn take_rest(&mut self) -> Option<Bytes> {
        (!self.partial.is_empty()).then(|| self.partial.split().freeze())
    }
}

/// Is this watch event line a BOOKMARK? The apiserver writes `type` first; anything else
/// mentioning BOOKMARK is parsed to be sure.
pub fn is_bookmark(line: &[u8]) -> bool {
    if line.starts_with(b"{\"type\":\"BOOKMARK\"") {
        return true;
    }
    if !line.windows(8).any(|w| w == b"BOOKMARK") {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Ev<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Ev<'_>>(line).is_ok_and(|e| e.ty == "BOOKMARK")
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// Applies a stream plan to a sequence of chunks. Pure (no I/O, no clock) so it can be
/// tested with any chunking.
pub struct Shaper {
    plan: StreamPlan,
    splitter: Option<LineSplitter>,
    lines: VecDeque<Bytes>,
    out: VecDeque<Bytes>,
    events: u64,
    bytes: u64,
    done: bool,
}

impl Shaper {
    /// `events_aware`: the body is a JSON watch stream, so event actions apply.
    pub fn new(plan: StreamPlan, events_aware: bool) -> Shaper {
        let events_aware = events_aware && plan.needs_events();
        let mut s = Shaper {
            splitter: events_aware.then(LineSplitter::default),
            plan,
            lines: VecDeque::new(),
            out: VecDeque::new(),
            events: 0,
            bytes: 0,
            done: false,
        };
        if events_aware {
            s.check_event_limits();
        }
        if s.plan.max_bytes == Some(0) {
            s.done = true;
        }
        s
    }

    fn emit(&mut self, b: Bytes) {
        if self.done || b.is_empty() {
            return;
        }
        if let Some(max) = self.plan.max_bytes {
            let left = max - self.bytes;
            if b.len() as u64 >= left {
                if left > 0 {
                    self.out.push_back(b.slice(..left as usize));
                }
                self.bytes = max;
                self.done = true;
                return;
            }
        }
        self.bytes += b.len() as u64;
        self.out.push_back(b);
    }

    /// After `self.events` events were forwarded: send the 410 event or stop if a limit is hit.
    fn check_event_limits(&mut self) {
        if self.plan.gone_at == Some(self.events) {
            let msg = self
                .plan
                .gone_message
                .as_deref()
                .unwrap_or("too old resource version");
            self.emit(gone_event_line(msg));
            self.done = true;
        } else if self.plan.max_events == Some(self.events) {
            self.done = true;
        }
    }

    fn on_line(&mut self, line: Bytes) {
        if is_blank(&line) {
            self.emit(line);
            return;
        }
        if self.plan.drop_bookmarks && is_bookmark(&line) {
            return;
        }
        self.emit(line);
        self.events += 1;
        self.check_event_limits();
    }

    /// Feed one upstream chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if self.done {
            return;
        }
        match self.splitter.as_mut() {
            None => self.emit(chunk),
            Some(sp) => {
                sp.push(chunk, &mut self.lines);
                while let Some(line) = self.lines.pop_front() {
                    if self.done {
                        self.lines.clear();
                        break;
                    }
                    self.on_line(line);
                }
            }
        }
    }

    /// The upstream body ended: forward an unterminated last line as it is.
    pub fn finish(&mut self) {
        if let Some(rest) = self.splitter.as_mut().and_then(LineSplitter::take_rest) {
            self.emit(rest);
        }
    }

    pub fn pop(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// A limit was reached: nothing more will be forwarded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn stop(&mut self) {
        self.done = true;
    }
}

/// The error a body returns to make hyper abort the client connection (no final chunk).
#[derive(Debug)]
struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream aborted by fault-proxy")
    }
}

impl std::error::Error for Aborted {}

struct Shaped<B> {
    inner: B,
    shaper: Shaper,
    deadline: Option<Pin<Box<Sleep>>>,
    abrupt: bool,
    /// An abrupt cut waits one poll so hyper flushes what was already forwarded.
    abort_armed: bool,
    upstream_done: bool,
    finished: bool,
}

enum Kind<B> {
    Full(Option<Bytes>),
    Pass(B),
    Shaped(Box<Shaped<B>>),
}

/// The proxy's response body.
pub struct ProxyBody<B = Incoming> {
    kind: Kind<B>,
    _guard: Option<LongGuard>,
}

impl<B> ProxyBody<B> {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
            _guard: None,
        }
    }

    pub fn pass(inner: B, guard: Option<LongGuard>) -> Self {
        ProxyBody {
            kind: Kind::Pass(inner),
            _guard: guard,
        }
    }

    /// Shape `inner` by `plan`; `events_aware` when the body is a JSON watch stream.
    pub fn shaped(
        inner: B,
        plan: StreamPlan,
        events_aware: bool,
        guard: Option<LongGuard>,
    ) -> Self {
        let deadline = plan.max_duration.map(|d| Box::pin(tokio::time::sleep(d)));
        let abrupt = plan.abrupt;
        ProxyBody {
            kind: Kind::Shaped(Box::new(Shaped {
                inner,
                shaper: Shaper::new(plan, events_aware),
                deadline,
                abrupt,
                abort_armed: false,
                upstream_done: false,
                finished: false,
            })),
            _guard: guard,
        }
    }
}

impl<B> Body for ProxyBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Pass(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Kind::Shaped(s) => s.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Pass(inner) => inner.is_end_stream(),
            Kind::Shaped(s) => s.finished,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Pass(inner) => inner.size_hint(),
            Kind::Shaped(_) => SizeHint::default(),
        }
    }
}

impl<B> Shaped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if let Some(b) = self.shaper.pop() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.upstream_done {
                self.finished = true;
                return Poll::Ready(None);
            }
            if self.shaper.is_done() {
                // Cut by a fault: end cleanly (final chunk) or abort the connection. Before
                // aborting, return Pending once: hyper then flushes the frames it buffered, so
                // the client does get the events or bytes forwarded before the cut.
                if self.abrupt {
                    if !self.abort_armed {
                        self.abort_armed = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    self.finished = true;
                    return Poll::Ready(Some(Err(Box::new(Aborted))));
                }
                self.finished = true;
                return Poll::Ready(None);
            }
            if let Some(d) = self.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    self.deadline = None;
                    self.shaper.stop();
                    continue;
                }
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.shaper.finish();
                    self.upstream_done = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    self.finished = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.shaper.push(data),
                    // Trailers: pass on.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use std::time::Duration;

    fn ev(ty: &str, name: &str) -> String {
        format!("{{\"type\":\"{ty}\",\"object\":{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{name}\",\"annotations\":{{\"a\":\"x\\ny\"}}}}}}}}\n")
    }

    fn watch_stream() -> Vec<u8> {
        let mut s = String::new();
        s += &ev("ADDED", "a");
        s += &ev("BOOKMARK", "");
        s += &ev("MODIFIED", "a");
        s += &ev("ADDED", "b");
        s += &ev("BOOKMARK", "");
        s += &ev("DELETED", "a");
        s.into_bytes()
    }

    /// `data` cut in two at every byte, in three at many places, and in fixed-size chunks.
    fn chunkings(data: &[u8]) -> Vec<Vec<Bytes>> {
        let mut all = Vec::new();
        for size in [1, 2, 3, 7, 64, data.len()] {
            all.push(data.chunks(size).map(Bytes::copy_from_slice).collect());
        }
        for i in 0..=data.len() {
            all.push(vec![
                Bytes::copy_from_slice(&data[..i]),
                Bytes::copy_from_slice(&data[i..]),
            ]);
        }
        for i in (0..=data.len()).step_by(5) {
            for j in (i..=data.len()).step_by(3) {
                all.push(vec![
                    Bytes::copy_from_slice(&data[..i]),
                    Bytes::copy_from_slice(&data[i..j]),
                    Bytes::copy_from_slice(&data[j..]),
                ]);
            }
        }
        all
    }

    fn run(plan: &StreamPlan, chunks: &[Bytes]) -> Vec<u8> {
        let mut s = Shaper::new(plan.clone(), true);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c.clone());
            while let Some(b) = s.pop() {
                out.extend_from_slice(&b);
            }
        }
        s.finish();
        while let Some(b) = s.pop() {
            out.extend_from_slice(&b);
        }
        out
    }

    fn lines(b: &[u8]) -> Vec<serde_json::Value> {
        b.split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn splitter_reassembles_across_chunks() {
        let data = watch_stream();
        for chunks in chunkings(&data) {
            let mut sp = LineSplitter::default();
            let mut out = VecDeque::new();
            for c in chunks {
                sp.push(c, &mut out);
            }
            assert!(sp.take_rest().is_none());
            let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(joined, data);
            assert_eq!(out.len(), 6);
            assert!(out
                .iter()
                .all(|l| l.ends_with(b"\n") && l.iter().filter(|&&c| c == b'\n').count() == 1));
        }
        let mut sp = LineSplitter::default();
        let mut out = VecDeque::new();
        sp.push(Bytes::from_static(b"{\"a\":1}\n{\"b\""), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(sp.take_rest().unwrap(), Bytes::from_static(b"{\"b\""));
    }

    #[test]
    fn no_plan_is_identity() {
        let data = watch_stream();
        for chunks in chunkings(&data) {
            assert_eq!(run(&StreamPlan::default(), &chunks), data);
        }
    }

    #[test]
    fn cut_after_events() {
        let data = watch_stream();
        let plan = StreamPlan {
            max_events: Some(2),
            ..Default::default()
        };
        let want = [ev("ADDED", "a"), ev("BOOKMARK", "")].concat().into_bytes();
        for chunks in chunkings(&data) {
            assert_eq!(run(&plan, &chunks), want);
        }
        // Fewer events than the limit: everything passes.
        let plan = StreamPlan {
            max_events: Some(100),
            ..Default::default()
        };
        assert_eq!(run(&plan, &[Bytes::from(data.clone())]), data);
        // Zero: nothing.
        let plan = StreamPlan {
            max_events: Some(0),
            ..Default::default()
        };
        assert!(run(&plan, &[Bytes::from(data)]).is_empty());
    }

    #[test]
    fn drop_bookmarks_then_cut() {
        let data = watch_stream();
        let plan = StreamPlan {
            drop_bookmarks: true,
            max_events: Some(3),
            ..Default::default()
        };
        for chunks in chunkings(&data) {
            let got = lines(&run(&plan, &chunks));
            let types: Vec<_> = got
                .iter()
                .map(|v| v["type"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(types, ["ADDED", "MODIFIED", "ADDED"]);
        }
    }

    #[test]
    fn gone_event() {
        let data = watch_stream();
        let plan = StreamPlan {
            gone_at: Some(1),
            gone_message: Some("too old resource version: 1 (2)".into()),
            max_events: Some(4),
            ..Default::default()
        };
        for chunks in chunkings(&data) {
            let got = lines(&run(&plan, &chunks));
            assert_eq!(got.len(), 2);
            assert_eq!(got[0]["type"], "ADDED");
            assert_eq!(got[1]["type"], "ERROR");
            assert_eq!(got[1]["object"]["code"], 410);
            assert_eq!(
                got[1]["object"]["message"],
                "too old resource version: 1 (2)"
            );
        }
        // At zero events the error comes first, before anything upstream sends.
        let plan = StreamPlan {
            gone_at: Some(0),
            ..Default::default()
        };
        let got = lines(&run(&plan, &[]));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["type"], "ERROR");
    }

    #[test]
    fn cut_after_bytes_mid_line() {
        let data = watch_stream();
        for n in [0, 1, 10, 100, data.len() - 1, data.len(), data.len() + 10] {
            let plan = StreamPlan {
                max_bytes: Some(n as u64),
                ..Default::default()
            };
            for chunks in chunkings(&data).into_iter().step_by(31) {
                assert_eq!(run(&plan, &chunks), data[..n.min(data.len())]);
            }
            // Bytes cuts also work on non-watch streams (logs).
            let mut s = Shaper::new(plan.clone(), false);
            s.push(Bytes::from(data.clone()));
            let mut got = Vec::new();
            while let Some(b) = s.pop() {
                got.extend_from_slice(&b);
            }
            assert_eq!(got, data[..n.min(data.len())]);
        }
    }

    #[test]
    fn event_rules_ignored_when_not_a_json_stream() {
        let data = watch_stream();
        let plan = StreamPlan {
            max_events: Some(1),
            drop_bookmarks: true,
            ..Default::default()
        };
        let mut s = Shaper::new(plan, false);
        s.push(Bytes::from(data.clone()));
        let mut got = Vec::new();
        while let Some(b) = s.pop() {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn bookmark_detection() {
        assert!(is_bookmark(br#"{"type":"BOOKMARK","object":{}}"#));
        assert!(is_bookmark(
            br#"{"object":{"metadata":{}}, "type" : "BOOKMARK"}"#
        ));
        assert!(!is_bookmark(
            br#"{"type":"ADDED","object":{"metadata":{"name":"BOOKMARK"}}}"#
        ));
        assert!(!is_bookmark(br#"{"type":"ADDED","object":{}}"#));
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>;

    fn body_of(chunks: Vec<Bytes>) -> StreamBody<futures::stream::Iter<Frames>> {
        StreamBody::new(futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(c)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn proxy_body_shapes_and_passes() {
        let data = watch_stream();
        let chunks: Vec<Bytes> = data.chunks(5).map(Bytes::copy_from_slice).collect();
        let b = ProxyBody::pass(body_of(chunks.clone()), None);
        assert_eq!(b.collect().await.unwrap().to_bytes(), data);

        let plan = StreamPlan {
            max_events: Some(3),
            ..Default::default()
        };
        let b = ProxyBody::shaped(body_of(chunks.clone()), plan, true, None);
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(lines(&got).len(), 3);

        let plan = StreamPlan {
            max_events: Some(3),
            abrupt: true,
            ..Default::default()
        };
        let b = ProxyBody::shaped(body_of(chunks), plan, true, None);
        assert!(b.collect().await.is_err());

        let b = ProxyBody::<Incoming>::full("abc");
        assert_eq!(b.size_hint().exact(), Some(3));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");
    }

    #[tokio::test]
    async fn proxy_body_cut_after_seconds() {
        // One event now, then an upstream that never sends again.
        let first = Bytes::from(ev("ADDED", "a"));
        let s = futures::stream::iter(vec![Ok::<_, Infallible>(Frame::data(first.clone()))])
            .chain(futures::stream::pending());
        let plan = StreamPlan {
            max_duration: Some(Duration::from_millis(200)),
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let b = ProxyBody::shaped(StreamBody::new(s), plan, true, None);
        let got = b.collect().await.unwrap().to_bytes();
        let took = start.elapsed();
        assert_eq!(got, first);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    use futures::StreamExt;
}
