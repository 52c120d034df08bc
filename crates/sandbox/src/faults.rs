//! Fault injection, so that clients can be tested against what the infrastructure in front of the platform
//! really does: 5xx without JSON, 429 with `Retry-After`, slow answers, connections cut mid-request or
//! mid-response, the "too many uploads" quota, and background imports that fail whatever their files
//! (the platform's storage or its image store refusing them).
//!
//! A fault either happens *before* the request is handled (nothing changed on the server) or *after* it
//! (the server committed, the client never saw the answer: the cause of duplicate items after retries).
//! Decisions are drawn from a seeded RNG so that a run can be reproduced.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status instead: 500 as the site's HTML page, 502/503/504/429 as a proxy would
    /// (no JSON), optionally with `Retry-After: <seconds>`.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait this long before handling the request.
    Latency { ms: u64 },
    /// Close the connection: before handling without any answer (the request body is not read), after
    /// handling in the middle of the response body.
    Drop,
    /// `POST uploads/` answers the "too many uploads" 400 once the caller owns at least this many uploads.
    TooManyUploads { threshold: usize },
    /// The request is answered as usual, but every background import it schedules (the values a PATCH
    /// of an item or display set sets from uploads) fails as the platform's do when its storage or image
    /// store fails: a DICOM image set or a file with a notification only, an image's upload session
    /// `Failed` with "An unexpected error occurred".
    ImportFails,
}

/// One rule: which requests, how often, what happens.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// HTTP method to match; `None` matches every method.
    pub method: Option<String>,
    /// Glob on the request path (`*` crosses `/`), e.g. `/api/v1/uploads/*`, `/s3/*`, `*`.
    pub path: String,
    /// Chance per matching request, 0.0–1.0.
    pub probability: f64,
    pub action: FaultAction,
    /// Apply after the request was handled (committed) instead of before.
    pub after: bool,
    /// Fire at most this many times (then the rule is spent).
    pub times: Option<u64>,
}

/// The serialised form of a rule, shared by the fixture's `[[fault]]` tables and `PUT /_sandbox/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// `status`, `latency`, `drop`, `too_many_uploads` or `import_fails`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
}

impl FaultSpec {
    /// Validate into a rule.
    pub fn into_rule(self) -> Result<FaultRule, String> {
        let action = match self.action.as_str() {
            "status" => {
                let status = self.status.ok_or("action \"status\" needs `status`")?;
                check_status(status)?;
                FaultAction::Status {
                    status,
                    retry_after: self.retry_after,
                }
            }
            "latency" => FaultAction::Latency {
                ms: self.ms.ok_or("action \"latency\" needs `ms`")?,
            },
            "drop" => FaultAction::Drop,
            "too_many_uploads" => FaultAction::TooManyUploads {
                threshold: self
                    .threshold
                    .ok_or("action \"too_many_uploads\" needs `threshold`")?,
            },
            "import_fails" => FaultAction::ImportFails,
            other => {
                return Err(format!(
                    "unknown fault action {other:?} (status, latency, drop, too_many_uploads, import_fails)"
                ));
            }
        };
        let extra = match &action {
            FaultAction::Status { .. } => self.ms.is_some() || self.threshold.is_some(),
            FaultAction::Latency { .. } => {
                self.status.is_some() || self.retry_after.is_some() || self.threshold.is_some()
            }
            FaultAction::Drop | FaultAction::ImportFails => {
                self.status.is_some()
                    || self.retry_after.is_some()
                    || self.ms.is_some()
                    || self.threshold.is_some()
            }
            FaultAction::TooManyUploads { .. } => {
                self.status.is_some() || self.retry_after.is_some() || self.ms.is_some()
            }
        };
        if extra {
            return Err(format!(
                "a fault with action {:?} has keys of another action",
                self.action
            ));
        }
        let rule = FaultRule {
            method: self.method.map(|m| m.to_ascii_uppercase()),
            path: self.path.unwrap_or_else(|| "*".into()),
            probability: self.probability.unwrap_or(1.0),
            action,
            after: self.after.unwrap_or(false),
            times: self.times,
        };
        rule.check()?;
        Ok(rule)
    }
}

fn check_status(status: u16) -> Result<(), String> {
    if (400..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!("fault status {status} is not a 4xx/5xx status"))
    }
}

