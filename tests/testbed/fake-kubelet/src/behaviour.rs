//! Per-pod behaviour chosen by `testbed.prefect.io/*` annotations.
//!
//! The table of annotations lives in the crate documentation (`README.md`); this module only
//! parses them. Parsing never fails: a value that does not parse is reported as a warning (the
//! pod task turns warnings into a `FakeKubeletBadAnnotation` Warning event) and the default is
//! used instead.
//!
//! Container-level keys may be given per container with a `.<container-name>` suffix, which wins
//! over the pod-wide key: `testbed.prefect.io/exit-code.sidecar: "0"`.

use std::collections::BTreeMap;
use std::time::Duration;

pub const PREFIX: &str = "testbed.prefect.io/";

/// Keys whose presence selects scripted mode when `mode` is not given.
const SCRIPT_KEYS: &[&str] = &[
    "exit-code",
    "run-seconds",
    "log-lines",
    "log-interval-ms",
    "log-rate",
    "log-line-bytes",
    "log-non-utf8",
    "log-long-line-bytes",
    "log-text",
    "oom",
    "restart-count",
    "ignore-sigterm",
    "termination-message",
    "log-stamps",
];

/// Keys valid in both modes.
const COMMON_KEYS: &[&str] = &[
    "mode",
    "scale-up-seconds",
    "image-pull-failures",
    "start-delay-seconds",
    "image-pull",
    "invalid-image",
    "create-container-config-error",
    "evict-after-seconds",
    "evict-message",
    "evict-style",
    "node-lost-after-seconds",
    "restart-backoff-seconds",
];

pub const DEFAULT_CONFIG_ERROR: &str = "secret \"testbed-missing-secret\" not found";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exec,
    Script,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullFailure {
    /// Stay in `ErrImagePull`.
    ErrImagePull,
    /// `ErrImagePull` once, then `ImagePullBackOff` (what a user normally sees).
    ImagePullBackOff,
}

/// How an eviction shows on the pod: as a v1.20 kubelet writes it (phase, reason and message
/// only), or as a 1.27+ kubelet does (the `DisruptionTarget` condition, the containers' ends
/// and the other conditions kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictStyle {
    V1_20,
    V1_27,
}

/// Pod-wide behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct PodBehaviour {
    pub mode: Mode,
    /// When the scheduler finds no node for the pod, a node autoscaler adds one this long
    /// after (a `TriggeredScaleUp` Event at once); `None`: it adds none (`NotTriggerScaleUp`).
    pub scale_up_after: Option<Duration>,
    pub evict_after: Option<Duration>,
    pub evict_message: Option<String>,
    pub evict_style: EvictStyle,
    pub node_lost_after: Option<Duration>,
    pub restart_backoff: Option<Duration>,
    pub warnings: Vec<String>,
}

/// Behaviour of one container (pod-wide keys with per-container overrides applied).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerBehaviour {
    pub start_delay: Duration,
    pub image_pull: Option<PullFailure>,
    /// With `image_pull`: the pull fails this many times, then succeeds (None: never).
    pub image_pull_failures: Option<u64>,
    pub invalid_image: bool,
    pub config_error: Option<String>,
    pub script: ScriptSpec,
}

/// What a scripted container does (ignored in exec mode).
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptSpec {
    pub exit_code: i32,
    pub run: Duration,
    pub log_lines: u64,
    /// Time between two lines; `None`: spread over `run`, or all at once when `run` is zero.
    pub log_interval: Option<Duration>,
    pub log_line_bytes: Option<usize>,
    pub log_non_utf8: bool,
    pub log_long_line_bytes: Option<usize>,
    pub log_text: Option<String>,
    pub oom: bool,
    pub restart_count: u32,
    pub ignore_sigterm: bool,
    pub termination_message: Option<String>,
    /// Each line ends with ` @<unix microseconds>` of its writing, and the termination message
    /// (unless one is given) is `ended @<unix microseconds>` of the script's end: what a
    /// benchmark needs to time log lines and run ends to the worker's output, which the API's
    /// second-resolution timestamps cannot.
    pub log_stamps: bool,
}

impl Default for ScriptSpec {
    fn default() -> Self {
        ScriptSpec {
            exit_code: 0,
            run: Duration::ZERO,
            log_lines: 0,
            log_interval: None,
            log_line_bytes: None,
            log_non_utf8: false,
            log_long_line_bytes: None,
            log_text: None,
            oom: false,
            restart_count: 0,
            ignore_sigterm: false,
            termination_message: None,
            log_stamps: false,
        }
    }
}

