//! Signed-out sessions, refused by every replica.
//!
//! A session lives in its cookie, so signing out only clears the browser's copy; a copy kept
//! elsewhere would still open. Sign-out therefore records the session id until the session's
//! absolute lifetime ends, and every request's session is checked against that set. The set
//! is read without locks (one `ArcSwap` load, nothing when it is empty).
//!
//! Embedded: the set lives in the process (a restart forgets it). With `[redis]`: each
//! revocation is appended to a log numbered by Redis (`revocations`, scored by sequence), and
//! every replica reads what is new once a second, so a session revoked through one replica is
//! refused by all of them within about a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge, Registry};
use redis::Script;

use crate::shared::redis::{Redis, RedisError};

/// How often replicas read new revocations from Redis.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// ARGV: member (`until:sid`). Returns the new sequence number.
const REVOKE: &str = r#"
local seq = redis.call('INCR', KEYS[1] .. 'revocations:seq')
redis.call('ZADD', KEYS[1] .. 'revocations', seq, ARGV[1])
return seq
"#;

/// ARGV: last sequence seen. Returns the current sequence, then `member, seq` pairs after it.
const SINCE: &str = r#"
local seq = tonumber(redis.call('GET', KEYS[1] .. 'revocations:seq') or '0')
local out = {seq}
local from = tonumber(ARGV[1])
if from > seq then from = 0 end
for _, v in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1] .. 'revocations', '(' .. from, '+inf', 'WITHSCORES', 'LIMIT', 0, 10000)) do
  table.insert(out, v)
end
return out
"#;

/// ARGV: now (unix seconds). Drops revocations of sessions that have expired anyway.
const PRUNE: &str = r#"
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1] .. 'revocations', 0, -1)) do
  local until_s = tonumber(string.match(m, '^(%d+):'))
  if until_s == nil or until_s < tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1] .. 'revocations', m)
    n = n + 1
  end
end
return n
"#;

pub struct RevocationMetrics {
    pub revoked: IntCounter,
    pub known: IntGauge,
}

impl RevocationMetrics {
    fn new() -> Result<RevocationMetrics, prometheus::Error> {
        Ok(RevocationMetrics {
            revoked: IntCounter::new(
                "gatehouse_sessions_revoked_total",
                "Sessions signed out through this replica (refused everywhere afterwards).",
            )?,
            known: IntGauge::new(
                "gatehouse_session_revocations",
                "Signed-out sessions this replica refuses (until their absolute lifetime ends).",
            )?,
        })
    }
}

pub struct Revocations {
    /// sid → until (unix seconds): what requests read.
    set: ArcSwap<HashMap<String, u64>>,
    /// The writers' copy and the last Redis sequence read.
    master: Mutex<(HashMap<String, u64>, i64)>,
    shared: Option<Arc<Redis>>,
    pub metrics: RevocationMetrics,
}

impl Revocations {
    /// Revocations held by this process only.
    pub fn embedded() -> Result<Arc<Revocations>, prometheus::Error> {
        Revocations::with(None)
    }

    /// Revocations shared through Redis.
    pub fn shared(redis: Arc<Redis>) -> Result<Arc<Revocations>, prometheus::Error> {
        Revocations::with(Some(redis))
    }

