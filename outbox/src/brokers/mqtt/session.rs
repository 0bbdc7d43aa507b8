//! The MQTT session of a publisher: the rumqttc client, the task that polls
//! its event loop, and the ledger that matches each PUBACK to the publish
//! that waits for it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::outcome;
use crate::error::PublishError;

/// How many publishes may wait in the client's queue before publishes fail.
const REQUEST_QUEUE: usize = 1024;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The connection shared by clones of a publisher.
pub(super) struct Session {
    client: AsyncClient,
    book: Arc<Book>,
    /// The event loop, until its task is started.
    driver: Mutex<Option<Driver>>,
    /// Dropped with the last clone: stops the task.
    _stop: oneshot::Sender<()>,
}

/// What the publishers and the event loop task share.
struct Book {
    ledger: Mutex<Ledger>,
    status: Mutex<Status>,
    /// The broker's Maximum Packet Size from its CONNACK; 0 when it set none.
    broker_max_packet: AtomicU32,
}

#[derive(Clone)]
enum Status {
    Connecting,
    Connected,
    Down(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting => f.write_str("connecting to the broker"),
            Self::Connected => f.write_str("connected to the broker"),
            Self::Down(error) => write!(f, "not connected to the broker: {error}"),
        }
    }
}

/// Where a publish's outcome goes.
type Waiter = oneshot::Sender<Result<(), PublishError>>;

/// Which publish waits for which packet.
///
/// rumqttc takes publishes from its queue in order and assigns their packet
/// ids inside the event loop, announcing each with
/// `Event::Outgoing(Outgoing::Publish(pkid))` (or `AwaitAck(pkid)` when the
/// id is still taken, then `Publish(pkid)` once it is free). A publish is put
/// in `queued` while holding the ledger's lock together with the queue push,
/// so the order of `queued` is the order of the queue.
#[derive(Default)]
struct Ledger {
    queued: VecDeque<Waiter>,
    collided: Option<(u16, Waiter)>,
    sent: HashMap<u16, Waiter>,
}

impl Ledger {
    fn on_publish(&mut self, pkid: u16) {
        let waiter = match self.collided.take() {
            Some((id, waiter)) if id == pkid => Some(waiter),
            other => {
                self.collided = other;
                self.queued.pop_front()
            }
        };
        match waiter {
            Some(waiter) => {
                if let Some(stale) = self.sent.insert(pkid, waiter) {
                    let _ = stale.send(Err(PublishError::transient(format!(
                        "MQTT packet id {pkid} was reused before its PUBACK arrived; the event will be sent again"
                    ))));
                }
            }
            None => warn!(pkid, "outbox: MQTT publish without a waiting event"),
        }
    }

    fn on_await_ack(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front()
            && let Some((_, older)) = self.collided.replace((pkid, waiter))
        {
            let _ = older.send(Err(PublishError::transient(
                "MQTT packet ids collided; the event will be sent again",
            )));
        }
    }

    fn on_puback(&mut self, ack: &PubAck) {
        match self.sent.remove(&ack.pkid) {
            Some(waiter) => {
                let _ = waiter.send(outcome(ack));
            }
            None => debug!(
                pkid = ack.pkid,
                "outbox: PUBACK for a publish nobody waits for"
            ),
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let waiters = self
            .queued
            .drain(..)
            .chain(self.collided.take().map(|(_, w)| w))
            .chain(self.sent.drain().map(|(_, w)| w));
        for waiter in waiters {
            let _ = waiter.send(Err(PublishError::transient(format!(
                "the MQTT broker did not acknowledge the message: {reason}; it will be sent again"
            ))));
        }
    }

    fn handle(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.on_publish(*pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.on_await_ack(*pkid),
            Event::Incoming(Packet::PubAck(ack)) => self.on_puback(ack),
            _ => {}
        }
    }
}

impl Book {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// The event loop and what its task needs.
struct Driver {
    eventloop: EventLoop,
    stop: oneshot::Receiver<()>,
    first: Option<oneshot::Sender<Result<(), ConnectionError>>>,
}

impl Session {
    /// A session with a clean start, not connected until [`start`](Self::start).
    /// `first` hears how the first connection attempt went.
    pub(super) fn new(
        mut options: MqttOptions,
        first: Option<oneshot::Sender<Result<(), ConnectionError>>>,
    ) -> Self {
        options.set_clean_start(true);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (stop_tx, stop) = oneshot::channel();
        Self {
            client,
            book: Arc::new(Book {
                ledger: Mutex::default(),
                status: Mutex::new(Status::Connecting),
                broker_max_packet: AtomicU32::new(0),
            }),
            driver: Mutex::new(Some(Driver {
                eventloop,
                stop,
                first,
            })),
            _stop: stop_tx,
        }
    }