/// Annotation lookup with warnings collected along the way.
pub struct Annotations<'a> {
    map: &'a BTreeMap<String, String>,
    warnings: Vec<String>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "yes" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "no" => Some(false),
        _ => None,
    }
}

fn parse_seconds(v: &str) -> Option<Duration> {
    let f: f64 = v.trim().parse().ok()?;
    if f.is_finite() && f >= 0.0 {
        Some(Duration::from_secs_f64(f))
    } else {
        None
    }
}

impl<'a> Annotations<'a> {
    pub fn new(map: &'a BTreeMap<String, String>) -> Self {
        let mut warnings = Vec::new();
        for key in map.keys() {
            if let Some(rest) = key.strip_prefix(PREFIX) {
                let base = rest.split('.').next().unwrap_or(rest);
                if base.starts_with("unschedulable") {
                    // Gone since the testbed runs the real kube-scheduler.
                    warnings.push(format!(
                        "unknown annotation {key}: the kube-scheduler decides what is \
                         unschedulable; give the pod a nodeSelector no node has (and \
                         {PREFIX}scale-up-seconds for a node autoscaler)"
                    ));
                } else if !SCRIPT_KEYS.contains(&base) && !COMMON_KEYS.contains(&base) {
                    warnings.push(format!("unknown annotation {key}"));
                }
            }
        }
        Annotations { map, warnings }
    }

    fn raw(&self, key: &str, container: Option<&str>) -> Option<(String, &'a str)> {
        if let Some(c) = container {
            let k = format!("{PREFIX}{key}.{c}");
            if let Some(v) = self.map.get(&k) {
                return Some((k, v.as_str()));
            }
        }
        let k = format!("{PREFIX}{key}");
        self.map.get(&k).map(|v| (k, v.as_str()))
    }

    fn get<T>(
        &mut self,
        key: &str,
        container: Option<&str>,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let (k, v) = self.raw(key, container)?;
        match parse(v) {
            Some(t) => Some(t),
            None => {
                self.warnings
                    .push(format!("annotation {k}={v:?} is not {what}; ignored"));
                None
            }
        }
    }

    fn string(&mut self, key: &str, container: Option<&str>) -> Option<String> {
        self.raw(key, container).map(|(_, v)| v.to_string())
    }

    fn flag(&mut self, key: &str, container: Option<&str>) -> bool {
        self.get(key, container, "a boolean", parse_bool)
            .unwrap_or(false)
    }

    fn seconds(&mut self, key: &str, container: Option<&str>) -> Option<Duration> {
        self.get(
            key,
            container,
            "a non-negative number of seconds",
            parse_seconds,
        )
    }

    fn count<T: std::str::FromStr>(&mut self, key: &str, container: Option<&str>) -> Option<T> {
        self.get(key, container, "a non-negative integer", |v| {
            v.trim().parse::<T>().ok()
        })
    }

    pub fn has_script_keys(&self) -> bool {
        self.map.keys().any(|k| {
            k.strip_prefix(PREFIX)
                .map(|rest| SCRIPT_KEYS.contains(&rest.split('.').next().unwrap_or(rest)))
                .unwrap_or(false)
        })
    }

    pub fn pod(&mut self) -> PodBehaviour {
        let mode = match self.raw("mode", None) {
            Some((_, "script")) => Mode::Script,
            Some((_, "exec")) => Mode::Exec,
            Some((k, v)) => {
                self.warnings.push(format!(
                    "annotation {k}={v:?} is not 'script' or 'exec'; ignored"
                ));
                if self.has_script_keys() {
                    Mode::Script
                } else {
                    Mode::Exec
                }
            }
            None if self.has_script_keys() => Mode::Script,
            None => Mode::Exec,
        };
        let evict_style = self
            .get("evict-style", None, "v1.20 or v1.27", |v| match v.trim() {
                "v1.20" | "1.20" => Some(EvictStyle::V1_20),
                "v1.27" | "1.27" => Some(EvictStyle::V1_27),
                _ => None,
            })
            .unwrap_or(EvictStyle::V1_20);
        PodBehaviour {
            mode,
            scale_up_after: self.seconds("scale-up-seconds", None),
            evict_after: self.seconds("evict-after-seconds", None),
            evict_message: self.string("evict-message", None),
            evict_style,
            node_lost_after: self.seconds("node-lost-after-seconds", None),
            restart_backoff: self.seconds("restart-backoff-seconds", None),
            warnings: Vec::new(),
        }
    }

