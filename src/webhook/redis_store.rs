//! The webhook store in Redis, for several replicas: the same [`HookStore`] as the embedded
//! SQLite file, with each multi-key change one Lua script (atomic on a standalone Redis).
//!
//! Keys (all under the configured prefix):
//! - `delivery:{id}` (hash) and `body:{sha256}`: the replay guard, expiring with the window;
//! - `commit:{sha}` (hash: repository → commit, repository + `\n` → verified pusher),
//!   `shas` (lexical index for prefixes), `commits` (by time, for retention);
//! - `head:{repo}\n{ref}`, `heads`; `marker:{repo}\n{kind}\n{name}`, `markers:{sha}`,
//!   `markerset`; `push:{repo}\n{sha}\n{ref}` (a day);
//! - `fwd:{id}` (hash), `outbox:seq`, and the queues `due` (pending, by due time), `dead`
//!   and `done` (delivered, by time). Taking forwards moves their due time past the lease in
//!   the same script, so exactly one replica holds each; a replica that dies mid-delivery
//!   leaves it to be taken again when the lease runs out.
//!
//! Durability is Redis's: with `appendonly yes` and `appendfsync always`, what a script
//! wrote is on disk before Gogs is answered (docs/operations.md).

use std::collections::HashMap;
use std::sync::Arc;

use redis::{Script, Value};
use serde::Serialize;

use super::store::{
    CommitRecord, Counts, Delivery, Forward, HookStore, Lookup, Pruned, Pusher, Received,
    Retention, State, StoreError,
};
use crate::shared::redis::Redis;

const RECEIVE: &str = r#"
local P = KEYS[1]
local m = cjson.decode(ARGV[1])
local body = ARGV[2]
local now = m.now
local dkey = P .. 'delivery:' .. m.id
local seen = redis.call('HMGET', dkey, 'body_sha', 'at', 'token', 'pusher', 'outbox')
if seen[1] then
  -- The same call retried after a lost reply: answer what it did.
  if seen[3] == m.token then return {'new', seen[4] or '', seen[5] or ''} end
  if seen[1] == m.body_sha then return {'duplicate', m.id, seen[2], '1'} end
  return {'conflict'}
end
local bkey = P .. 'body:' .. m.body_sha
local first = redis.call('GET', bkey)
if first then
  local at, id = string.match(first, '^(%d+):(.*)$')
  return {'duplicate', id, at, '0'}
end
local pusher = false
if type(m.pushed) == 'table' then
  local repo, ref, sha = m.pushed[1], m.pushed[2], m.pushed[3]
  pusher = redis.call('GET', P .. 'push:' .. repo .. '\n' .. sha .. '\n' .. ref)
  if not string.match(sha, '^0+$') then
    local hk = repo .. '\n' .. ref
    redis.call('SET', P .. 'head:' .. hk, sha)
    redis.call('ZADD', P .. 'heads', now, hk)
  end
end
for _, c in ipairs(m.commits) do
  local ck = P .. 'commit:' .. c.sha
  if redis.call('HSETNX', ck, c.repo, c.json) == 1 then
    redis.call('ZADD', P .. 'shas', 0, c.sha)
    redis.call('ZADD', P .. 'commits', now, c.sha .. '\n' .. c.repo)
  end
  if pusher then redis.call('HSETNX', ck, c.repo .. '\n', pusher) end