    /// Spawn the event loop task, once.
    pub(super) fn start(&self) {
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            tokio::spawn(drive(driver, self.book.clone()));
        }
    }

    /// The largest packet to send: `max`, or less if the broker said so.
    pub(super) fn packet_limit(&self, max: usize) -> usize {
        match self.book.broker_max_packet.load(Ordering::Relaxed) {
            0 => max,
            broker => max.min(broker as usize),
        }
    }

    /// What the connection is doing, for messages.
    pub(super) fn status(&self) -> impl fmt::Display + use<> {
        self.book.status()
    }

    /// Queue `packet`'s payload and properties as a QoS 1 publish to
    /// `topic`; the receiver hears its PUBACK's outcome. Fails at once while
    /// the broker is unreachable.
    pub(super) fn publish(
        &self,
        topic: &str,
        retain: bool,
        packet: Publish,
    ) -> Result<oneshot::Receiver<Result<(), PublishError>>, PublishError> {
        self.start();
        let (waiter, answer) = oneshot::channel();
        let mut ledger = self.book.ledger();
        // While the task waits to reconnect, fail at once: a publish
        // queued now would only be sent after its caller gave up.
        if let Status::Down(error) = self.book.status() {
            return Err(PublishError::transient(format!(
                "not connected to the MQTT broker ({error}); reconnecting, the event will be sent again"
            )));
        }
        self.client
            .try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                retain,
                packet.payload,
                packet.properties.unwrap_or_default(),
            )
            .map_err(|e| {
                PublishError::transient(format!(
                    "cannot queue the MQTT publish to topic {topic:?}: {e} (the queue of {REQUEST_QUEUE} publishes is full or the connection task stopped)"
                ))
            })?;
        ledger.queued.push_back(waiter);
        Ok(answer)
    }
}