    pub fn container(&mut self, name: &str) -> ContainerBehaviour {
        let c = Some(name);
        let image_pull = self.get(
            "image-pull",
            c,
            "ImagePullBackOff or ErrImagePull",
            |v| match v.trim() {
                "ImagePullBackOff" => Some(Some(PullFailure::ImagePullBackOff)),
                "ErrImagePull" => Some(Some(PullFailure::ErrImagePull)),
                "" | "false" | "none" => Some(None),
                _ => None,
            },
        );
        let config_error = self
            .raw("create-container-config-error", c)
            .and_then(|(_, v)| match parse_bool(v) {
                Some(true) => Some(DEFAULT_CONFIG_ERROR.to_string()),
                Some(false) => None,
                None if v.trim().is_empty() => None,
                None => Some(v.to_string()),
            });
        let log_interval = match (
            self.get("log-interval-ms", c, "a number of milliseconds", |v| {
                let f: f64 = v.trim().parse().ok()?;
                (f.is_finite() && f >= 0.0).then(|| Duration::from_secs_f64(f / 1000.0))
            }),
            self.get(
                "log-rate",
                c,
                "a positive number of lines per second",
                |v| {
                    let f: f64 = v.trim().parse().ok()?;
                    (f.is_finite() && f > 0.0).then(|| Duration::from_secs_f64(1.0 / f))
                },
            ),
        ) {
            (Some(i), _) => Some(i),
            (None, r) => r,
        };
        let script = ScriptSpec {
            exit_code: self
                .get("exit-code", c, "an integer", |v| {
                    v.trim().parse::<i32>().ok()
                })
                .unwrap_or(0),
            run: self.seconds("run-seconds", c).unwrap_or(Duration::ZERO),
            log_lines: self.count("log-lines", c).unwrap_or(0),
            log_interval,
            log_line_bytes: self.count("log-line-bytes", c),
            log_non_utf8: self.flag("log-non-utf8", c),
            log_long_line_bytes: self.count("log-long-line-bytes", c),
            log_text: self.string("log-text", c),
            oom: self.flag("oom", c),
            restart_count: self.count("restart-count", c).unwrap_or(0),
            ignore_sigterm: self.flag("ignore-sigterm", c),
            termination_message: self.string("termination-message", c),
            log_stamps: self.flag("log-stamps", c),
        };
        ContainerBehaviour {
            start_delay: self
                .seconds("start-delay-seconds", c)
                .unwrap_or(Duration::ZERO),
            image_pull_failures: self.count("image-pull-failures", c),
            image_pull: match (image_pull.flatten(), self.raw("image-pull-failures", c)) {
                // A number of failures alone means the usual sight: ImagePullBackOff.
                (None, Some(_)) => Some(PullFailure::ImagePullBackOff),
                (kind, _) => kind,
            },
            invalid_image: self.flag("invalid-image", c),
            config_error,
            script,
        }
    }

    pub fn into_warnings(self) -> Vec<String> {
        self.warnings
    }
}

/// Parses everything for a pod: pod-wide behaviour (with all warnings) and one
/// [`ContainerBehaviour`] per named container, in the order given.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    containers: &[&str],
) -> (PodBehaviour, Vec<ContainerBehaviour>) {
    let mut a = Annotations::new(annotations);
    let mut pod = a.pod();
    let cs = containers.iter().map(|c| a.container(c)).collect();
    pod.warnings = a.into_warnings();
    (pod, cs)
}

