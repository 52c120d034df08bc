//! Waiting for the platform's imports, made visible. After the PATCH the platform imports uploaded values
//! in the background and tells the API nothing about a DICOM image set's import, failed or not
//! (gc-protocol.md §4.6): a failure is only a notification on its web pages. So while verification waits,
//! the case carries a note saying what it waits for, since when, and which pages to look at; and a DICOM
//! image set that never shows up is quarantined with the likely causes and those pages.

use std::time::{Duration, SystemTime};

use gc_client::GcError;
use gc_client::verify::{Awaiting, Expectation, VerifyTiming};

/// Waits shorter than this are not noted: most imports are done by then, and a note would only flicker.
pub const NOTE_AFTER: Duration = Duration::from_secs(2);

/// What verification is waiting for, for a case's note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWait {
    /// The sockets whose values have not appeared, each with what it waits for ("a DICOM image set"),
    /// DICOM image sets first: they take longest.
    pub sockets: Vec<(String, &'static str)>,
    /// When verification began (right after the PATCH).
    pub since: SystemTime,
    pub waited: Duration,
    /// How long verification waits for the first of `sockets`.
    pub deadline: Duration,
    pub item_page: Option<String>,
    pub notifications_page: Option<String>,
}

impl ImportWait {
    /// The note shown by `status`, `/status` and `upload`, e.g. "waiting for the platform to import
    /// socket ct-set (a DICOM image set) since 2026-05-04T10:00:00Z, 12 min so far (deadline 2h); …".
    pub fn note(&self) -> String {
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .map(|(slug, what)| format!("{slug} ({what})"))
            .collect();
        let mut note = format!(
            "waiting for the platform to import socket{} {} since {}, {} so far (deadline {})",
            if sockets.len() == 1 { "" } else { "s" },
            sockets.join(", "),
            rfc3339(self.since),
            waited_text(self.waited),
            humantime::format_duration(self.deadline)
        );
        if let Some(page) = &self.item_page {
            note.push_str(&format!("; the item's page: {page}"));
        }
        if let Some(page) = &self.notifications_page {
            note.push_str(&format!(
                "; a failed import is reported only among the platform's notifications: {page}"
            ));
        }
        note
    }
}