/// Poll the event loop until the publisher is dropped: route packet ids and
/// PUBACKs to the waiting publishes, reconnect after errors.
async fn drive(driver: Driver, book: Arc<Book>) {
    let Driver {
        mut eventloop,
        mut stop,
        mut first,
    } = driver;
    let mut backoff = MIN_BACKOFF;
    loop {
        // Cancelling `poll` is only done to stop for good.
        let polled = tokio::select! {
            biased;
            _ = &mut stop => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                let broker_max = connack
                    .properties
                    .as_ref()
                    .and_then(|p| p.max_packet_size)
                    .unwrap_or(0);
                book.broker_max_packet.store(broker_max, Ordering::Relaxed);
                book.set_status(Status::Connected);
                backoff = MIN_BACKOFF;
                let (host, port) = eventloop.options.broker_address();
                info!(%host, port, "outbox: connected to the MQTT broker");
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
            }
            Ok(event) => book.ledger().handle(&event),
            Err(e) => {
                let reason = e.to_string();
                {
                    let mut ledger = book.ledger();
                    // Acks read before the error still count.
                    for event in eventloop.state.events.drain(..) {
                        ledger.handle(&event);
                    }
                    // The session starts clean: whatever was queued or in
                    // flight is gone. Take what is still in the queue out too,
                    // under the lock, so that `queued` and the queue agree.
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.events.clear();
                    ledger.fail_all(&reason);
                    book.set_status(Status::Down(reason.clone()));
                }
                warn!(error = %reason, retry_in = ?backoff, "outbox: MQTT connection failed");
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    // `connect` gave up: nobody else holds this publisher.
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    book.ledger().fail_all("the MQTT publisher was dropped");
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::error::FailureKind;

    type Answer = oneshot::Receiver<Result<(), PublishError>>;

    /// A publish queued in the ledger, as `Session::publish` does.
    fn queue(ledger: &mut Ledger) -> Answer {
        let (waiter, answer) = oneshot::channel();
        ledger.queued.push_back(waiter);
        answer
    }

    fn publish(ledger: &mut Ledger, pkid: u16) {
        ledger.handle(&Event::Outgoing(Outgoing::Publish(pkid)));
    }

    fn await_ack(ledger: &mut Ledger, pkid: u16) {
        ledger.handle(&Event::Outgoing(Outgoing::AwaitAck(pkid)));
    }

    fn puback(ledger: &mut Ledger, pkid: u16, reason: PubAckReason) {
        let mut ack = PubAck::new(pkid, None);
        ack.reason = reason;
        ledger.handle(&Event::Incoming(Packet::PubAck(ack)));
    }

    /// `None` while the publish still waits; else its outcome's kind
    /// (`Ok(())` for success).
    fn answer(answer: &mut Answer) -> Option<Result<(), FailureKind>> {
        match answer.try_recv() {
            Ok(result) => Some(result.map_err(|e| e.kind())),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => panic!("the waiter was dropped unanswered"),
        }
    }

    fn is_idle(ledger: &Ledger) -> bool {
        ledger.queued.is_empty() && ledger.collided.is_none() && ledger.sent.is_empty()
    }

    #[test]
    fn ids_are_issued_in_queue_order_and_each_puback_answers_its_own() {
        let mut ledger = Ledger::default();
        let mut a = queue(&mut ledger);
        let mut b = queue(&mut ledger);
        let mut c = queue(&mut ledger);
        publish(&mut ledger, 1);
        publish(&mut ledger, 2);
        publish(&mut ledger, 3);
        assert!(ledger.queued.is_empty());
        assert_eq!(ledger.sent.len(), 3);

        puback(&mut ledger, 2, PubAckReason::Success);
        assert_eq!(answer(&mut b), Some(Ok(())));
        assert_eq!(answer(&mut a), None, "a's PUBACK has not come");
        puback(&mut ledger, 3, PubAckReason::NotAuthorized);
        assert_eq!(answer(&mut c), Some(Err(FailureKind::Transient)));
        puback(&mut ledger, 1, PubAckReason::TopicNameInvalid);
        assert_eq!(answer(&mut a), Some(Err(FailureKind::Permanent)));
        assert!(is_idle(&ledger));
    }

    #[test]
    fn puback_reasons_are_classified() {
        let cases = [
            (PubAckReason::Success, Ok(())),
            (PubAckReason::NoMatchingSubscribers, Ok(())),
            (PubAckReason::NotAuthorized, Err(FailureKind::Transient)),
            (PubAckReason::QuotaExceeded, Err(FailureKind::Transient)),
            (PubAckReason::UnspecifiedError, Err(FailureKind::Transient)),
            (PubAckReason::TopicNameInvalid, Err(FailureKind::Permanent)),
            (
                PubAckReason::PayloadFormatInvalid,
                Err(FailureKind::Permanent),
            ),
        ];
        let mut ledger = Ledger::default();
        for (reason, kind) in cases {
            let mut waiting = queue(&mut ledger);
            publish(&mut ledger, 9);
            puback(&mut ledger, 9, reason);
            assert_eq!(answer(&mut waiting), Some(kind), "{reason:?}");
        }
        assert!(is_idle(&ledger));
    }

    #[test]
    fn an_acked_id_can_be_issued_again() {
        let mut ledger = Ledger::default();
        for _ in 0..3 {
            let mut waiting = queue(&mut ledger);
            publish(&mut ledger, 1);
            puback(&mut ledger, 1, PubAckReason::Success);
            assert_eq!(answer(&mut waiting), Some(Ok(())));
        }
        assert!(is_idle(&ledger));
    }

    #[test]
    fn ids_wrap_around_after_the_largest() {
        let mut ledger = Ledger::default();
        let mut last = queue(&mut ledger);
        let mut first = queue(&mut ledger);
        publish(&mut ledger, u16::MAX);
        publish(&mut ledger, 1);
        puback(&mut ledger, 1, PubAckReason::Success);
        assert_eq!(answer(&mut first), Some(Ok(())));
        assert_eq!(answer(&mut last), None);
        puback(&mut ledger, u16::MAX, PubAckReason::Success);
        assert_eq!(answer(&mut last), Some(Ok(())));
        assert!(is_idle(&ledger));
    }

    #[test]
    fn an_id_reused_before_its_puback_fails_the_older_publish() {
        let mut ledger = Ledger::default();
        let mut older = queue(&mut ledger);
        let mut newer = queue(&mut ledger);
        publish(&mut ledger, 4);
        publish(&mut ledger, 4);
        assert_eq!(answer(&mut older), Some(Err(FailureKind::Transient)));
        puback(&mut ledger, 4, PubAckReason::Success);
        assert_eq!(answer(&mut newer), Some(Ok(())));
        assert!(is_idle(&ledger));
    }

    #[test]
    fn a_publish_that_waits_for_a_taken_id_gets_it_once_free() {
        let mut ledger = Ledger::default();
        let mut holder = queue(&mut ledger);
        let mut waiting = queue(&mut ledger);
        let mut behind = queue(&mut ledger);
        publish(&mut ledger, 5);
        // Id 5 is still in flight: the next publish waits for it.
        await_ack(&mut ledger, 5);
        assert!(ledger.collided.is_some());
        puback(&mut ledger, 5, PubAckReason::Success);
        assert_eq!(answer(&mut holder), Some(Ok(())));
        publish(&mut ledger, 5);
        assert!(ledger.collided.is_none(), "the waiting publish took id 5");
        publish(&mut ledger, 6);
        puback(&mut ledger, 6, PubAckReason::Success);
        assert_eq!(answer(&mut behind), Some(Ok(())));
        assert_eq!(answer(&mut waiting), None);
        puback(&mut ledger, 5, PubAckReason::Success);
        assert_eq!(answer(&mut waiting), Some(Ok(())));
        assert!(is_idle(&ledger));
    }

    #[test]
    fn a_second_collision_fails_the_first() {
        let mut ledger = Ledger::default();
        let mut first = queue(&mut ledger);
        let mut second = queue(&mut ledger);
        await_ack(&mut ledger, 7);
        await_ack(&mut ledger, 8);
        assert_eq!(answer(&mut first), Some(Err(FailureKind::Transient)));
        publish(&mut ledger, 8);
        puback(&mut ledger, 8, PubAckReason::Success);
        assert_eq!(answer(&mut second), Some(Ok(())));
        assert!(is_idle(&ledger));
    }

    #[test]
    fn stray_pubacks_and_publishes_are_ignored() {
        let mut ledger = Ledger::default();
        puback(&mut ledger, 3, PubAckReason::Success);
        publish(&mut ledger, 3);
        ledger.handle(&Event::Outgoing(Outgoing::PingReq));
        assert!(is_idle(&ledger));
        let mut waiting = queue(&mut ledger);
        publish(&mut ledger, 3);
        puback(&mut ledger, 3, PubAckReason::Success);
        assert_eq!(answer(&mut waiting), Some(Ok(())));
    }

    #[test]
    fn a_lost_connection_fails_every_waiting_publish() {
        let mut ledger = Ledger::default();
        let mut sent = queue(&mut ledger);
        let mut collided = queue(&mut ledger);
        let mut queued = queue(&mut ledger);
        publish(&mut ledger, 1);
        await_ack(&mut ledger, 1);
        ledger.fail_all("connection reset");
        for waiting in [&mut sent, &mut collided, &mut queued] {
            assert_eq!(answer(waiting), Some(Err(FailureKind::Transient)));
        }
        assert!(is_idle(&ledger));
        // Afterwards the ledger starts over.
        let mut next = queue(&mut ledger);
        publish(&mut ledger, 1);
        puback(&mut ledger, 1, PubAckReason::Success);
        assert_eq!(answer(&mut next), Some(Ok(())));
    }
}