/// The lines a scripted container writes, in order (without timing).
pub fn script_lines(s: &ScriptSpec) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    if let Some(text) = &s.log_text {
        for l in text.split('\n') {
            out.push(l.as_bytes().to_vec());
        }
        if text.ends_with('\n') {
            out.pop();
        }
    } else {
        for n in 1..=s.log_lines {
            let mut line = format!("line {n}").into_bytes();
            if s.log_non_utf8 && n % 10 == 0 {
                line.extend_from_slice(b" \xff\xfe\xc3(");
            }
            if let Some(width) = s.log_line_bytes {
                if line.len() < width {
                    line.push(b' ');
                    line.resize(width.max(line.len()), b'x');
                }
            }
            out.push(line);
        }
    }
    if let Some(n) = s.log_long_line_bytes {
        let mut long = b"long ".to_vec();
        long.resize(n.max(long.len()), b'y');
        long.truncate(n);
        let at = out.len().div_ceil(2);
        out.insert(at, long);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_is_exec_with_defaults() {
        let (p, cs) = parse(&BTreeMap::new(), &["main"]);
        assert_eq!(p.mode, Mode::Exec);
        assert!(p.scale_up_after.is_none());
        assert_eq!(p.evict_style, EvictStyle::V1_20);
        assert!(p.warnings.is_empty());
        assert_eq!(cs[0].script, ScriptSpec::default());
        assert_eq!(cs[0].start_delay, Duration::ZERO);
    }

    #[test]
    fn script_keys_select_script_mode() {
        let (p, cs) = parse(
            &ann(&[("exit-code", "3"), ("run-seconds", "1.5")]),
            &["main"],
        );
        assert_eq!(p.mode, Mode::Script);
        assert_eq!(cs[0].script.exit_code, 3);
        assert_eq!(cs[0].script.run, Duration::from_millis(1500));
        // common keys alone keep exec mode
        let (p, _) = parse(&ann(&[("start-delay-seconds", "2")]), &["main"]);
        assert_eq!(p.mode, Mode::Exec);
        // explicit mode wins
        let (p, _) = parse(&ann(&[("mode", "exec"), ("exit-code", "1")]), &["main"]);
        assert_eq!(p.mode, Mode::Exec);
        let (p, _) = parse(&ann(&[("mode", "script")]), &["main"]);
        assert_eq!(p.mode, Mode::Script);
    }

    #[test]
    fn per_container_override() {
        let (_, cs) = parse(
            &ann(&[("exit-code", "2"), ("exit-code.side", "0")]),
            &["main", "side"],
        );
        assert_eq!(cs[0].script.exit_code, 2);
        assert_eq!(cs[1].script.exit_code, 0);
    }

    #[test]
    fn bad_values_warn_and_default() {
        let (p, cs) = parse(
            &ann(&[
                ("exit-code", "x"),
                ("run-seconds", "-1"),
                ("image-pull", "Nope"),
                ("bogus", "1"),
                ("mode", "other"),
            ]),
            &["main"],
        );
        assert_eq!(cs[0].script.exit_code, 0);
        assert_eq!(cs[0].script.run, Duration::ZERO);
        assert_eq!(cs[0].image_pull, None);
        assert_eq!(p.warnings.len(), 5, "{:?}", p.warnings);
        assert_eq!(p.mode, Mode::Script);
    }

    #[test]
    fn scale_up_and_eviction_style() {
        let (p, _) = parse(
            &ann(&[("scale-up-seconds", "2.5"), ("evict-style", "v1.27")]),
            &["m"],
        );
        assert_eq!(p.scale_up_after, Some(Duration::from_millis(2500)));
        assert_eq!(p.evict_style, EvictStyle::V1_27);
        // The scheduler decides what is unschedulable now: the old key is unknown.
        let (p, _) = parse(&ann(&[("unschedulable", "true")]), &["m"]);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn failures_and_rates() {
        let (_, cs) = parse(
            &ann(&[
                ("image-pull", "ErrImagePull"),
                ("create-container-config-error", "true"),
                ("log-rate", "50"),
                ("oom", "true"),
            ]),
            &["m"],
        );
        assert_eq!(cs[0].image_pull, Some(PullFailure::ErrImagePull));
        assert_eq!(cs[0].config_error.as_deref(), Some(DEFAULT_CONFIG_ERROR));
        assert_eq!(cs[0].script.log_interval, Some(Duration::from_millis(20)));
        assert!(cs[0].script.oom);
        let (_, cs) = parse(
            &ann(&[
                ("create-container-config-error", "configmap \"x\" not found"),
                ("log-interval-ms", "5"),
                ("log-rate", "1"),
            ]),
            &["m"],
        );
        assert_eq!(
            cs[0].config_error.as_deref(),
            Some("configmap \"x\" not found")
        );
        assert_eq!(cs[0].script.log_interval, Some(Duration::from_millis(5)));
    }

    #[test]
    fn numbered_lines_padding_non_utf8_and_long_line() {
        let s = ScriptSpec {
            log_lines: 20,
            log_line_bytes: Some(16),
            log_non_utf8: true,
            log_long_line_bytes: Some(1000),
            ..Default::default()
        };
        let lines = script_lines(&s);
        assert_eq!(lines.len(), 21);
        assert_eq!(lines[0], b"line 1 xxxxxxxxx".to_vec());
        assert_eq!(lines[0].len(), 16);
        assert_eq!(lines[10].len(), 1000);
        assert!(lines[10].starts_with(b"long "));
        assert!(std::str::from_utf8(&lines[9]).is_err());
        assert!(lines[9].starts_with(b"line 10 "));
        assert_eq!(&lines[11][..8], b"line 11 ");
        assert!(std::str::from_utf8(&lines[8]).is_ok());
    }

    #[test]
    fn log_text_lines() {
        let s = ScriptSpec {
            log_text: Some("a\nb\n".into()),
            log_lines: 5,
            ..Default::default()
        };
        assert_eq!(script_lines(&s), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