    fn with(shared: Option<Arc<Redis>>) -> Result<Arc<Revocations>, prometheus::Error> {
        Ok(Arc::new(Revocations {
            set: ArcSwap::from_pointee(HashMap::new()),
            master: Mutex::new((HashMap::new(), 0)),
            shared,
            metrics: RevocationMetrics::new()?,
        }))
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.metrics.revoked.clone()))?;
        registry.register(Box::new(self.metrics.known.clone()))
    }

    /// Whether the session `sid` was signed out. Lock-free.
    pub fn is_revoked(&self, sid: &str) -> bool {
        let set = self.set.load();
        !set.is_empty() && set.contains_key(sid)
    }

    /// Adds revocations and publishes the new set.
    fn add(&self, entries: impl IntoIterator<Item = (String, u64)>, seq: Option<i64>) {
        let mut m = self
            .master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = super::session::now();
        let before = m.0.len();
        for (sid, until) in entries {
            if until > now {
                m.0.insert(sid, until);
            }
        }
        let expired = m.0.values().any(|&until| until <= now);
        m.0.retain(|_, until| *until > now);
        if let Some(s) = seq {
            m.1 = s;
        }
        if m.0.len() != before || expired {
            self.metrics.known.set(m.0.len() as i64);
            self.set.store(Arc::new(m.0.clone()));
        }
    }

    fn last_seq(&self) -> i64 {
        self.master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
    }

    /// Refuses `sid` from now until `until` (unix seconds) here, and with Redis on every
    /// replica. With Redis, an error means other replicas may still accept the session.
    pub async fn revoke(&self, sid: &str, until: u64) -> Result<(), RedisError> {
        self.add([(sid.to_string(), until)], None);
        self.metrics.revoked.inc();
        let Some(redis) = &self.shared else {
            return Ok(());
        };
        let member = format!("{until}:{sid}");
        let script = Script::new(REVOKE);
        redis
            .run("revoke_session", |mut c| {
                let mut inv = script.prepare_invoke();
                inv.key(redis.prefix()).arg(&member);
                async move { inv.invoke_async::<i64>(&mut c).await }
            })
            .await
            .map(drop)
    }

    /// Reads revocations made since the last read (all of them the first time).
    pub async fn sync(&self) -> Result<usize, RedisError> {
        let Some(redis) = &self.shared else {
            return Ok(0);
        };
        let from = self.last_seq();
        let script = Script::new(SINCE);
        let reply: Vec<String> = redis
            .run("revocations_sync", |mut c| {
                let mut inv = script.prepare_invoke();
                inv.key(redis.prefix()).arg(from);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let Some(seq) = reply.first().and_then(|s| s.parse::<i64>().ok()) else {
            return Ok(0);
        };
        let mut last = if seq < from { 0 } else { from };
        let entries: Vec<(String, u64)> = reply[1..]
            .chunks(2)
            .filter_map(|pair| {
                let (member, score) = (pair.first()?, pair.get(1)?);
                last = last.max(score.parse::<f64>().ok()? as i64);
                let (until, sid) = member.split_once(':')?;
                Some((sid.to_string(), until.parse().ok()?))
            })
            .collect();
        let n = entries.len();
        self.add(entries, Some(last));
        Ok(n)
    }

    /// Keeps the set current (with Redis) and drops revocations of expired sessions; ends
    /// when `stop` turns true.
    pub fn start(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                n += 1;
                match me.sync().await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("session revocations read from Redis again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read session revocations from Redis; revocations made through other replicas wait until it is back");
                    }
                    Err(_) => {}
                }
                // Expired entries leave the local set each minute, and Redis's every ten.
                if n.is_multiple_of(60) {
                    me.add([], None);
                }
                if n.is_multiple_of(600)
                    && let Some(redis) = &me.shared
                {
                    let script = Script::new(PRUNE);
                    let now = super::session::now();
                    let _ = redis
                        .run("revocations_prune", |mut c| {
                            let mut inv = script.prepare_invoke();
                            inv.key(redis.prefix()).arg(now);
                            async move { inv.invoke_async::<i64>(&mut c).await }
                        })
                        .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_session_is_refused_until_its_lifetime_ends() {
        let r = Revocations::embedded().unwrap();
        assert!(!r.is_revoked("abc"));
        let now = crate::identity::session::now();
        r.add([("abc".to_string(), now + 60)], None);
        assert!(r.is_revoked("abc"));
        assert!(!r.is_revoked("abd"));
        // Already over: nothing to refuse, nothing kept.
        r.add([("old".to_string(), now.saturating_sub(1))], None);
        assert!(!r.is_revoked("old"));
        assert_eq!(r.metrics.known.get(), 1);
    }
}
