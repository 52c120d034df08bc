//! How many cases may be at each stage of delivery at once. Uploading is work: it takes an upload slot
//! (`limits.parallel_cases`). Waiting for the platform's import is not: a case that waits gives its slot
//! back and keeps only its place among the cases in delivery (`limits.awaiting_import`), and the upload
//! records the platform holds for it until it imports them (`limits.pending_uploads`), which keeps the
//! uploads of all waiting cases below the platform's limit per user.
//!
//! Every holder takes its places in the same order (case, upload slot, upload records), so no two wait
//! for each other.

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Limits;

pub struct Lanes {
    cases: Semaphore,
    uploads: Semaphore,
    records: Semaphore,
    records_max: usize,
}

impl Lanes {
    pub fn new(limits: &Limits) -> Lanes {
        Lanes {
            cases: Semaphore::new(limits.awaiting_import.max(1)),
            uploads: Semaphore::new(limits.parallel_cases.max(1)),
            records: Semaphore::new(limits.pending_uploads.max(1)),
            records_max: limits.pending_uploads.max(1),
        }
    }

    /// A place among the cases in delivery, uploading or waiting for the platform's import. `None`
    /// never happens: the semaphores are never closed.
    pub async fn case(&self) -> Option<SemaphorePermit<'_>> {
        self.cases.acquire().await.ok()
    }

    /// An upload slot: preparing, uploading and setting the values of one case.
    pub async fn upload(&self) -> Option<SemaphorePermit<'_>> {
        self.uploads.acquire().await.ok()
    }

    /// Room for a case's `files` upload records until it is verified. A case of more files than the
    /// whole budget waits until it has the budget to itself.
    pub async fn records(&self, files: usize) -> Option<SemaphorePermit<'_>> {
        let n = files.min(self.records_max);
        self.records
            .acquire_many(u32::try_from(n).unwrap_or(u32::MAX))
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(parallel_cases: usize, awaiting_import: usize, pending_uploads: usize) -> Limits {
        Limits {
            parallel_cases,
            awaiting_import,
            pending_uploads,
            parallel_files: 4,
            parallel_parts: 8,
            part_size: 32 << 20,
        }
    }

    #[tokio::test]
    async fn waiting_cases_hold_no_upload_slot_and_records_are_budgeted() {
        let lanes = Lanes::new(&limits(1, 3, 10));
        // A case that uploaded and now waits keeps its place and its records, not its slot.
        let waiting = (lanes.case().await, lanes.records(6).await);
        let slot = lanes.upload().await;
        drop(slot);
        // The next case uploads at once.
        let next = lanes.case().await;
        let slot = lanes.upload().await;
        assert!(slot.is_some() && next.is_some() && waiting.0.is_some());
        // Its 6 records do not fit beside the first case's 6 until that one is verified.
        let mut more = std::pin::pin!(lanes.records(6));
        assert!(futures_util::poll!(more.as_mut()).is_pending());
        drop(waiting);
        assert!(more.await.is_some());
        // A case larger than the budget takes it whole rather than waiting forever.
        assert!(lanes.records(25).await.is_some());
    }
}