impl FaultRule {
    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "fault probability {} is not within 0..1",
                self.probability
            ));
        }
        globset::Glob::new(&self.path)
            .map_err(|e| format!("fault path glob {:?}: {e}", self.path))?;
        if self.after
            && matches!(
                self.action,
                FaultAction::Latency { .. }
                    | FaultAction::TooManyUploads { .. }
                    | FaultAction::ImportFails
            )
        {
            return Err("`after` only applies to status and drop faults".into());
        }
        Ok(())
    }

    /// The serialised form.
    pub fn to_spec(&self) -> FaultSpec {
        let mut spec = FaultSpec {
            method: self.method.clone(),
            path: Some(self.path.clone()),
            probability: Some(self.probability),
            after: Some(self.after),
            times: self.times,
            ..FaultSpec::default()
        };
        match self.action {
            FaultAction::Status {
                status,
                retry_after,
            } => {
                spec.action = "status".into();
                spec.status = Some(status);
                spec.retry_after = retry_after;
            }
            FaultAction::Latency { ms } => {
                spec.action = "latency".into();
                spec.ms = Some(ms);
            }
            FaultAction::Drop => spec.action = "drop".into(),
            FaultAction::TooManyUploads { threshold } => {
                spec.action = "too_many_uploads".into();
                spec.threshold = Some(threshold);
            }
            FaultAction::ImportFails => spec.action = "import_fails".into(),
        }
        spec
    }
}

/// The compact command-line form: whitespace-separated words in any order.
///
/// ```text
/// [METHOD] PATH ACTION [p=PROBABILITY] [after] [times=N]
///   ACTION = STATUS [retry-after=SECONDS] | latency=MS | drop | too-many-uploads=N | import-fails
/// ```
/// e.g. `"PUT /s3/* 503 retry-after=1 p=0.2"`, `"POST /api/v1/archives/items/ 502 after times=1"`,
/// `"* latency=250"`, `"/s3/* drop p=0.05"`, `"POST /api/v1/uploads/ too-many-uploads=10"`,
/// `"PATCH /api/v1/archives/items/* import-fails"`.
impl std::str::FromStr for FaultRule {
    type Err = String;

    fn from_str(text: &str) -> Result<FaultRule, String> {
        let mut spec = FaultSpec::default();
        let mut action: Option<&str> = None;
        let mut set_action = |a: &'static str| -> Result<(), String> {
            if action.replace(a).is_some() {
                return Err(format!("fault {text:?} has more than one action"));
            }
            Ok(())
        };
        for word in text.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let number = |v: Option<&str>| -> Result<u64, String> {
                v.and_then(|v| v.trim_end_matches("ms").parse().ok())
                    .ok_or_else(|| format!("fault {text:?}: {word:?} needs a whole number"))
            };
            match key {
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
                    if value.is_none() =>
                {
                    spec.method = Some(key.into())
                }
                _ if value.is_none() && (key.starts_with('/') || key.starts_with('*')) => {
                    spec.path = Some(key.into())
                }
                "drop" if value.is_none() => set_action("drop")?,
                "import-fails" if value.is_none() => set_action("import_fails")?,
                "after" if value.is_none() => spec.after = Some(true),
                _ if value.is_none()
                    && key.len() == 3
                    && key.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    set_action("status")?;
                    spec.status = key.parse().ok();
                }
                "retry-after" => spec.retry_after = Some(number(value)?),
                "latency" => {
                    set_action("latency")?;
                    spec.ms = Some(number(value)?);
                }
                "too-many-uploads" => {
                    set_action("too_many_uploads")?;
                    spec.threshold = Some(number(value)? as usize);
                }
                "times" => spec.times = Some(number(value)?),
                "p" => {
                    spec.probability =
                        Some(value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                            format!("fault {text:?}: p= needs a number between 0 and 1")
                        })?)
                }
                _ => return Err(format!("fault {text:?}: unknown word {word:?}")),
            }
        }
        spec.action = action
            .ok_or_else(|| {
                format!(
                    "fault {text:?} has no action (STATUS, latency=MS, drop, too-many-uploads=N, import-fails)"
                )
            })?
            .into();
        if spec.path.is_none() {
            return Err(format!(
                "fault {text:?} has no path (e.g. /api/v1/uploads/* or *)"
            ));
        }
        spec.into_rule()
    }
}

/// What to do that cuts a request short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    Drop,
}

/// The faults that apply to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub latency: Duration,
    pub before: Option<Terminal>,
    pub after: Option<Terminal>,
    pub too_many_uploads: Option<usize>,
    /// The background imports the request schedules fail.
    pub import_fails: bool,
}

struct ActiveRule {
    rule: FaultRule,
    matcher: globset::GlobMatcher,
    fired: u64,
}

/// The rules in force plus the RNG that draws from them.
pub struct FaultEngine {
    rules: Vec<ActiveRule>,
    rng: StdRng,
}

impl FaultEngine {
    pub fn new(seed: Option<u64>) -> FaultEngine {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        FaultEngine {
            rules: Vec::new(),
            rng,
        }
    }

    /// Replace the rules (invalid globs were rejected when the rules were built).
    pub fn set_rules(&mut self, rules: Vec<FaultRule>) -> Result<(), String> {
        let mut active = Vec::with_capacity(rules.len());
        for rule in rules {
            rule.check()?;
            let matcher = globset::Glob::new(&rule.path)
                .map_err(|e| e.to_string())?
                .compile_matcher();
            active.push(ActiveRule {
                rule,
                matcher,
                fired: 0,
            });
        }
        self.rules = active;
        Ok(())
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules.iter().map(|r| r.rule.clone()).collect()
    }