end
for _, mk in ipairs(m.markers) do
  local base = P .. 'marker:' .. mk.repo .. '\n'
  local key = base .. mk.kind .. '\n' .. mk.name
  local sha = mk.sha
  -- A release names its tag; the tag's SHA comes from the earlier create.
  if type(sha) ~= 'string' then sha = redis.call('HGET', base .. 'tag\n' .. mk.name, 'sha') end
  local old = redis.call('HGET', key, 'sha')
  -- A known SHA is never replaced by an unknown one.
  if not sha then sha = old end
  if old and sha and old ~= sha then
    redis.call('ZREM', P .. 'markers:' .. old, mk.repo .. '\n' .. mk.kind .. ' ' .. mk.name)
  end
  redis.call('HSET', key, 'at', now)
  if sha then
    redis.call('HSET', key, 'sha', sha)
    redis.call('ZADD', P .. 'markers:' .. sha, now, mk.repo .. '\n' .. mk.kind .. ' ' .. mk.name)
  end
  redis.call('ZADD', P .. 'markerset', now, mk.repo .. '\n' .. mk.kind .. '\n' .. mk.name)
  -- A tag that arrives after its release gives the release its SHA.
  if mk.kind == 'tag' and sha then
    local rk = base .. 'release\n' .. mk.name
    if redis.call('EXISTS', rk) == 1 and not redis.call('HGET', rk, 'sha') then
      redis.call('HSET', rk, 'sha', sha)
      redis.call('ZADD', P .. 'markers:' .. sha, now, mk.repo .. '\nrelease ' .. mk.name)
    end
  end
end
local ids = {}
for _, r in ipairs(m.forwards) do
  local id = redis.call('INCR', P .. 'outbox:seq')
  redis.call('HSET', P .. 'fwd:' .. id, 'delivery', m.id, 'receiver', r, 'event', m.event,
    'repo', m.repo, 'body', body, 'pusher', pusher or '', 'state', 'pending', 'attempts', '0',
    'next_at', now, 'last_error', '', 'created', now, 'updated', now)
  redis.call('ZADD', P .. 'due', now, id)
  table.insert(ids, tostring(id))
end
local outbox = table.concat(ids, ',')
redis.call('HSET', dkey, 'body_sha', m.body_sha, 'at', now, 'token', m.token,
  'pusher', pusher or '', 'outbox', outbox, 'event', m.event, 'repo', m.repo, 'source', m.source)
redis.call('PEXPIRE', dkey, m.window)
redis.call('SET', bkey, now .. ':' .. m.id, 'PX', m.window)
return {'new', pusher or '', outbox}
"#;

const TAKE_DUE: &str = r#"
local P = KEYS[1]
local now, until_ms, limit = ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local k = P .. 'fwd:' .. id
  local row = redis.call('HGETALL', k)
  if #row == 0 then
    redis.call('ZREM', P .. 'due', id)
  else
    redis.call('ZADD', P .. 'due', until_ms, id)
    redis.call('HSET', k, 'next_at', until_ms)
    table.insert(out, id)
    table.insert(out, row)
  end
end
return out
"#;

/// ARGV: id, state, attempts, next_at (pending only), error, now.
const SETTLE: &str = r#"
local P = KEYS[1]
local id, state, attempts, next_at, err, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local k = P .. 'fwd:' .. id
if redis.call('EXISTS', k) == 0 then return 0 end
redis.call('HSET', k, 'state', state, 'attempts', attempts, 'last_error', err, 'updated', now)
if state == 'pending' then
  redis.call('HSET', k, 'next_at', next_at)
  redis.call('ZADD', P .. 'due', next_at, id)
elseif state == 'dead' then
  redis.call('ZREM', P .. 'due', id)
  redis.call('ZADD', P .. 'dead', id, id)
else
  redis.call('ZREM', P .. 'due', id)
  redis.call('ZADD', P .. 'done', now, id)
end
return 1
"#;

const REQUEUE: &str = r#"
local P = KEYS[1]
local id, now = ARGV[1], ARGV[2]
local k = P .. 'fwd:' .. id
if redis.call('HGET', k, 'state') ~= 'dead' then return 0 end
redis.call('HSET', k, 'state', 'pending', 'attempts', '0', 'next_at', now, 'updated', now)
redis.call('ZREM', P .. 'dead', id)
redis.call('ZADD', P .. 'due', now, id)
return 1
"#;

/// ARGV: done cutoff, commit cutoff, commit max, batch. Returns forwards and commits removed.
const PRUNE: &str = r#"
local P = KEYS[1]
local done_cut, commit_cut, commit_max, batch = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local forwards, commits = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'done', '-inf', '(' .. done_cut, 'LIMIT', 0, batch)) do
  redis.call('DEL', P .. 'fwd:' .. id)
  redis.call('ZREM', P .. 'done', id)
  forwards = forwards + 1
