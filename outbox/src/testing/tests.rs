use std::time::Duration;

use uuid::Uuid;

use super::MemoryOutbox;
use crate::delivery::{Failure, Outcome, Settlement};
use crate::event::NewEvent;
use crate::store::{ClaimLimit, Source};

const LEASE: Duration = Duration::from_secs(30);

fn ids(claimed: &[crate::ClaimedEvent]) -> Vec<Uuid> {
    claimed.iter().map(|c| c.event.id).collect()
}

#[tokio::test(start_paused = true)]
async fn a_late_commit_goes_first_on_its_key() {
    let outbox = MemoryOutbox::new();
    let mut late = outbox.begin();
    let late_event = NewEvent::new("e", "late").partition_key("k");
    late.enqueue_raw(std::slice::from_ref(&late_event)).unwrap();
    let early = NewEvent::new("e", "early").partition_key("k");
    outbox.enqueue_raw(std::slice::from_ref(&early)).unwrap();
    assert_eq!(outbox.pending(), 1, "an uncommitted event is visible");
    late.commit();
    assert!(late_event.id < early.id, "ids are taken at enqueue");
    let owner = Uuid::now_v7();
    let claimed = outbox
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![late_event.id]);
    assert_eq!(outbox.ack(owner, &[late_event.id]).await.unwrap(), 1);
    let claimed = outbox
        .claim(owner, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![early.id]);
    let mut dropped = outbox.begin();
    dropped.enqueue_raw(&[NewEvent::new("e", "never")]).unwrap();
    drop(dropped);
    assert_eq!(outbox.events().len(), 1, "a dropped transaction committed");
}

#[tokio::test(start_paused = true)]
async fn leases_retries_and_dead_letters_follow_tokio_time() {
    let outbox = MemoryOutbox::new();
    let events = [
        NewEvent::new("e", "a1").partition_key("a"),
        NewEvent::new("e", "a2").partition_key("a"),
        NewEvent::new("e", "n"),
    ];
    outbox.enqueue_raw(&events).unwrap();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    let first = outbox
        .claim(one, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![events[0].id, events[2].id]);
    assert!(
        outbox
            .claim(two, ClaimLimit::events(10), LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(LEASE).await;
    let again = outbox
        .claim(two, ClaimLimit::events(1), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&again), vec![events[0].id]);
    assert_eq!(again[0].event.attempt, 2);
    assert_eq!(outbox.ack(one, &[events[0].id]).await.unwrap(), 0, "fenced");

    let retry = Settlement::new(
        events[0].id,
        Outcome::Retry {
            delay: Duration::from_secs(5),
            error: "later".into(),
        },
    );
    assert!(outbox.settle(two, &retry).await.unwrap());
    // The keyless event's lease (from `one`) expired too.
    let n = outbox
        .claim(two, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&n), vec![events[2].id]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let due = outbox
        .claim(two, ClaimLimit::events(10), LEASE)
        .await
        .unwrap();
    assert_eq!(ids(&due), vec![events[0].id]);

    let dead = Settlement::finish(events[0].id).with_dead_letters(vec![Failure {
        publisher: "p".into(),
        error: "no".into(),
    }]);
    assert!(outbox.settle(two, &dead).await.unwrap());
    let letters = outbox.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(
        letters[0].failed_at,
        std::time::SystemTime::UNIX_EPOCH
            + super::clock::DEFAULT_START
            + LEASE
            + Duration::from_secs(5),
        "dead letters are timed on the outbox's clock"
    );
    assert_eq!(
        outbox
            .purge_dead_letters_older_than(Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );
    outbox.advance(Duration::from_secs(2));
    assert_eq!(
        outbox
            .purge_dead_letters_older_than(Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_stays_within_its_byte_budget_but_takes_one() {
    let outbox = MemoryOutbox::new();
    let events: Vec<NewEvent> = (0..4).map(|_| NewEvent::new("e", vec![b'x'; 10])).collect();
    outbox.enqueue_raw(&events).unwrap();
    let owner = Uuid::now_v7();
    let claim = |bytes| outbox.claim(owner, ClaimLimit::events(10).bytes(bytes), LEASE);
    assert_eq!(claim(5).await.unwrap().len(), 1);
    assert_eq!(claim(25).await.unwrap().len(), 2);
    assert_eq!(claim(100).await.unwrap().len(), 1);
}
