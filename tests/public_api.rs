//! What a user's crate can do with the public items alone: build a stored
//! event and a context in one line to test a publisher, and write a Source
//! of its own for a Runner. Nothing here reaches into the crate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use outbox::{
    ClaimLimit, ClaimedEvent, Context, DeadLetter, Error, OutboxEvent, Outcome, Publisher, Runner,
    Settlement, Source, StorageBox, Tables, Uuid, publisher_fn,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "api.ping", key = n)]
struct Ping {
    n: u32,
}

fn log_ping() -> impl Publisher {
    publisher_fn::<Ping, _, _>("log", |ping, cx| async move {
        if ping.n == 2 {
            return Err(outbox::PublishError::permanent("two is refused"));
        }
        assert_eq!(
            cx.event().partition_key.as_deref(),
            Some(&*ping.n.to_string())
        );
        Ok(())
    })
}

#[tokio::test]
async fn a_publisher_is_tested_with_a_context_built_in_one_line() {
    let publisher = log_ping();
    let cx = Context::for_event(StorageBox::from_event(&Ping { n: 7 }).unwrap());
    assert_eq!(cx.attempt(), 1);
    publisher.publish(&cx).await.unwrap();

    let refused = Context::for_event(StorageBox::from_event(&Ping { n: 2 }).unwrap());
    assert!(
        publisher
            .publish(&refused)
            .await
            .unwrap_err()
            .is_permanent()
    );

    let garbage = Context::for_event(StorageBox::new("api.ping", b"not json".to_vec()));
    let error = publisher.publish(&garbage).await.unwrap_err();
    assert!(
        error.is_permanent(),
        "an undecodable payload is permanent: {error}"
    );
}

/// A Source written outside the crate: events in a Vec, for one Runner.
#[derive(Default)]
struct VecSource {
    waiting: Mutex<Vec<StorageBox>>,
    claimed: Mutex<Vec<Uuid>>,
    acked: Mutex<Vec<Uuid>>,
    settled: Mutex<Vec<Settlement>>,
    unreadable: Mutex<Vec<Uuid>>,
    purged_older_than: Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl Source for VecSource {
    async fn claim(
        &self,
        _owner: Uuid,
        limit: ClaimLimit,
        _lease: Duration,
    ) -> Result<Vec<ClaimedEvent>, Error> {
        let mut waiting = self.waiting.lock().unwrap();
        let n = limit.events.min(waiting.len());
        let unreadable = self.unreadable.lock().unwrap().clone();
        let batch: Vec<ClaimedEvent> = waiting
            .drain(..n)
            .map(|e| {
                let bad = unreadable.contains(&e.id);
                let claimed = ClaimedEvent::new(e);
                if bad {
                    claimed.with_unreadable("its headers are not text")
                } else {
                    claimed
                }
            })
            .collect();
        let mut claimed = self.claimed.lock().unwrap();
        claimed.extend(batch.iter().map(|c| c.event.id));
        Ok(batch)
    }

    async fn ack(&self, _owner: Uuid, ids: &[Uuid]) -> Result<u64, Error> {
        self.claimed.lock().unwrap().retain(|id| !ids.contains(id));
        self.acked.lock().unwrap().extend_from_slice(ids);
        Ok(ids.len() as u64)
    }

    async fn settle(&self, _owner: Uuid, settlement: &Settlement) -> Result<bool, Error> {
        self.claimed
            .lock()
            .unwrap()
            .retain(|id| *id != settlement.id);
        self.settled.lock().unwrap().push(settlement.clone());
        Ok(true)
    }

    async fn renew(&self, _owner: Uuid, ids: &[Uuid], _lease: Duration) -> Result<u64, Error> {
        Ok(ids.len() as u64)
    }

    async fn release(&self, _owner: Uuid, _ids: &[Uuid]) -> Result<u64, Error> {
        Ok(0)
    }

    async fn pending(&self) -> Result<u64, Error> {
        let waiting = self.waiting.lock().unwrap().len();
        Ok((waiting + self.claimed.lock().unwrap().len()) as u64)
    }

    async fn dead_letters(&self, _limit: usize) -> Result<Vec<DeadLetter>, Error> {
        Ok(Vec::new())
    }

    async fn retry_dead_letters(&self, _ids: Option<&[Uuid]>) -> Result<u64, Error> {
        Ok(0)
    }

    async fn purge_dead_letters(&self, _before: SystemTime) -> Result<u64, Error> {
        Ok(0)
    }

    async fn purge_dead_letters_older_than(&self, age: Duration) -> Result<u64, Error> {
        self.purged_older_than.lock().unwrap().push(age);
        Ok(0)
    }
}

#[tokio::test]
async fn a_source_of_its_own_drives_a_runner() {
    let source = Arc::new(VecSource::default());
    let one = StorageBox::from_event(&Ping { n: 1 }).unwrap();
    let two = StorageBox::from_event(&Ping { n: 2 }).unwrap();
    let (one_id, two_id) = (one.id, two.id);
    source.waiting.lock().unwrap().extend([one, two]);

    let report = Runner::with_source(source.clone())
        .without_registered()
        .publisher(log_ping())
        .shutdown(std::future::pending())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!((report.published, report.dead_lettered), (1, 1));
    assert_eq!(*source.acked.lock().unwrap(), vec![one_id]);
    let settled = source.settled.lock().unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].id, two_id);
    assert_eq!(settled[0].outcome, Outcome::Finish);
    assert_eq!(settled[0].dead_letters[0].publisher, "log");
    assert_eq!(settled[0].dead, vec!["log".to_owned()]);
}