/// How long a wait has lasted, coarse enough that a note changes at most once a minute.
pub fn waited_text(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    match minutes {
        0 => "under a minute".into(),
        1..60 => format!("{minutes} min"),
        _ => format!("{} h {} min", minutes / 60, minutes % 60),
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What a socket's value waits for, in words; `None` for values set inside the PATCH.
fn awaited(a: &Awaiting) -> Option<(u8, &'static str)> {
    match a {
        Awaiting::DicomImageSet { .. } => Some((0, "a DICOM image set")),
        Awaiting::Image { .. } => Some((1, "an image")),
        Awaiting::File { .. } => Some((2, "a file")),
        Awaiting::Value(_) | Awaiting::ExistingImage(_) => None,
    }
}

/// The wait to note, once it has lasted [`NOTE_AFTER`] and something imported is still pending (pure).
pub fn import_wait(
    pending: &[&Expectation],
    waited: Duration,
    since: SystemTime,
    timing: &VerifyTiming,
    pages: (Option<String>, Option<String>),
) -> Option<ImportWait> {
    if waited < NOTE_AFTER {
        return None;
    }
    let mut sockets: Vec<(u8, &Expectation, &'static str)> = pending
        .iter()
        .filter_map(|e| awaited(&e.awaiting).map(|(rank, what)| (rank, *e, what)))
        .collect();
    sockets.sort_by_key(|(rank, e, _)| (*rank, e.socket.clone()));
    let (_, first, _) = sockets.first()?;
    Some(ImportWait {
        deadline: timing.deadline(&first.awaiting),
        sockets: sockets
            .iter()
            .map(|(_, e, what)| (e.socket.clone(), *what))
            .collect(),
        since,
        waited,
        item_page: pages.0,
        notifications_page: pages.1,
    })
}

/// Why a case is quarantined when its DICOM image set did not show up by the deadline: the platform
/// tells the API nothing, so the reason names what usually causes it and where the platform says which.
pub fn dicom_set_timeout(
    socket: &str,
    files: usize,
    deadline: Duration,
    item_page: Option<&str>,
    notifications_page: Option<&str>,
) -> String {
    let mut reason = format!(
        "the platform did not finish importing the DICOM image set of socket {socket} ({files} \
         file{}) within the deadline of {} (dicom_import_deadline). Its API tells nothing about such an \
         import; likely causes: the platform's de-identification refused a file, the files hold more \
         than one series, a file is unreadable or of an unsupported kind, or the platform is busy (then \
         `gc-hotfolder retry` sends the case again)",
        if files == 1 { "" } else { "s" },
        humantime::format_duration(deadline)
    );
    match (item_page, notifications_page) {
        (Some(item), Some(notes)) => reason.push_str(&format!(
            ". The platform's notification says which: {notes}; the item's page: {item}"
        )),
        (Some(item), None) => reason.push_str(&format!(". The item's page: {item}")),
        (None, Some(notes)) => reason.push_str(&format!(
            ". The platform's notification says which: {notes}"
        )),
        (None, None) => {}
    }
    reason
}

/// The socket of a verification timeout, when it is a DICOM image set's (the others keep the client's
/// own wording).
pub fn timed_out_dicom_set<'e>(e: &'e GcError, expectations: &[Expectation]) -> Option<&'e str> {
    let GcError::VerifyTimeout { socket, .. } = e else {
        return None;
    };
    expectations
        .iter()
        .any(|x| x.socket == *socket && matches!(x.awaiting, Awaiting::DicomImageSet { .. }))
        .then_some(socket.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(socket: &str, awaiting: Awaiting) -> Expectation {
        Expectation {
            socket: socket.into(),
            previous_pk: None,
            awaiting,
        }
    }

    #[test]
    fn waits_read_in_coarse_steps() {
        assert_eq!(waited_text(Duration::from_secs(59)), "under a minute");
        assert_eq!(waited_text(Duration::from_secs(60)), "1 min");
        assert_eq!(waited_text(Duration::from_secs(59 * 60 + 59)), "59 min");
        assert_eq!(
            waited_text(Duration::from_secs(2 * 3600 + 5 * 60)),
            "2 h 5 min"
        );
    }

    #[test]
    fn a_wait_is_noted_with_the_slowest_import_first_and_the_pages() {
        let set = expect("ct-set", Awaiting::DicomImageSet { uploads: vec![] });
        let img = expect("seg", Awaiting::Image { uploads: vec![] });
        let value = expect("count", Awaiting::Value(serde_json::json!(1)));
        let timing = VerifyTiming {
            dicom_deadline: Duration::from_secs(600),
            ..VerifyTiming::default()
        };
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_888_000);
        let pages = || {
            (
                Some("https://gc/archives/a/items/i/".to_owned()),
                Some("https://gc/notifications/".to_owned()),
            )
        };
        let at = |waited: u64, pending: &[&Expectation]| {
            import_wait(
                pending,
                Duration::from_secs(waited),
                since,
                &timing,
                pages(),
            )
        };
        assert_eq!(at(1, &[&set]), None, "too short to note");
        assert_eq!(at(30, &[&value]), None, "nothing imported");
        let wait = at(125, &[&img, &value, &set]).unwrap();
        assert_eq!(
            wait.sockets,
            [
                ("ct-set".to_owned(), "a DICOM image set"),
                ("seg".to_owned(), "an image")
            ]
        );
        assert_eq!(
            wait.note(),
            "waiting for the platform to import sockets ct-set (a DICOM image set), seg (an image) \
             since 2026-05-04T09:46:40Z, 2 min so far (deadline 10m); the item's page: \
             https://gc/archives/a/items/i/; a failed import is reported only among the platform's \
             notifications: https://gc/notifications/"
        );
        let only_image = at(3, &[&img]).unwrap();
        assert_eq!(only_image.deadline, timing.image_deadline);
    }

    #[test]
    fn a_dicom_set_that_never_shows_up_is_explained() {
        let r = dicom_set_timeout(
            "ct-set",
            3,
            Duration::from_secs(7200),
            Some("https://gc/archives/a/items/i/"),
            Some("https://gc/notifications/"),
        );
        for needed in [
            "did not finish importing the DICOM image set of socket ct-set (3 files) within the \
             deadline of 2h",
            "de-identification refused a file",
            "more than one series",
            "unreadable or of an unsupported kind",
            "the platform is busy",
            "https://gc/notifications/",
            "the item's page: https://gc/archives/a/items/i/",
        ] {
            assert!(r.contains(needed), "{needed:?} in {r}");
        }
        let set = expect("ct-set", Awaiting::DicomImageSet { uploads: vec![] });
        let img = expect("seg", Awaiting::Image { uploads: vec![] });
        let timeout = |socket: &str| GcError::VerifyTimeout {
            socket: socket.into(),
            waited: Duration::from_secs(1),
        };
        let all = [set, img];
        assert_eq!(
            timed_out_dicom_set(&timeout("ct-set"), &all),
            Some("ct-set")
        );
        assert_eq!(timed_out_dicom_set(&timeout("seg"), &all), None);
    }
}