    /// Draw the faults for one request. Every matching rule draws once, in order, so a seeded run is
    /// reproducible; the first terminal fault of each timing wins.
    pub fn decide(&mut self, method: &str, path: &str) -> Decision {
        let mut decision = Decision::default();
        for active in &mut self.rules {
            let rule = &active.rule;
            if rule.method.as_deref().is_some_and(|m| m != method) || !active.matcher.is_match(path)
            {
                continue;
            }
            if rule.times.is_some_and(|t| active.fired >= t) {
                continue;
            }
            let draw: f64 = self.rng.random();
            if draw >= rule.probability {
                continue;
            }
            active.fired += 1;
            let slot = if rule.after {
                &mut decision.after
            } else {
                &mut decision.before
            };
            match rule.action {
                FaultAction::Latency { ms } => decision.latency += Duration::from_millis(ms),
                FaultAction::TooManyUploads { threshold } => {
                    decision.too_many_uploads = Some(
                        decision
                            .too_many_uploads
                            .map_or(threshold, |t| t.min(threshold)),
                    )
                }
                FaultAction::Status {
                    status,
                    retry_after,
                } => {
                    slot.get_or_insert(Terminal::Status {
                        status,
                        retry_after,
                    });
                }
                FaultAction::Drop => {
                    slot.get_or_insert(Terminal::Drop);
                }
                FaultAction::ImportFails => decision.import_fails = true,
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_syntax() {
        let r: FaultRule = "PUT /s3/* 503 retry-after=2 p=0.5 times=3".parse().unwrap();
        assert_eq!(r.method.as_deref(), Some("PUT"));
        assert_eq!(r.path, "/s3/*");
        assert_eq!(
            r.action,
            FaultAction::Status {
                status: 503,
                retry_after: Some(2)
            }
        );
        assert_eq!((r.probability, r.after, r.times), (0.5, false, Some(3)));
        let r: FaultRule = "POST /api/v1/archives/items/ 502 after".parse().unwrap();
        assert!(r.after);
        let r: FaultRule = "* latency=250ms".parse().unwrap();
        assert_eq!(r.action, FaultAction::Latency { ms: 250 });
        let r: FaultRule = "/s3/* drop".parse().unwrap();
        assert_eq!(r.action, FaultAction::Drop);
        assert!("/s3/*".parse::<FaultRule>().is_err());
        assert!("503".parse::<FaultRule>().is_err());
        assert!("* 503 drop".parse::<FaultRule>().is_err());
        assert!("* 503 p=2".parse::<FaultRule>().is_err());
        assert!("* latency=5 after".parse::<FaultRule>().is_err());
        assert!("* 200".parse::<FaultRule>().is_err());
        assert!("* bogus".parse::<FaultRule>().is_err());
    }

    #[test]
    fn spec_round_trip() {
        let r: FaultRule = "POST /api/v1/uploads/ too-many-uploads=4 times=2"
            .parse()
            .unwrap();
        assert_eq!(r.to_spec().into_rule().unwrap(), r);
        let r: FaultRule = "PATCH /api/v1/archives/items/* import-fails times=1"
            .parse()
            .unwrap();
        assert_eq!(r.action, FaultAction::ImportFails);
        assert_eq!(r.to_spec().into_rule().unwrap(), r);
        assert!("* import-fails after".parse::<FaultRule>().is_err());
        assert!("* import-fails 503".parse::<FaultRule>().is_err());
        let mut e = FaultEngine::new(Some(1));
        e.set_rules(vec![r]).unwrap();
        assert!(e.decide("PATCH", "/api/v1/archives/items/x/").import_fails);
        assert!(!e.decide("PATCH", "/api/v1/archives/items/x/").import_fails);
    }

    #[test]
    fn seeded_decisions_repeat_and_times_limit() {
        let rules = vec![
            "GET /a/* 503 p=0.5".parse::<FaultRule>().unwrap(),
            "* latency=10".parse().unwrap(),
            "POST * drop after times=1".parse().unwrap(),
        ];
        let run = |seed| {
            let mut e = FaultEngine::new(Some(seed));
            e.set_rules(rules.clone()).unwrap();
            (0..50)
                .map(|_| e.decide("GET", "/a/b/"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let hits = run(7).iter().filter(|d| d.before.is_some()).count();
        assert!(hits > 5 && hits < 45, "{hits}");
        assert!(
            run(7)
                .iter()
                .all(|d| d.latency == Duration::from_millis(10))
        );

        let mut e = FaultEngine::new(Some(1));
        e.set_rules(rules).unwrap();
        assert_eq!(e.decide("POST", "/x/").after, Some(Terminal::Drop));
        assert_eq!(e.decide("POST", "/x/").after, None);
        assert_eq!(e.decide("GET", "/b/").before, None);
    }
}