#[test]
fn tables_are_refused_on_a_runner_over_a_given_source() {
    let err = match Runner::with_source(Arc::new(VecSource::default()))
        .tables(Tables::new("billing").unwrap())
        .build()
    {
        Ok(_) => panic!("tables() on a given Source was accepted and ignored"),
        Err(err) => err,
    };
    assert!(err.to_string().contains("`Runner::with_source`"), "{err}");
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(name = "api.deep")]
struct Deep {
    value: serde_json::Value,
}

/// A value nested 10,000 deep used to overflow the stack of the tokio
/// worker that serialized it, aborting the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_deeply_nested_event_is_encoded_without_overflowing_the_stack() {
    let encoded = tokio::spawn(async {
        let mut value = serde_json::Value::Null;
        for _ in 0..10_000 {
            value = serde_json::Value::Array(vec![value]);
        }
        StorageBox::from_event(&Deep { value }).map(|e| e.payload.len())
    })
    .await
    .unwrap();
    assert_eq!(encoded.unwrap(), 10_000 * 2 + 4 + "{\"value\":}".len());
}

/// A row the Source could not read as written is dead-lettered for its
/// publishers with the reason, never published as read; and the Runner's
/// dead-letter retention asks the Source to purge by age, so that the
/// database's clock decides (it passed a cutoff on this host's clock).
#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_and_retention_is_by_age() {
    let source = Arc::new(VecSource::default());
    let bad = StorageBox::from_event(&Ping { n: 1 }).unwrap();
    let good = StorageBox::from_event(&Ping { n: 3 }).unwrap();
    let (bad_id, good_id) = (bad.id, good.id);
    source.unreadable.lock().unwrap().push(bad_id);
    source.waiting.lock().unwrap().extend([bad, good]);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let report = Runner::with_source(source.clone())
        .without_registered()
        .publisher(publisher_fn::<Ping, _, _>("log", move |_, cx| {
            seen.lock().unwrap().push(cx.id());
            async { Ok::<(), outbox::PublishError>(()) }
        }))
        .dead_letter_retention(Duration::from_secs(3600))
        .shutdown(std::future::pending())
        .build()
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![good_id]);
    assert_eq!((report.published, report.dead_lettered), (1, 1));
    let settled = source.settled.lock().unwrap();
    assert_eq!(settled[0].id, bad_id);
    let error = &settled[0].dead_letters[0].error;
    assert!(
        error.contains("could not be read: its headers are not text"),
        "{error}"
    );
    assert_eq!(
        *source.purged_older_than.lock().unwrap(),
        vec![Duration::from_secs(3600)]
    );
}
