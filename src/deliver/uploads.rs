//! A case's uploads as one set that grows while the case is still being prepared. A file that goes as
//! it is starts at once; a de-identified copy starts the moment it is made, while later copies are still
//! being made; the ZIP of a series once its last member is. So de-identifying a case costs little more
//! than reading it, instead of a second pass before the first byte goes out.
//!
//! Nothing is created on the platform meanwhile: the item is created, and values named, only after every
//! copy is made and judged. A case refused at that point leaves uploads that no value names, which the
//! platform deletes within a day (gc-protocol.md §2.9). No file leaves before every file the case sends
//! to an image socket has been judged by its content ([`super::gate`]), and none of those that hold
//! DICOM leaves except as its de-identified copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use gc_client::models::UserUpload;
use gc_client::uploads::{LocalFile, ResumeFrom, UploadObserver};
use gc_client::{Client, GcError};

/// Where a delivery records its uploads as they go, so that an interrupted one is resumed, not sent
/// again. A hook that fails stops the delivery once its uploads end.
pub trait UploadRecord: Send + Sync {
    /// An upload was created for the file at `path` (relative to the case); no part is sent yet.
    fn upload_created(&self, _path: &str, _upload: &UserUpload) -> Result<(), String> {
        Ok(())
    }
    fn part_done(&self, _upload_pk: &str, _part: u32, _etag: &str) -> Result<(), String> {
        Ok(())
    }
    fn upload_completed(&self, _path: &str, _upload: &UserUpload) -> Result<(), String> {
        Ok(())
    }
    /// Bytes just sent, for progress bars and metrics.
    fn progress(&self, _bytes: u64) {}
    /// An upload an earlier, interrupted attempt made for this file.
    fn earlier_upload(&self, _path: &str) -> Option<EarlierUpload> {
        None
    }
}

/// What an interrupted attempt left for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlierUpload {
    /// Completed: reusable as long as the platform still has it (not consumed, not expired).
    Completed { upload_pk: String, api_url: String },
    /// Still open: resume it via list-parts.
    Open(ResumeFrom),
}

/// Why the uploads stopped.
#[derive(Debug)]
pub enum Failed {
    /// The platform's answer, or no answer.
    Platform(GcError),
    /// An upload could not be recorded.
    Record(String),
}

impl From<GcError> for Failed {
    fn from(e: GcError) -> Self {
        Failed::Platform(e)
    }
}

type Upload<'a> = Pin<Box<dyn Future<Output = Result<(String, UserUpload), GcError>> + Send + 'a>>;

/// The uploads of one delivery, each under its key: a file's path in the case, or a ZIP's
/// [`super::Bundle::key`]. The client bounds how many files and parts are in flight; here they only
/// wait their turn.
pub(super) struct Uploads<'a> {
    client: &'a Client,
    cp: &'a dyn UploadRecord,
    /// The first checkpoint that could not be recorded: the delivery stops at its end.
    failed: Arc<Mutex<Option<String>>>,
    pending: FuturesUnordered<Upload<'a>>,
    done: Vec<(String, UserUpload)>,
}

impl<'a> Uploads<'a> {
    pub(super) fn new(client: &'a Client, cp: &'a dyn UploadRecord) -> Self {
        Uploads {
            client,
            cp,
            failed: Arc::default(),
            pending: FuturesUnordered::new(),
            done: Vec::new(),
        }
    }

    /// Start sending `local` under `key`. It makes progress whenever the delivery awaits
    /// [`Uploads::alongside`] or [`Uploads::finish`].
    pub(super) fn start(&mut self, key: String, local: LocalFile) {
        let (client, cp, failed) = (self.client, self.cp, Arc::clone(&self.failed));
        self.pending.push(Box::pin(async move {
            let upload = upload_one(client, local, &key, cp, &failed).await?;
            Ok((key, upload))
        }));
    }

    /// How many uploads were started.
    pub(super) fn started(&self) -> usize {
        self.pending.len() + self.done.len()
    }

    /// Do `work` while the uploads go on. A failed upload ends it at once.
    pub(super) async fn alongside<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, Failed> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                // Uploads first: one that finished is recorded before the work's result moves on.
                biased;
                Some(r) = self.pending.next() => self.done.push(r?),
                t = &mut work => return Ok(t),
            }
        }
    }

    /// Start each copy `copies` brings (but those whose keys `held` names) until its sender is gone.
    pub(super) async fn start_each(
        &mut self,
        copies: &mut tokio::sync::mpsc::UnboundedReceiver<(String, LocalFile)>,
        held: impl Fn(&str) -> bool,
    ) -> Result<(), Failed> {
        loop {
            tokio::select! {
                biased;
                Some(r) = self.pending.next() => self.done.push(r?),
                copy = copies.recv() => match copy {
                    Some((key, local)) if !held(&key) => self.start(key, local),
                    Some(_) => {}
                    None => return Ok(()),
                },
            }
        }
    }

    /// Wait for every upload; each by its key.
    pub(super) async fn finish(mut self) -> Result<Vec<(String, UserUpload)>, Failed> {
        while let Some(r) = self.pending.next().await {
            self.done.push(r?);
        }
        if let Some(e) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Failed::Record(e));
        }
        Ok(self.done)
    }
}

