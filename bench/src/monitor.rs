//! Watches for work on the machine that is not this benchmark: CPU time of
//! other processes (PostgreSQL's own processes excepted) and active sessions
//! of other clients on the PostgreSQL server. Figures taken while either was
//! high were taken under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Row;

use crate::common::{APP_NAME, pg_pool};

/// Cumulative counters since the monitor started.
#[derive(Default)]
pub(crate) struct Foreign {
    /// CPU time of other processes, in clock ticks (1/100 s).
    cpu_ticks: AtomicU64,
    /// Sum over one-second samples of other clients' active sessions.
    pg_active: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    pub(crate) cpu_s: f64,
    pub(crate) pg_active_s: f64,
}

impl Foreign {
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            cpu_s: self.cpu_ticks.load(Ordering::Relaxed) as f64 / 100.0,
            pg_active_s: self.pg_active.load(Ordering::Relaxed) as f64,
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            cpu_s: self.cpu_s - o.cpu_s,
            pg_active_s: self.pg_active_s - o.pg_active_s,
        }
    }
}

/// (comm, ppid, utime + stime) of a process.
fn stat(pid: u32) -> Option<(String, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

fn foreign_ticks(me: u32, last: &mut HashMap<u32, u64>) -> u64 {
    let mut seen = HashMap::new();
    let mut delta = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((comm, ppid, ticks)) = stat(pid) else {
            continue;
        };
        if pid == me || ppid == me || comm == "postgres" {
            continue;
        }
        delta += ticks.saturating_sub(last.get(&pid).copied().unwrap_or(ticks));
        seen.insert(pid, ticks);
    }
    *last = seen;
    delta
}

/// Starts sampling once a second until the program ends.
pub(crate) async fn start(url: &str) -> anyhow::Result<Arc<Foreign>> {
    let foreign = Arc::new(Foreign::default());
    let pool = pg_pool(url, 1).await?;
    let f = foreign.clone();
    tokio::spawn(async move {
        let me = std::process::id();
        let mut last = HashMap::new();
        foreign_ticks(me, &mut last);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            f.cpu_ticks
                .fetch_add(foreign_ticks(me, &mut last), Ordering::Relaxed);
            let active: i64 = sqlx::query(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND state = 'active' AND application_name <> $1 AND pid <> pg_backend_pid()",
            )
            .bind(APP_NAME)
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get(0))
            .unwrap_or_default();
            f.pg_active
                .fetch_add(u64::try_from(active).unwrap_or(0), Ordering::Relaxed);
        }
    });
    Ok(foreign)
}
