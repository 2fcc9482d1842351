//! [`Store`] for [`RedisStore`]: each store call as the commands or the script it sends.

use super::*;

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move { Ok(self.commands_for(key)?.get::<Option<Bytes>, _>(key).await?) })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args: Vec<Value> = vec![
                Value::Bytes(value),
                millis(ttl).into(),
                self.inner.channel.as_str().into(),
                feed::notice_message(key, FillNotice::Changed).into(),
            ];
            let _: i64 = self
                .run(&self.inner.put, PUT_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.remove(key).await.map(drop) })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let expire = Some(Expiration::PX(millis(ttl)));
            let reply: Option<String> = self
                .commands_for(key)?
                .set(key, token, expire, Some(SetOptions::NX), false)
                .await?;
            Ok(reply.is_some())
        })
    }

    fn try_lock_fenced<'a>(
        &'a self,
        key: &'a str,
        fence_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let args: Vec<Value> = vec![token.into(), millis(ttl).into()];
            let keys = vec![key.to_owned(), fence_key.to_owned()];
            let fence: i64 = self
                .run(&self.inner.lock_fenced, LOCK_FENCED_LUA, keys, args)
                .await?;
            Ok(u64::try_from(fence).ok().filter(|&fence| fence > 0))
        })
    }

    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args: Vec<Value> = vec![token.into(), millis(ttl).into()];
            let extended: i64 = self
                .run(&self.inner.extend, EXTEND_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(extended == 1)
        })
    }

    fn unlock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        entry_key: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let message = entry_key.map_or_else(String::new, |entry| {
                feed::notice_message(entry, FillNotice::Released)
            });
            let args: Vec<Value> = vec![
                token.into(),
                self.inner.channel.as_str().into(),
                message.into(),
            ];
            let _: i64 = self
                .run(&self.inner.unlock, UNLOCK_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(())
        })
    }

    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let message = feed::notice_message(entry_key, notice);
            let _: i64 = self
                .commands_for(entry_key)?
                .publish(self.inner.channel.as_str(), message)
                .await?;
            Ok(())
        })
    }

    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        self.inner.feed.notices.register(entry_key)
    }

    fn finish_fill<'a>(&'a self, end: crate::store::FillEnd<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (notice_key, notice) = end.notice;
            let flag = |on: bool| Value::from(if on { "1" } else { "0" });
            let write_mode = match (&end.write, end.only_if_absent) {
                (None, _) => "0",
                (Some(_), false) => "1",
                (Some(_), true) => "2",
            };
            // The written key's own change, when it is not the one the notice names (a
            // variant, or an index, written for a request keyed on another).
            let change = match end.write.as_ref() {
                Some((key, _, _)) if *key != notice_key => {
                    feed::notice_message(key, FillNotice::Changed)
                }
                _ => String::new(),
            };
            let (write_key, value, ttl) = match end.write {
                Some((key, value, ttl)) => (key, Value::Bytes(value), millis(ttl)),
                None => (notice_key, Value::from(""), 0),
            };
            let (lock_key, token) = end.unlock.unwrap_or((notice_key, ""));
            let keys = vec![write_key.to_owned(), lock_key.to_owned()];
            let args: Vec<Value> = vec![
                Value::from(write_mode),
                value,
                ttl.into(),
                self.inner.channel.as_str().into(),
                feed::notice_message(notice_key, notice).into(),
                flag(end.unlock.is_some()),
                token.into(),
                change.into(),
            ];
            let _: i64 = self.run(&self.inner.finish, FINISH_LUA, keys, args).await?;
            Ok(())
        })
    }

    fn read_or_lock<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, crate::store::LockAttempt> {
        Box::pin(async move {
            use crate::store::LockAttempt;
            let keys = vec![entry_key.to_owned(), lock_key.to_owned()];
            let args: Vec<Value> = vec![token.into(), millis(ttl).into(), MAX_INLINE_READ.into()];
            let reply: Value = self
                .run(&self.inner.read_or_lock, READ_OR_LOCK_LUA, keys, args)
                .await?;
            let mut parts = match reply {
                Value::Array(parts) => parts.into_iter(),
                other => vec![other].into_iter(),
            };
            let kind = parts.next().and_then(|kind| kind.as_i64());
            Ok(match kind {
                Some(1) => match parts.next().and_then(Value::into_bytes) {
                    Some(value) => LockAttempt::Found(value),
                    None => LockAttempt::Held,
                },
                Some(2) => LockAttempt::Acquired,
                Some(4) => match self
                    .commands_for(entry_key)?
                    .get::<Option<Bytes>, _>(entry_key)
                    .await?
                {
                    Some(value) => LockAttempt::Found(value),
                    // Gone in between: whoever removed it may be filling; wait for them.
                    None => LockAttempt::Held,
                },
                _ => LockAttempt::Held,
            })
        })
    }

    fn try_lock_or_read<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> StoreFuture<'a, crate::store::LockAttempt> {
        Box::pin(async move {
            use crate::store::LockAttempt;
            let keys = vec![entry_key.to_owned(), lock_key.to_owned()];
            let seen = seen.map_or(Value::from(""), |s| {
                Value::Bytes(Bytes::copy_from_slice(&s))
            });
            let args: Vec<Value> = vec![token.into(), millis(ttl).into(), seen];
            let reply: Value = self
                .run(&self.inner.lock_or_read, LOCK_OR_READ_LUA, keys, args)
                .await?;
            let parts = match reply {
                Value::Array(parts) => parts,
                other => vec![other],
            };
            Ok(
                match (parts.first().and_then(Value::as_i64), parts.get(1)) {
                    (Some(1), Some(value)) => LockAttempt::Found(
                        value
                            .as_bytes()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default(),
                    ),
                    (Some(2), _) => LockAttempt::Acquired,
                    _ => LockAttempt::Held,
                },
            )
        })
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        self.inner.feed.watch(watcher);
        true
    }

    fn record_purge<'a>(
        &'a self,
        records: &'a str,
        member: &'a str,
        keep: usize,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let keys = vec![records.to_owned(), purge_floor_key(records)];
            let args: Vec<Value> = vec![
                member.into(),
                i64::try_from(keep.max(1)).unwrap_or(i64::MAX).into(),
                self.inner.channel.as_str().into(),
            ];
            let at: i64 = self
                .run(&self.inner.record_purge, RECORD_PURGE_LUA, keys, args)
                .await?;
            Ok(u64::try_from(at).unwrap_or(0))
        })
    }

    fn purges<'a>(&'a self, records: &'a str) -> StoreFuture<'a, PurgeRecords> {
        Box::pin(async move {
            let keys = vec![records.to_owned(), purge_floor_key(records)];
            let reply: Value = self
                .run(&self.inner.read_purges, READ_PURGES_LUA, keys, Vec::new())
                .await?;
            let as_us = |value: &Value| {
                value
                    .as_i64()
                    .or_else(|| {
                        value
                            .as_str()
                            .and_then(|s| s.parse::<f64>().ok().map(|f| f as i64))
                    })
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0)
            };
            let Value::Array(parts) = reply else {
                return Err(StoreError::from_kind(StoreErrorKind::Backend));
            };
            let (Some(now), Some(floor), Some(Value::Array(pairs))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(StoreError::from_kind(StoreErrorKind::Backend));
            };
            let records = pairs
                .chunks_exact(2)
                .filter_map(|pair| Some((pair[0].as_string()?, as_us(&pair[1]))))
                .collect();
            Ok(PurgeRecords {
                now_us: as_us(now),
                floor_us: as_us(floor),
                records,
            })
        })
    }

    fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        self.inner.feed.watch_purges(watcher);
        true
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let groups = slot_groups(self.inner.pool.is_clustered(), keys);
            let replies = futures_util::future::try_join_all(groups.iter().map(|group| {
                let group_keys: Vec<&str> = group.iter().map(|&(_, key)| key).collect();
                async move {
                    let first = group_keys.first().copied().unwrap_or_default();
                    let commands = self.commands_for(first)?;
                    Ok::<_, StoreError>(commands.mget::<Value, _>(group_keys).await?)
                }
            }))
            .await?;
            let mut values = vec![None; keys.len()];
            for (group, reply) in groups.iter().zip(replies) {
                let replies = match reply {
                    Value::Array(items) => items,
                    other => vec![other],
                };
                for (&(index, _), value) in group.iter().zip(replies) {
                    if let Some(slot) = values.get_mut(index) {
                        *slot = value.into_bytes();
                    }
                }
            }
            Ok(values)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            use fred::types::scan::Scanner;
            use futures_util::{future::Either, TryStreamExt};
            self.ensure_connected()?;
            let pattern = format!("{}*", escape_glob(prefix));
            let client = self.inner.pool.next();
            let clustered = client.is_clustered();
            let mut pages = if clustered {
                // `SCAN` on every primary, through fred's cached slot map (fetched first: a
                // fresh connection may not have it yet).
                client.sync_cluster().await?;
                Either::Left(client.scan_cluster(pattern, Some(SCAN_COUNT), None))
            } else {
                Either::Right(client.scan(pattern, Some(SCAN_COUNT), None))
            };
            let mut deleted = 0u64;
            while let Some(mut page) = pages.try_next().await? {
                let keys: Vec<String> = page
                    .take_results()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|key| key.as_str().map(str::to_owned))
                    .collect();
                // One page of a cluster comes from one node but spans slots: `UNLINK` each
                // slot's keys, together.
                let groups = slot_groups(clustered, &keys);
                let commands = self.commands();
                let unlinked = futures_util::future::try_join_all(groups.iter().map(|group| {
                    let group_keys: Vec<&str> = group.iter().map(|&(_, key)| key).collect();
                    let commands = &commands;
                    async move { commands.unlink::<i64, _>(group_keys).await }
                }))
                .await?;
                let page_deleted: i64 = unlinked.iter().sum();
                deleted = deleted.saturating_add(u64::try_from(page_deleted).unwrap_or(0));
                page.next();
            }
            // Near tiers drop what they hold under the prefix.
            let _: i64 = self
                .inner
                .pool
                .next()
                .with_options(&self.inner.fail_fast)
                .publish(self.inner.channel.as_str(), feed::prefix_message(prefix))
                .await?;
            Ok(deleted)
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args: Vec<Value> = vec![
                self.inner.channel.as_str().into(),
                feed::notice_message(key, FillNotice::Changed).into(),
            ];
            let removed: i64 = self
                .run(&self.inner.delete, DELETE_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(removed > 0)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(RedisStore::ping(self))
    }

    fn is_connected(&self) -> bool {
        RedisStore::is_connected(self)
    }
}

