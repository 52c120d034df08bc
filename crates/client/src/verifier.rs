//! Many items awaited at once: every case whose values are set waits here for the platform's imports,
//! looked at in rounds by one task.
//!
//! A waiting case costs its expectations and a due time, nothing more: no task of its own, no upload
//! slot. A round looks at the cases that are due, each on the schedule of [`Client::await_values`] (a
//! pause of an eighth of its wait so far), together with those due within half a pause, so that cases
//! share rounds. A round reads a target's items with one listing when that takes no more requests than
//! reading its due items one by one, and the upload sessions likewise, so hundreds of waiting cases cost
//! a few requests a round. What counts as arrived, failed or too late is [`verify`](super::verify)'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::verify::{Awaiting, Expectation, VerifyTiming, pending, session_failure, session_for};
use super::{Client, GcError, Item, Target, UploadSession};

/// Requests of one round in flight at once when items or sessions are read one by one.
const PARALLEL_READS: usize = 8;
/// Rows per page of a listing (the platform's largest page): what a listing costs in requests.
const ROWS_PER_PAGE: u64 = 1000;
/// The key under which the count of upload sessions is kept beside the targets' item counts.
const SESSIONS: &str = "upload-sessions";

/// The handle of the task that awaits imports. The task ends with it.
pub struct Verifier {
    tx: mpsc::UnboundedSender<Waiting>,
    task: tokio::task::AbortHandle,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One item's values, awaited.
struct Waiting {
    target: Target,
    item_pk: String,
    expectations: Vec<Expectation>,
    /// When the values were set: the schedule and the deadlines count from here.
    since: Instant,
    /// The deadlines of this case (a folder sets its own for DICOM image sets).
    timing: VerifyTiming,
    reply: oneshot::Sender<Result<Item, GcError>>,
}

impl Verifier {
    /// Start the task; needs a Tokio runtime.
    pub fn start(client: Client, timing: VerifyTiming) -> Verifier {
        let (tx, rx) = mpsc::unbounded_channel();
        let rounds = Rounds {
            client,
            timing,
            cases: Vec::new(),
            counts: HashMap::new(),
        };
        let task = tokio::spawn(rounds.run(rx)).abort_handle();
        Verifier { tx, task }
    }

    /// Wait until the item shows every expectation and return it, as [`Client::await_values`] does; its
    /// values were set `waited` ago (more than nothing when a wait is resumed after a restart).
    pub async fn await_values(
        &self,
        target: &Target,
        item_pk: &str,
        expectations: &[Expectation],
        waited: Duration,
        timing: &VerifyTiming,
    ) -> Result<Item, GcError> {
        let stopped = || GcError::Unavailable {
            context: format!("verifying item {item_pk} of {}", target.slug),
            message: "the verification was stopped".into(),
            retry_after: None,
        };
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        let waiting = Waiting {
            target: target.clone(),
            item_pk: item_pk.to_owned(),
            expectations: expectations.to_vec(),
            since: now.checked_sub(waited).unwrap_or(now),
            timing: timing.clone(),
            reply,
        };
        self.tx.send(waiting).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A waiting item and what earlier rounds learnt about it.
struct Case {
    w: Waiting,
    /// The API URL of each image expectation's upload session, once a listing showed it.
    sessions: Vec<Option<String>>,
    due: Instant,
    /// The pause that led to `due`.
    pause: Duration,
}

impl Case {
    /// Due now, or within half its pause: looking early never sees an import later, and lets cases
    /// share rounds.
    fn due_by(&self, now: Instant) -> bool {
        self.due <= now + self.pause / 2
    }

    fn key(&self) -> String {
        format!("{:?}/{}", self.w.target.kind, self.w.target.pk)
    }
}

/// What a round decided for a case.
type Finished = Vec<(usize, Result<Item, GcError>)>;
/// Due cases still waiting, with the expectations they do not meet yet.
type Still = Vec<(usize, Vec<usize>)>;

/// Requests a listing of `count` rows takes; one when the count is not known yet.
fn pages(count: Option<&u64>) -> usize {
    count.map_or(1, |n| n.div_ceil(ROWS_PER_PAGE).max(1) as usize)
}

struct Rounds {
    client: Client,
    timing: VerifyTiming,
    cases: Vec<Case>,
    /// Rows of each list when it was last read (a target's items by its key, the sessions under
    /// [`SESSIONS`]): what the next listing of it will cost.
    counts: HashMap<String, u64>,
}

impl Rounds {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Waiting>) {
        loop {
            let next = self.cases.iter().map(|c| c.due).min();
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => self.add(w),
                    None => return,
                },
                () = sleep_until(next) => self.round().await,
            }
        }
    }

