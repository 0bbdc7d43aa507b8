//! The Registry: every publisher a Runner has, whether `#[publisher]`
//! registered it through inventory or it was given to the builder, checked
//! once when the Runner is built; and the Producers, the seed's role of one
//! event type wired to one publisher, looked up by event type.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tracing::{info, warn};

use crate::error::{Error, PublishError};
use crate::event::EventTypeInfo;
use crate::publisher::{Context, Publisher, PublisherRegistration, StateRequirement, States};

inventory::collect!(PublisherRegistration);
inventory::collect!(EventTypeInfo);

/// The publishers registered with `#[publisher]` in this binary.
pub fn registered_publishers() -> impl Iterator<Item = &'static PublisherRegistration> {
    inventory::iter::<PublisherRegistration>.into_iter()
}

/// The event types registered by `#[derive(OutboxEvent)]` in this binary.
pub fn registered_event_types() -> impl Iterator<Item = &'static EventTypeInfo> {
    inventory::iter::<EventTypeInfo>.into_iter()
}

/// A `#[publisher]` function as a [`Publisher`].
pub(crate) struct Registered(pub(crate) &'static PublisherRegistration);

#[async_trait]
impl Publisher for Registered {
    fn name(&self) -> &str {
        self.0.name
    }

    fn accepts(&self, event_type: &str) -> bool {
        self.0.event_type == event_type
    }

    fn required_state(&self) -> Option<StateRequirement> {
        (self.0.requires)()
    }

    async fn publish(&self, cx: &Context) -> Result<(), PublishError> {
        (self.0.call)(cx.clone()).await
    }
}

/// One event type wired to one publisher.
#[derive(Clone)]
pub(crate) struct Producer {
    pub(crate) publisher: Arc<dyn Publisher>,
}

impl Producer {
    pub(crate) fn name(&self) -> &str {
        self.publisher.name()
    }
}

/// The publishers of one Runner, and its Producers by event type.
pub(crate) struct Registry {
    publishers: Vec<Arc<dyn Publisher>>,
    /// Producers by event type: the registered event types are wired in
    /// [`Registry::new`]; a type first seen in a claim (a raw event) is wired
    /// then, once.
    producers: RwLock<HashMap<String, Arc<[Producer]>>>,
}

/// Publishers given to the builder, each with where it came from (for
/// messages).
pub(crate) type Candidates = Vec<(Arc<dyn Publisher>, String)>;

impl Registry {
    /// The registered publishers (unless `use_registered` is false) and the
    /// given ones, checked: unique names, every required state given.
    pub(crate) fn new(
        use_registered: bool,
        given: Candidates,
        states: &States,
    ) -> Result<Self, Error> {
        let mut candidates: Candidates = Vec::new();
        if use_registered {
            for reg in registered_publishers() {
                let description = format!(
                    "`{}` in {} (event `{}`)",
                    reg.name, reg.module, reg.event_type
                );
                candidates.push((Arc::new(Registered(reg)) as Arc<dyn Publisher>, description));
            }
        }
        candidates.extend(given);

        let mut names: HashMap<&str, &str> = HashMap::new();
        for (publisher, description) in &candidates {
            check_name(publisher.name(), description)?;
            if let Some(first) = names.insert(publisher.name(), description) {
                return Err(Error::DuplicatePublisher {
                    name: publisher.name().to_owned(),
                    first: first.to_owned(),
                    second: description.clone(),
                });
            }
            if let Some(req) = publisher.required_state()
                && !states.contains(req.type_id)
            {
                return Err(Error::MissingState {
                    publisher: publisher.name().to_owned(),
                    state: req.type_name,
                });
            }
        }

        let registry = Self {
            publishers: candidates.into_iter().map(|(p, _)| p).collect(),
            producers: RwLock::default(),
        };
        let mut wired = HashSet::new();
        for info in registered_event_types() {
            let producers = registry.producers(info.name);
            for producer in producers.iter() {
                wired.insert(producer.name().to_owned());
                info!(
                    event = info.name,
                    publisher = producer.name(),
                    "outbox: wired"
                );
            }
            if producers.is_empty() {
                warn!(
                    event = info.name,
                    rust_type = info.rust_type,
                    "outbox: event type has no publisher in this Runner; its events wait in the outbox until a Runner with a publisher for it runs"
                );
            }
        }
        for publisher in &registry.publishers {
            if !wired.contains(publisher.name()) {
                info!(publisher = publisher.name(), "outbox: publisher registered");
            }
        }
        Ok(registry)
    }

    /// How many publishers this Runner has.
    pub(crate) fn len(&self) -> usize {
        self.publishers.len()
    }

    /// The Producers of an event type: every publisher that accepts it.
    pub(crate) fn producers(&self, event_type: &str) -> Arc<[Producer]> {
        if let Some(found) = read(&self.producers).get(event_type) {
            return found.clone();
        }
        let wired: Arc<[Producer]> = self
            .publishers
            .iter()
            .filter(|p| p.accepts(event_type))
            .map(|publisher| Producer {
                publisher: publisher.clone(),
            })
            .collect();
        self.producers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event_type.to_owned())
            .or_insert(wired)
            .clone()
    }
}

/// The longest publisher name, in bytes: the dead-letter table's
/// `publisher` column is `VARCHAR(255)` on MySQL.
const MAX_NAME_LEN: usize = 255;

/// A publisher's name is stored with every delivery and dead letter: it must
/// fit the columns of every backend, or no outcome of it could be recorded.
fn check_name(name: &str, description: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!("is {} bytes long; at most {MAX_NAME_LEN} fit", name.len())
    } else if name.chars().any(char::is_control) {
        "contains a control character (such as NUL)".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidSetting {
        setting: "publisher",
        reason: format!(
            "the name {:?} of {description} {reason}",
            crate::text::cut(name, 80)
        ),
    })
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
