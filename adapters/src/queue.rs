//! The job doorbell: a Redis stream with one consumer group of workers (DESIGN §4).
//!
//! Postgres is the truth and Redis only rings the bell: an entry says "look at job X", nothing
//! more. A job is due because its events say so, and the sweeper ([`crate::worker::sweep`])
//! re-rings for every due job whose entry was lost — worker killed before `XACK`, Redis flushed
//! or restarted — so losing Redis loses latency, never work.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::streams::XCap;
use uuid::Uuid;

/// The stream's key under the default prefix (`REDIS_KEY_PREFIX`, default `mpanel`).
pub const DEFAULT_PREFIX: &str = "mpanel";
/// The workers' consumer group.
pub const GROUP: &str = "mpanel-workers";
/// Entries kept at most (approximately); older ones are trimmed. Losing a trimmed entry only
/// costs a sweep.
pub const MAX_LEN: i64 = 100_000;

/// Why Redis did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct QueueError(String);

impl From<fred::error::Error> for QueueError {
    fn from(e: fred::error::Error) -> Self {
        Self(e.to_string())
    }
}

/// One delivered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry id, for `XACK`.
    pub entry_id: String,
    /// The job to look at.
    pub job_id: Uuid,
}

/// A connection to the stream.
///
/// Two Redis connections: a blocking `XREADGROUP` holds its connection for up to its timeout,
/// and fred multiplexes every command of a client over one connection, so a shared client made
/// each `XADD` from the saga wait behind a worker's one-second read (the benchmark showed the
/// saga crawling at one event per second).
#[derive(Clone)]
pub struct JobQueue {
    client: Client,
    reader: Client,
    stream: String,
}

fn new_client(url: &str) -> Result<Client, QueueError> {
    let config = Config::from_url(url)?;
    Ok(Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = std::time::Duration::from_secs(5);
        })
        .set_policy(ReconnectPolicy::new_constant(0, 500))
        .build()?)
}

impl JobQueue {
    /// Connects (with automatic reconnection) and makes sure the consumer group exists. The
    /// stream is `<prefix>:jobs`, so several installations (or test apps) can share one Redis.
    ///
    /// # Errors
    /// When the URL is invalid or Redis cannot be reached at all.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, QueueError> {
        let client = new_client(url)?;
        client.init().await?;
        let reader = new_client(url)?;
        reader.init().await?;
        let queue = Self {
            client,
            reader,
            stream: format!("{prefix}:jobs"),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// Creates the stream and group if missing (after a `FLUSHALL`, say).
    ///
    /// # Errors
    /// Any error but "group already exists".
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        match self
            .client
            .xgroup_create::<(), _, _, _>(self.stream.as_str(), GROUP, "$", true)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rings the bell for `job_id`.
    ///
    /// # Errors
    /// When Redis is unreachable (the sweeper will ring again later).
    pub async fn dispatch(&self, job_id: Uuid) -> Result<(), QueueError> {
        let cap = XCap::try_from(("MAXLEN", "~", MAX_LEN))?;
        let _: String = self
            .client
            .xadd(
                self.stream.as_str(),
                false,
                cap,
                "*",
                vec![("job", job_id.to_string())],
            )
            .await?;
        Ok(())
    }

    /// Waits up to `block_ms` for at most `count` new entries for `consumer`.
    ///
    /// # Errors
    /// When Redis is unreachable; a missing group is recreated and reported as no entries.
    pub async fn receive(
        &self,
        consumer: &str,
        count: u64,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        let response: Result<fred::types::Value, _> = self
            .reader
            .xreadgroup(
                GROUP,
                consumer,
                Some(count),
                Some(block_ms),
                false,
                self.stream.as_str(),
                ">",
            )
            .await;
        let response = match response {
            // A wait that timed out answers nil, not an empty map.
            Ok(value) if value.is_null() => return Ok(vec![]),
            Ok(value) => value.into_xread_response::<String, String, String, String>()?,
            Err(e) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(vec![]);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(response
            .into_values()
            .flatten()
            .filter_map(|(entry_id, fields)| {
                let job_id = fields.get("job").and_then(|j| Uuid::parse_str(j).ok())?;
                Some(Delivery { entry_id, job_id })
            })
            .collect())
    }

    /// Acknowledges an entry: its job's outcome is stored (or the job needs nothing).
    ///
    /// # Errors
    /// When Redis is unreachable (the entry stays pending; harmless).
    pub async fn ack(&self, entry_id: &str) -> Result<(), QueueError> {
        let _: i64 = self
            .client
            .xack(self.stream.as_str(), GROUP, entry_id)
            .await?;
        Ok(())
    }

    /// Entries in the stream (the queue depth seen by Redis).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.client.xlen(self.stream.as_str()).await?)
    }

    /// Entries rung but not yet read by the workers' group (Redis's `lag`): the bells the
    /// workers have still to hear. `None` when Redis cannot tell (a trimmed stream, an old
    /// Redis); 0 when there is no stream or no group yet.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn undelivered(&self) -> Result<Option<u64>, QueueError> {
        let groups: Vec<HashMap<String, Value>> =
            match self.client.xinfo_groups(self.stream.as_str()).await {
                Ok(groups) => groups,
                Err(e) if e.details().contains("no such key") => return Ok(Some(0)),
                Err(e) => return Err(e.into()),
            };
        let Some(group) = groups
            .iter()
            .find(|g| g.get("name").and_then(Value::as_str).as_deref() == Some(GROUP))
        else {
            return Ok(Some(0));
        };
        Ok(group.get("lag").and_then(Value::as_u64))
    }

    /// Round trip to Redis.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.reader.quit().await;
        let _ = self.client.quit().await;
    }
}