    /// A new case is first looked at within the shortest pause, in any round before that: cases whose
    /// values are set in a burst share their first round.
    fn add(&mut self, w: Waiting) {
        let first = self.timing.first_poll;
        self.cases.push(Case {
            sessions: vec![None; w.expectations.len()],
            due: Instant::now() + first,
            pause: first * 2,
            w,
        });
    }

    /// Look at the due cases: their items, then the sessions of pending images, then the deadlines.
    async fn round(&mut self) {
        let now = Instant::now();
        // A caller that gave up (its delivery was cut off) needs no answer.
        self.cases.retain(|c| !c.w.reply.is_closed());
        let due: Vec<usize> = (0..self.cases.len())
            .filter(|&i| self.cases[i].due_by(now))
            .collect();
        if due.is_empty() {
            return;
        }
        let due_set: HashSet<usize> = due.iter().copied().collect();
        let mut finished: Finished = Vec::new();
        let mut still: Still = Vec::new();
        for (i, item) in self.read_items(&due).await {
            match item {
                Err(e) => finished.push((i, Err(e))),
                Ok(item) => {
                    let p = pending(&item, &self.cases[i].w.expectations);
                    if p.is_empty() {
                        finished.push((i, Ok(item)));
                    } else if due_set.contains(&i) {
                        still.push((i, p));
                    }
                }
            }
        }
        self.check_sessions(&mut still, &mut finished).await;
        self.check_deadlines(&mut still, &mut finished).await;
        let now = Instant::now();
        for (i, p) in &still {
            let c = &mut self.cases[*i];
            let pause =
                c.w.timing
                    .next_pause(&c.w.expectations, p, c.w.since.elapsed());
            c.due = now + pause;
            c.pause = pause;
        }
        tracing::debug!(
            due = due.len(),
            done = finished.len(),
            waiting = self.cases.len() - finished.len(),
            "verification round"
        );
        self.finish(finished);
    }

    /// Answer the finished cases and forget them.
    fn finish(&mut self, mut finished: Finished) {
        // Highest index first: each removal moves only a case from the end, which is done with.
        finished.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        finished.dedup_by_key(|(i, _)| *i);
        for (i, result) in finished {
            let case = self.cases.swap_remove(i);
            let _ = case.w.reply.send(result);
        }
    }

