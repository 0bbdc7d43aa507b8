//! The one publisher type of the built-in brokers, and the wire protocol
//! trait each broker implements.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::{DEFAULT_TIMEOUT, Route, Selection, sealed};
use crate::error::PublishError;
use crate::event::StorageBox;
use crate::publisher::{Context, Publisher};

/// One broker's wire protocol: how a [`BrokerPublisher`] sends an event,
/// and what the broker's answer means (success, transient or permanent
/// failure).
///
/// Each broker module has one (e.g. `outbox::nats::JetStreamWire`); the
/// trait is sealed.
pub trait Wire: sealed::Sealed + Send + Sync + 'static {
    /// The publisher's name unless [`BrokerPublisher::named`] gives another.
    const NAME: &'static str;

    /// Send one event where `route` says (`None`: the broker's default,
    /// the event's topic for most) and wait, at most about `timeout`, for the
    /// broker's answer, classified.
    fn send(
        &self,
        event: &StorageBox,
        route: Option<&Route>,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// A built-in broker publisher: the settings every broker shares, over one
/// broker's [`Wire`].
///
/// Build one with its broker module's constructor (e.g.
/// `outbox::nats::JetStreamPublisher::new`), then set what differs from the
/// defaults. It is a [`Publisher`] (a forwarder for all or
/// [selected](Self::select) events) and can also be called from your own
/// `#[publisher]` function with [`publish_event`](Self::publish_event).
/// Clones share the connection.
///
/// The name is set with [`named`](Self::named) and read with
/// [`Publisher::name`]: the builder method is not called `name`, so that
/// `publisher.name()` is the getter on the concrete type too.
#[derive(Clone)]
pub struct BrokerPublisher<W> {
    name: String,
    selection: Selection,
    route: Option<Route>,
    timeout: Duration,
    pub(crate) wire: W,
}

impl<W: Wire> BrokerPublisher<W> {
    /// A publisher over `wire` with the default settings: named
    /// [`W::NAME`](Wire::NAME), every event, the default route, a 5 s timeout.
    pub(crate) fn with_wire(wire: W) -> Self {
        Self {
            name: W::NAME.to_owned(),
            selection: Selection::All,
            route: None,
            timeout: DEFAULT_TIMEOUT,
            wire,
        }
    }

    /// Publish one event and wait for the broker's answer: what the
    /// [`Publisher`] impl does, for use in your own `#[publisher]` function
    /// (give the publisher to the Runner with `.state(...)` and take it with
    /// [`Context::state`]). Each broker module has an example.
    pub async fn publish_event(&self, event: &StorageBox) -> Result<(), PublishError> {
        self.wire
            .send(event, self.route.as_ref(), self.timeout)
            .await
    }
}

impl<W> BrokerPublisher<W> {
    /// The publisher's name (default: the broker's, e.g. `"nats"`); give
    /// each publisher of one broker in one Runner its own. The outbox
    /// records it to remember which publishers have an event, and in dead
    /// letters.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which event types it forwards (default: all).
    pub fn select(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Where each event goes: the NATS subject, RabbitMQ routing key, Redis
    /// stream key or MQTT topic (default: the event's topic), or the webhook
    /// URL (default: the endpoint; see `outbox::http` for how a route's
    /// result is resolved against it).
    pub fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// How long one publish may take until the broker's answer (default
    /// 5 s); no answer in time is a transient failure. Keep it below the
    /// Runner's `publish_timeout`. Each broker module says what it covers.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<W: fmt::Debug> fmt::Debug for BrokerPublisher<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerPublisher")
            .field("name", &self.name)
            .field("selection", &self.selection)
            .field("route", &self.route)
            .field("timeout", &self.timeout)
            .field("wire", &self.wire)
            .finish()
    }
}

#[async_trait]
impl<W: Wire> Publisher for BrokerPublisher<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.selection.accepts(event_type)
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        self.publish_event(cx.event()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::brokers::stored;
    use crate::event::NewEvent;

    /// What the fake wire was asked: event type, route result, timeout.
    type Sent = (String, Option<String>, Duration);

    /// Records what it was asked to send.
    #[derive(Clone, Default)]
    struct Fake {
        sent: Arc<Mutex<Vec<Sent>>>,
    }

    impl sealed::Sealed for Fake {}

    impl Wire for Fake {
        const NAME: &'static str = "fake";

        async fn send(
            &self,
            event: &StorageBox,
            route: Option<&Route>,
            timeout: Duration,
        ) -> Result<(), PublishError> {
            let to = route.map(|r| r.resolve(event));
            self.sent
                .lock()
                .unwrap()
                .push((event.event_type.clone(), to, timeout));
            Ok(())
        }
    }

    fn event(event_type: &str) -> StorageBox {
        stored(NewEvent::new(event_type, b"{}".to_vec()).topic("orders"))
    }

    #[tokio::test]
    async fn defaults_and_settings_reach_the_wire() {
        let fake = Fake::default();
        let plain = BrokerPublisher::with_wire(fake.clone());
        assert_eq!(Publisher::name(&plain), "fake");
        assert!(plain.accepts("anything"));
        plain
            .publish(&Context::for_event(event("a")))
            .await
            .unwrap();

        let set = BrokerPublisher::with_wire(fake.clone())
            .named("fake-orders")
            .select(Selection::only(["a"]))
            .route(Route::template("x.{topic}"))
            .timeout(Duration::from_millis(7));
        assert_eq!(set.name(), "fake-orders", "the getter is not shadowed");
        assert!(set.accepts("a") && !set.accepts("b"));
        set.publish_event(&event("a")).await.unwrap();

        assert_eq!(
            *fake.sent.lock().unwrap(),
            [
                ("a".to_owned(), None, DEFAULT_TIMEOUT),
                (
                    "a".to_owned(),
                    Some("x.orders".to_owned()),
                    Duration::from_millis(7)
                ),
            ]
        );
    }
}