/// Forwards one file's upload events to the case's checkpoints, keeping the first failure to record.
struct FileObserver<'a> {
    path: &'a str,
    cp: &'a dyn UploadRecord,
    failed: &'a Mutex<Option<String>>,
}

impl FileObserver<'_> {
    fn keep(&self, r: Result<(), String>) {
        if let Err(e) = r {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(e);
        }
    }
}

impl UploadObserver for FileObserver<'_> {
    fn created(&self, upload: &UserUpload) {
        self.keep(self.cp.upload_created(self.path, upload));
    }
    fn part_done(&self, upload_pk: &str, part: u32, etag: &str) {
        self.keep(self.cp.part_done(upload_pk, part, etag));
    }
    fn progress(&self, bytes: u64) {
        self.cp.progress(bytes);
    }
}

/// Upload one file, reusing or resuming what an interrupted attempt left where the platform still has it.
async fn upload_one(
    client: &Client,
    local: LocalFile,
    key: &str,
    cp: &dyn UploadRecord,
    failed: &Mutex<Option<String>>,
) -> Result<UserUpload, GcError> {
    let observer = FileObserver {
        path: key,
        cp,
        failed,
    };
    let resume = match cp.earlier_upload(key) {
        Some(EarlierUpload::Completed { upload_pk, api_url }) => {
            match client.get_upload(&upload_pk).await? {
                Some(u) if u.status == "Completed" && u.api_url == api_url => return Ok(u),
                _ => None,
            }
        }
        Some(EarlierUpload::Open(r)) => Some(r),
        None => None,
    };
    let upload = client
        .upload_file(&local, resume.as_ref(), &observer)
        .await?;
    observer.keep(cp.upload_completed(key, &upload));
    Ok(upload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gc_testkit::client::{data_file, local_file, sandbox_and_client};
    use std::time::Duration;

    /// The keys whose uploads the platform created, in order.
    #[derive(Default)]
    struct Created(Mutex<Vec<String>>);

    impl UploadRecord for Created {
        fn upload_created(&self, path: &str, _upload: &UserUpload) -> Result<(), String> {
            self.0.lock().unwrap().push(path.to_owned());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_copy_goes_out_before_the_next_one_is_made_and_a_held_one_waits() {
        let (_sb, client) = sandbox_and_client().await;
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<LocalFile> = [("first", 1), ("second", 2), ("member", 3)]
            .map(|(name, seed)| local_file(&data_file(dir.path(), name, 200_000, seed)))
            .into();
        let record = Created::default();
        let mut uploads = Uploads::new(&client, &record);
        let (made, mut copies) = tokio::sync::mpsc::unbounded_channel();
        let maker = async {
            made.send(("first".to_owned(), files[0].clone())).unwrap();
            // The next copy only comes once the platform has the first one's upload: what is made
            // goes out while the rest is still being made.
            let first_out = async || record.0.lock().unwrap().first().cloned();
            gc_testkit::eventually(Duration::from_secs(10), "the first upload", first_out).await;
            made.send(("second".to_owned(), files[1].clone())).unwrap();
            made.send(("member".to_owned(), files[2].clone())).unwrap();
            drop(made);
        };
        let (started, ()) = tokio::join!(
            uploads.start_each(&mut copies, |key| key == "member"),
            maker
        );
        started.unwrap();
        assert_eq!(
            uploads.started(),
            2,
            "the ZIP's member is not sent on its own"
        );
        let done = uploads.finish().await.unwrap();
        let mut keys: Vec<&str> = done.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["first", "second"]);
        assert!(done.iter().all(|(_, u)| u.status == "Completed"));
        assert_eq!(*record.0.lock().unwrap(), ["first", "second"]);
    }

    #[tokio::test]
    async fn a_failed_upload_ends_the_work_beside_it() {
        let (sb, client) = sandbox_and_client().await;
        sb.set_faults(vec!["POST /api/v1/uploads/ 403".parse().unwrap()])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let record = Created::default();
        let mut uploads = Uploads::new(&client, &record);
        uploads.start("a".into(), local_file(&data_file(dir.path(), "a", 10, 1)));
        // Work that would never end on its own: the failure must not wait for it.
        let r = uploads.alongside(std::future::pending::<()>()).await;
        assert!(matches!(r, Err(Failed::Platform(_))), "{r:?}");
    }
}