end
local function drop_commit(member)
  local sha, repo = string.match(member, '^([^\n]*)\n(.*)$')
  local ck = P .. 'commit:' .. sha
  redis.call('HDEL', ck, repo, repo .. '\n')
  if redis.call('EXISTS', ck) == 0 then redis.call('ZREM', P .. 'shas', sha) end
  redis.call('ZREM', P .. 'commits', member)
  commits = commits + 1
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', P .. 'commits', '-inf', '(' .. commit_cut, 'LIMIT', 0, batch)) do
  drop_commit(member)
end
local over = redis.call('ZCARD', P .. 'commits') - commit_max
if over > 0 then
  if over > tonumber(batch) then over = tonumber(batch) end
  for _, member in ipairs(redis.call('ZRANGE', P .. 'commits', 0, over - 1)) do drop_commit(member) end
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', P .. 'markerset', '-inf', '(' .. commit_cut, 'LIMIT', 0, batch)) do
  local repo, kind, name = string.match(member, '^([^\n]*)\n([^\n]*)\n(.*)$')
  local key = P .. 'marker:' .. member
  local sha = redis.call('HGET', key, 'sha')
  if sha then redis.call('ZREM', P .. 'markers:' .. sha, repo .. '\n' .. kind .. ' ' .. name) end
  redis.call('DEL', key)
  redis.call('ZREM', P .. 'markerset', member)
end
for _, hk in ipairs(redis.call('ZRANGEBYSCORE', P .. 'heads', '-inf', '(' .. commit_cut, 'LIMIT', 0, batch)) do
  redis.call('DEL', P .. 'head:' .. hk)
  redis.call('ZREM', P .. 'heads', hk)
end
return {forwards, commits}
"#;

/// Largest number of entries one prune script removes per kind, so Redis is never blocked long.
const PRUNE_BATCH: i64 = 1000;

pub struct RedisStore {
    redis: Arc<Redis>,
    receive: Script,
    take_due: Script,
    settle: Script,
    requeue: Script,
    prune: Script,
}

#[derive(Serialize)]
struct Meta<'a> {
    id: &'a str,
    body_sha: &'a str,
    event: &'a str,
    repo: &'a str,
    source: &'a str,
    now: String,
    window: String,
    token: String,
    pushed: Option<(String, &'a str, &'a str)>,
    commits: Vec<StoredCommitArg<'a>>,
    markers: Vec<MarkerArg<'a>>,
    forwards: Vec<&'a str>,
}

#[derive(Serialize)]
struct StoredCommitArg<'a> {
    sha: &'a str,
    repo: &'a str,
    json: String,
}

#[derive(Serialize)]
struct MarkerArg<'a> {
    repo: &'a str,
    name: &'a str,
    kind: &'a str,
    sha: Option<&'a str>,
}