/// Keys asked of `SCAN` per page: large enough that a big keyspace takes few round trips,
/// small enough that one page's `UNLINK` stays short.
const SCAN_COUNT: u32 = 1_000;

/// Escapes Redis glob characters (`* ? [ ] \`), so a literal prefix matches only itself.
fn escape_glob(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The keys (with their positions) of each multi-key command: all in one on a single server;
/// one group per hash slot on a cluster, where a command's keys must share a slot.
fn slot_groups(clustered: bool, keys: &[String]) -> Vec<Vec<(usize, &str)>> {
    let indexed = keys.iter().map(String::as_str).enumerate();
    if !clustered {
        let all: Vec<_> = indexed.collect();
        return if all.is_empty() {
            Vec::new()
        } else {
            vec![all]
        };
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<(usize, &str)>> = Default::default();
    for (index, key) in indexed {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        by_slot.entry(slot).or_default().push((index, key));
    }
    by_slot.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped_and_slots_group_keys() {
        assert_eq!(escape_glob(r"user:1*a?[b]\c"), r"user:1\*a\?\[b\]\\c");
        let keys: Vec<String> = ["a{x}", "b{x}", "c{y}"].map(String::from).to_vec();
        let groups = slot_groups(true, &keys);
        assert_eq!(groups.len(), 2);
        assert_eq!(slot_groups(false, &keys).len(), 1);
        assert!(slot_groups(false, &[]).is_empty());
    }
}
