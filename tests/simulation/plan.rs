//! What one schedule is made of, drawn from its seed: the event types and
//! their publishers with how often each fails, the Runners' settings, the
//! load, and how much chaos (store faults, kills, operator actions).

use std::time::Duration;

use fastrand::Rng;
use outbox::KeyPolicy;

/// A 64-bit hash of the seed and `parts`: decisions drawn from it do not
/// depend on the order in which tasks happen to ask for them.
pub fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut h = splitmix(seed ^ 0x243F_6A88_85A3_08D3);
    for &p in parts {
        h = splitmix(h ^ splitmix(p));
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash as a number in `[0, 1)`.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn ms(rng: &mut Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

/// How one publisher behaves: the chance of each kind of call.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub event_type: usize,
    pub transient: f64,
    pub permanent: f64,
    /// Slower than any publish timeout: cut short by the Runner.
    pub hang: f64,
    /// Slow, but within the shortest publish timeout.
    pub slow: f64,
    pub panic: f64,
}

/// What the operator does once the chaos is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finally {
    RetryAll,
    PurgeAll,
    Nothing,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub event_types: usize,
    pub publishers: Vec<Profile>,
    pub runners: usize,
    pub key_policy: KeyPolicy,
    pub retention: Option<Duration>,
    pub keys: u32,
    pub producers: usize,
    pub produce_for: Duration,
    pub max_gap: u64,
    /// The shortest publish timeout any Runner gets.
    pub min_publish_timeout: Duration,
    /// Chance that a store call of a Runner gets a fault.
    pub store_fault_rate: f64,
    pub max_fault_delay: Duration,
    pub kills: usize,
    pub operator_actions: usize,
    pub finally: Finally,
}

impl Plan {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::with_seed(mix(seed, &[0]));
        let event_types = rng.usize(1..=2);
        let mut publishers = Vec::new();
        for t in 0..event_types {
            for i in 0..rng.usize(1..=3) {
                let healthy = rng.f64() < 0.3;
                let mut rate = |max: f64| if healthy { 0.0 } else { rng.f64() * max };
                publishers.push(Profile {
                    name: format!("t{t}.{}", (b'a' + i as u8) as char),
                    event_type: t,
                    transient: rate(0.4),
                    permanent: rate(0.08),
                    hang: rate(0.08),
                    slow: rate(0.3),
                    panic: rate(0.05),
                });
            }
        }
        let faulty = rng.f64() < 0.6;
        Self {
            event_types,
            publishers,
            runners: rng.usize(1..=3),
            key_policy: if rng.bool() {
                KeyPolicy::Skip
            } else {
                KeyPolicy::Block
            },
            retention: (rng.f64() < 0.15).then(|| ms(&mut rng, 1_000..=30_000)),
            keys: rng.u32(1..=20),
            producers: rng.usize(1..=3),
            produce_for: ms(&mut rng, 1_000..=5_000),
            max_gap: rng.u64(30..=400),
            min_publish_timeout: ms(&mut rng, 50..=1_000),
            store_fault_rate: if faulty {
                0.002 + rng.f64() * 0.05
            } else {
                0.0
            },
            max_fault_delay: ms(&mut rng, 100..=8_000),
            kills: if rng.f64() < 0.3 { 0 } else { rng.usize(1..=4) },
            operator_actions: rng.usize(0..=4),
            finally: match rng.u8(0..5) {
                0 | 1 => Finally::RetryAll,
                2 => Finally::PurgeAll,
                _ => Finally::Nothing,
            },
        }
    }

    pub fn event_type_name(t: usize) -> String {
        format!("sim.t{t}")
    }

    /// The publishers of event type `t`, by index.
    pub fn publishers_of(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        self.publishers
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.event_type == t)
            .map(|(i, _)| i)
    }
}

/// One Runner incarnation's settings.
#[derive(Debug, Clone)]
pub struct RunnerCfg {
    pub batch_size: usize,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub lease: Duration,
    pub publish_timeout: Duration,
    pub poll_interval: Duration,
    pub backoff: (Duration, Duration),
    pub grace_period: Duration,
    pub listen: bool,
}

impl RunnerCfg {
    pub fn new(seed: u64, incarnation: usize, plan: &Plan) -> Self {
        let mut rng = Rng::with_seed(mix(seed, &[3, incarnation as u64]));
        let publish_timeout = plan.min_publish_timeout.mul_f64(1.0 + rng.f64());
        let initial = ms(&mut rng, 10..=300);
        Self {
            batch_size: rng.usize(1..=8),
            concurrency: rng.usize(1..=4),
            max_attempts: rng.u32(1..=5),
            // Often barely longer than the publish timeout: a batch then
            // outlives its lease unless the Runner renews it.
            lease: publish_timeout
                + if rng.bool() {
                    ms(&mut rng, 50..=500)
                } else {
                    ms(&mut rng, 500..=4_000)
                },
            publish_timeout,
            poll_interval: ms(&mut rng, 10..=300),
            backoff: (initial, initial.mul_f64(1.0 + rng.f64() * 19.0)),
            grace_period: ms(&mut rng, 0..=2_000),
            listen: rng.bool(),
        }
    }
}