impl RedisStore {
    pub fn new(redis: Arc<Redis>) -> RedisStore {
        RedisStore {
            redis,
            receive: Script::new(RECEIVE),
            take_due: Script::new(TAKE_DUE),
            settle: Script::new(SETTLE),
            requeue: Script::new(REQUEUE),
            prune: Script::new(PRUNE),
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Failed {
            path: self.redis.url.clone(),
            message: e.to_string(),
        }
    }

    fn settle_with(
        &self,
        id: i64,
        state: State,
        attempts: u32,
        next_ms: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let prefix = self.redis.prefix();
        let r = &self.redis;
        let script = &self.settle;
        r.block(r.run("settle", |mut c| {
            let mut inv = script.prepare_invoke();
            inv.key(prefix)
                .arg(id)
                .arg(state.as_str())
                .arg(attempts)
                .arg(next_ms)
                .arg(error)
                .arg(now_ms);
            async move { inv.invoke_async::<i64>(&mut c).await }
        }))
        .map(drop)
        .map_err(|e| self.failed(e))
    }

    fn forwards(&self, ids: &[i64]) -> Result<Vec<Forward>, StoreError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.redis.key(&format!("fwd:{id}")))
            .collect();
        let r = &self.redis;
        let rows: Vec<HashMap<String, Vec<u8>>> = r
            .block(r.run("list", |mut c| {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.hgetall(k);
                }
                async move { pipe.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter(|(_, row)| !row.is_empty())
            .map(|(id, row)| forward_of(*id, &row))
            .collect())
    }
}

fn text(row: &HashMap<String, Vec<u8>>, field: &str) -> String {
    row.get(field)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn number(row: &HashMap<String, Vec<u8>>, field: &str) -> i64 {
    text(row, field).parse().unwrap_or(0)
}

fn pusher_of(text: &str) -> Option<Pusher> {
    if text.is_empty() {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn forward_of(id: i64, row: &HashMap<String, Vec<u8>>) -> Forward {
    let last_error = text(row, "last_error");
    Forward {
        id,
        delivery: text(row, "delivery"),
        receiver: text(row, "receiver"),
        event: text(row, "event"),
        repo: text(row, "repo"),
        body: row.get("body").cloned().unwrap_or_default(),
        pusher: pusher_of(&text(row, "pusher")),
        state: State::parse(&text(row, "state")),
        attempts: number(row, "attempts") as u32,
        next_at_ms: number(row, "next_at"),
        last_error: (!last_error.is_empty()).then_some(last_error),
        created_ms: number(row, "created"),
    }
}

/// A flat `field, value, ...` array as a map.
fn map_of(v: &Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    if let Value::Array(items) = v {
        for pair in items.chunks(2) {
            if let [Value::BulkString(k), value] = pair {
                let bytes = match value {
                    Value::BulkString(b) => b.clone(),
                    Value::Int(n) => n.to_string().into_bytes(),
                    _ => Vec::new(),
                };
                out.insert(String::from_utf8_lossy(k).into_owned(), bytes);
            }
        }
    }
    out
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl HookStore for RedisStore {
    fn receive(&self, d: &Delivery<'_>) -> Result<Received, StoreError> {
        let commits = d
            .commits
            .iter()
            .map(|c| {
                let mut stored = c.clone();
                stored.verified_pusher = None;
                stored.markers = Vec::new();
                Ok(StoredCommitArg {
                    sha: &c.sha,
                    repo: &c.repo,
                    json: serde_json::to_string(&(d.now_ms, stored))?,
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| self.failed(e))?;
        let meta = Meta {
            id: d.id,
            body_sha: d.body_sha,
            event: d.event,
            repo: d.repo,
            source: d.source,
            now: d.now_ms.to_string(),
            window: d.replay_window_ms.max(1).to_string(),
            token: format!("{:016x}", crate::random::next_u64()),
            pushed: d
                .pushed
                .map(|(repo, git_ref, sha)| (repo.to_ascii_lowercase(), git_ref, sha)),
            commits,
            markers: d
                .markers
                .iter()
                .map(|m| MarkerArg {
                    repo: &m.repo,
                    name: &m.name,
                    kind: &m.kind,
                    sha: m.sha.as_deref(),
                })
                .collect(),
            forwards: d.forwards.iter().map(|f| f.receiver.as_str()).collect(),
        };
        let meta = serde_json::to_string(&meta).map_err(|e| self.failed(e))?;
        let (prefix, script, body) = (self.redis.prefix(), &self.receive, d.body);
        let r = &self.redis;
        let reply: Vec<String> = r
            .block(r.run("receive", |mut c| {
                let mut inv = script.prepare_invoke();
                inv.key(prefix).arg(&meta).arg(body);
                async move { inv.invoke_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        match reply.first().map(String::as_str) {
            Some("new") => Ok(Received::New {
                verified_pusher: reply.get(1).and_then(|p| pusher_of(p)),
                outbox: reply
                    .get(2)
                    .map(|ids| ids.split(',').filter_map(|i| i.parse().ok()).collect())
                    .unwrap_or_default(),
            }),
            Some("duplicate") => Ok(Received::Duplicate {
                delivery: reply.get(1).cloned().unwrap_or_default(),
                first_seen_ms: reply.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
                same_id: reply.get(3).map(String::as_str) == Some("1"),
            }),
            Some("conflict") => Ok(Received::Conflict),
            other => Err(self.failed(format!("unexpected reply {other:?}"))),
        }
    }

    fn note_push(
        &self,
        repo: &str,
        refs: &[(String, String)],
        pusher: &Pusher,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(pusher).map_err(|e| self.failed(e))?;
        let repo = repo.to_ascii_lowercase();
        let keys: Vec<String> = refs
            .iter()
            .map(|(git_ref, sha)| self.redis.key(&format!("push:{repo}\n{sha}\n{git_ref}")))
            .collect();
        let r = &self.redis;
        r.block(r.run("note_push", |mut c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for k in &keys {
                // A push's webhook arrives within seconds; a day is generous.
                pipe.pset_ex(k, &text, 24 * 3600 * 1000).ignore();
            }
            async move { pipe.query_async::<()>(&mut c).await }
        }))
        .map_err(|e| self.failed(e))
    }

    fn commit(&self, sha: &str) -> Result<Lookup, StoreError> {
        let prefix = sha.to_ascii_lowercase();
        if prefix.len() < 7 || prefix.len() > 40 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Lookup::NotFound);
        }
        let r = &self.redis;
        let shas_key = r.key("shas");
        // 'g' sorts after every hex digit: [prefix, prefix + "g") is exactly the prefix.
        let (lo, hi) = (format!("[{prefix}"), format!("({prefix}g"));
        let mut shas: Vec<String> = r
            .block(r.run("commit", |mut c| {
                let cmd = redis::cmd("ZRANGEBYLEX")
                    .arg(&shas_key)
                    .arg(&lo)
                    .arg(&hi)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(5)
                    .to_owned();
                async move { cmd.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        match shas.len() {
            0 => return Ok(Lookup::NotFound),
            1 => {}
            _ => return Ok(Lookup::Ambiguous(shas)),
        }
        let full = shas.remove(0);
        let (ck, mk) = (
            r.key(&format!("commit:{full}")),
            r.key(&format!("markers:{full}")),
        );
        let (fields, markers): (HashMap<String, String>, Vec<String>) = r
            .block(r.run("commit", |mut c| {
                let mut pipe = redis::pipe();
                pipe.hgetall(&ck).zrange(&mk, 0, -1);
                async move { pipe.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        let mut found: Vec<(i64, CommitRecord)> = fields
            .iter()
            .filter(|(field, _)| !field.ends_with('\n'))
            .filter_map(|(repo, json)| {
                let (at, mut c): (i64, CommitRecord) = serde_json::from_str(json).ok()?;
                c.verified_pusher = fields.get(&format!("{repo}\n")).and_then(|p| pusher_of(p));
                c.markers = markers
                    .iter()
                    .filter_map(|m| m.split_once('\n'))
                    .filter(|(r, _)| *r == c.repo)
                    .map(|(_, label)| label.to_string())
                    .collect();
                Some((at, c))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.repo.cmp(&b.1.repo)));
        Ok(if found.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::Found(found.into_iter().map(|(_, c)| c).collect())
        })
    }

    fn head(&self, repo: &str, git_ref: &str) -> Result<Option<String>, StoreError> {
        let r = &self.redis;
        let key = r.key(&format!("head:{}\n{git_ref}", repo.to_ascii_lowercase()));
        r.block(r.run("head", |mut c| {
            let cmd = redis::cmd("GET").arg(&key).to_owned();
            async move { cmd.query_async(&mut c).await }
        }))
        .map_err(|e| self.failed(e))
    }

    fn take_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Forward>, StoreError> {
        let (prefix, script, r) = (self.redis.prefix(), &self.take_due, &self.redis);
        let reply: Vec<Value> = r
            .block(r.run("take_due", |mut c| {
                let mut inv = script.prepare_invoke();
                inv.key(prefix)
                    .arg(now_ms)
                    .arg(now_ms + lease_ms)
                    .arg(limit);
                async move { inv.invoke_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        Ok(reply
            .chunks(2)
            .filter_map(|pair| {
                let id: i64 = string_of(pair.first()?)?.parse().ok()?;
                let mut f = forward_of(id, &map_of(pair.get(1)?));
                // As taken: due now, the lease is the store's business.
                f.next_at_ms = f.next_at_ms.min(now_ms);
                Some(f)
            })
            .collect())
    }

    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let r = &self.redis;
        let key = r.key("due");
        let first: Vec<(String, f64)> = r
            .block(r.run("next_due", |mut c| {
                let cmd = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .to_owned();
                async move { cmd.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        Ok(first.first().map(|(_, at)| *at as i64))
    }

    fn delivered(&self, id: i64, attempts: u32, now_ms: i64) -> Result<(), StoreError> {
        self.settle_with(id, State::Delivered, attempts, 0, "", now_ms)
    }

    fn retry_at(
        &self,
        id: i64,
        attempts: u32,
        next_ms: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.settle_with(id, State::Pending, attempts, next_ms, error, now_ms)
    }

    fn dead(&self, id: i64, attempts: u32, error: &str, now_ms: i64) -> Result<(), StoreError> {
        self.settle_with(id, State::Dead, attempts, 0, error, now_ms)
    }

    fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Forward>, StoreError> {
        let r = &self.redis;
        let queues: Vec<String> = match state {
            Some(State::Pending) => vec![r.key("due")],
            Some(State::Dead) => vec![r.key("dead")],
            Some(State::Delivered) => vec![r.key("done")],
            None => vec![r.key("due"), r.key("dead"), r.key("done")],
        };
        let members: Vec<Vec<String>> = r
            .block(r.run("list", |mut c| {
                let mut pipe = redis::pipe();
                for q in &queues {
                    pipe.zrange(q, 0, -1);
                }
                async move { pipe.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        let mut ids: Vec<i64> = members
            .iter()
            .flatten()
            .filter_map(|m| m.parse().ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit);
        let mut rows = self.forwards(&ids)?;
        if let Some(s) = state {
            rows.retain(|f| f.state == s);
        }
        Ok(rows)
    }

    fn requeue(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        let (prefix, script, r) = (self.redis.prefix(), &self.requeue, &self.redis);
        r.block(r.run("requeue", |mut c| {
            let mut inv = script.prepare_invoke();
            inv.key(prefix).arg(id).arg(now_ms);
            async move { inv.invoke_async::<i64>(&mut c).await }
        }))
        .map(|n| n == 1)
        .map_err(|e| self.failed(e))
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let r = &self.redis;
        let (due, dead) = (r.key("due"), r.key("dead"));
        let (pending, dead): (u64, u64) = r
            .block(r.run("counts", |mut c| {
                let mut pipe = redis::pipe();
                pipe.zcard(&due).zcard(&dead);
                async move { pipe.query_async(&mut c).await }
            }))
            .map_err(|e| self.failed(e))?;
        Ok(Counts { pending, dead })
    }

    fn prune(&self, ret: &Retention) -> Result<Pruned, StoreError> {
        let (prefix, script, r) = (self.redis.prefix(), &self.prune, &self.redis);
        let mut total = Pruned::default();
        // Deliveries expire by themselves (PX with the replay window).
        for _ in 0..1000 {
            let (forwards, commits): (u64, u64) = r
                .block(r.run("prune", |mut c| {
                    let mut inv = script.prepare_invoke();
                    inv.key(prefix)
                        .arg(ret.now_ms - ret.delivered_ms)
                        .arg(ret.now_ms - ret.commit_retention_ms)
                        .arg(ret.commit_max)
                        .arg(PRUNE_BATCH);
                    async move { inv.invoke_async(&mut c).await }
                }))
                .map_err(|e| self.failed(e))?;
            total.forwards += forwards;
            total.commits += commits;
            if forwards < PRUNE_BATCH as u64 && commits < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }
}