    /// The items of the due cases (and of any other case of a target that was listed). A target's items
    /// are listed when that costs no more requests than reading its due items one by one; an item a
    /// listing missed (archive items have no defined order) is read on its own.
    async fn read_items(&mut self, due: &[usize]) -> Vec<(usize, Result<Item, GcError>)> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in due {
            groups.entry(self.cases[i].key()).or_default().push(i);
        }
        let mut out = Vec::new();
        let mut singles = Vec::new();
        for (key, members) in groups {
            let listed = members.len() >= 2 && pages(self.counts.get(&key)) <= members.len();
            if !listed {
                singles.extend(members);
                continue;
            }
            let target = self.cases[members[0]].w.target.clone();
            match self.client.all_items(&target).await {
                Ok((items, count)) => {
                    self.counts.insert(key.clone(), count);
                    let by_pk: HashMap<&str, &Item> =
                        items.iter().map(|it| (it.pk.as_str(), it)).collect();
                    for (i, c) in self.cases.iter().enumerate() {
                        if c.key() != key {
                            continue;
                        }
                        match by_pk.get(c.w.item_pk.as_str()) {
                            Some(item) => out.push((i, Ok((*item).clone()))),
                            None if members.contains(&i) => singles.push(i),
                            None => {}
                        }
                    }
                }
                Err(e) => out.extend(members.into_iter().map(|i| (i, Err(e.duplicate())))),
            }
        }
        let client = &self.client;
        let reads: Vec<_> = singles
            .into_iter()
            .map(|i| {
                let w = &self.cases[i].w;
                async move { (i, client.get_item(&w.target, &w.item_pk).await) }
            })
            .collect();
        out.extend(bounded(reads).await);
        out
    }

    /// Fail the cases whose image import session says `Failed`, and learn the sessions of the others.
    /// The sessions are listed when one is not known yet (a listing is the only way to find it) or
    /// when that costs no more requests than reading the known ones one by one.
    async fn check_sessions(&mut self, still: &mut Still, finished: &mut Finished) {
        let wanted: Vec<(usize, usize)> = still
            .iter()
            .flat_map(|(i, p)| p.iter().map(move |&e| (*i, e)))
            .filter(|&(i, e)| {
                matches!(
                    self.cases[i].w.expectations[e].awaiting,
                    Awaiting::Image { .. }
                )
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let unknown = wanted
            .iter()
            .any(|&(i, e)| self.cases[i].sessions[e].is_none());
        let looked = if unknown || pages(self.counts.get(SESSIONS)) <= wanted.len() {
            self.list_sessions(&wanted).await
        } else {
            self.read_sessions(&wanted).await
        };
        let mut failed = HashSet::new();
        for ((i, e), session) in looked {
            if failed.contains(&i) {
                continue;
            }
            match session {
                Err(err) => {
                    failed.insert(i);
                    finished.push((i, Err(err)));
                }
                Ok(Some(s)) => match session_failure(&self.cases[i].w.expectations[e], &s) {
                    Some(err) => {
                        failed.insert(i);
                        finished.push((i, Err(err)));
                    }
                    None => self.cases[i].sessions[e] = Some(s.api_url),
                },
                Ok(None) => {}
            }
        }
        still.retain(|(i, _)| !failed.contains(i));
    }

    /// One listing of every session: a known session is found by its URL (after success its uploads
    /// are gone from it, and it can still fail afterwards), an unknown one by its uploads.
    async fn list_sessions(&mut self, wanted: &[(usize, usize)]) -> Vec<LookedUp> {
        match self.client.all_upload_sessions().await {
            Ok((all, count)) => {
                self.counts.insert(SESSIONS.into(), count);
                wanted
                    .iter()
                    .map(|&(i, e)| {
                        let c = &self.cases[i];
                        let found = match (&c.sessions[e], &c.w.expectations[e].awaiting) {
                            (Some(url), _) => all.iter().find(|s| &s.api_url == url),
                            (None, Awaiting::Image { uploads }) => session_for(&all, uploads),
                            (None, _) => None,
                        };
                        ((i, e), Ok(found.cloned()))
                    })
                    .collect()
            }
            Err(err) => wanted.iter().map(|&w| (w, Err(err.duplicate()))).collect(),
        }
    }

    /// Each known session read on its own.
    async fn read_sessions(&self, wanted: &[(usize, usize)]) -> Vec<LookedUp> {
        let client = &self.client;
        let reads: Vec<_> = wanted
            .iter()
            .map(|&(i, e)| {
                let url = self.cases[i].sessions[e].as_deref();
                async move {
                    let session = match url {
                        Some(url) => client.session(url).await.map(Some),
                        None => Ok(None),
                    };
                    ((i, e), session)
                }
            })
            .collect();
        bounded(reads).await
    }

    /// Fail the cases with an expectation still pending after its deadline.
    async fn check_deadlines(&self, still: &mut Still, finished: &mut Finished) {
        let mut failed = HashSet::new();
        for (i, p) in still.iter() {
            let c = &self.cases[*i];
            let waited = c.w.since.elapsed();
            for &e in p {
                if let Err(err) = self
                    .client
                    .check_deadline(&c.w.expectations[e], waited, &c.w.timing)
                    .await
                {
                    failed.insert(*i);
                    finished.push((*i, Err(err)));
                    break;
                }
            }
        }
        still.retain(|(i, _)| !failed.contains(i));
    }
}

/// A session looked up for an expectation: (case, expectation) and what was found.
type LookedUp = ((usize, usize), Result<Option<UploadSession>, GcError>);

/// Run the reads, at most [`PARALLEL_READS`] at once.
async fn bounded<F: std::future::Future>(reads: Vec<F>) -> Vec<F::Output> {
    futures_util::stream::iter(reads)
        .buffer_unordered(PARALLEL_READS)
        .collect()
        .await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
