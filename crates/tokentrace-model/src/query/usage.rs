//! Usage totals: LLM calls and their tokens over a time range, grouped by model, provider,
//! user, session or service (`POST /v1/tokentrace/usage`, `tokentrace usage`).

use serde::{Deserialize, Serialize};

use super::InvalidQuery;
use crate::Timestamp;

/// Users or models listed per session at most.
pub const MAX_LISTED: usize = 20;

/// Sessions one answer holds at most.
pub const MAX_SESSIONS: usize = 1_000;

/// Calls per group that percentiles are taken over at most.
pub const PERCENTILE_SAMPLE: usize = 10_000;

/// What usage is grouped by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageGroup {
    /// The answering model (`gen_ai.response.model`, else `gen_ai.request.model`, else `model_id`).
    #[default]
    #[serde(rename = "model_id")]
    Model,
    /// The provider (`gen_ai.provider.name`, else `provider_id`).
    #[serde(rename = "provider_id")]
    Provider,
    /// `user.id` (else `user_id`, `enduser.id`).
    #[serde(rename = "user.id", alias = "user")]
    User,
    /// `session.id` (else `session_id`, `gen_ai.conversation.id`).
    #[serde(rename = "session.id", alias = "session")]
    Session,
    /// The span's service.
    #[serde(rename = "service.name", alias = "service")]
    Service,
}

impl UsageGroup {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroup::Model => "model_id",
            UsageGroup::Provider => "provider_id",
            UsageGroup::User => "user.id",
            UsageGroup::Session => "session.id",
            UsageGroup::Service => "service.name",
        }
    }
}

/// Body of `POST /v1/tokentrace/usage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    /// Calls that started at or after this time (ISO 8601; default 24 hours ago).
    #[serde(default)]
    pub since: Option<String>,
    /// Calls that started before this time (ISO 8601; default now).
    #[serde(default)]
    pub until: Option<String>,
    /// Grouping (default `model_id`).
    #[serde(default)]
    pub by: UsageGroup,
}

/// A validated [`UsageRequest`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageQuery {
    /// From.
    pub since: Timestamp,
    /// Until.
    pub until: Timestamp,
    /// Grouping.
    pub by: UsageGroup,
}

impl UsageRequest {
    /// Validates the request; `now` is the default end.
    pub fn validate(&self, now: Timestamp) -> Result<UsageQuery, InvalidQuery> {
        let time = |name: &str, v: &Option<String>, default: Timestamp| match v {
            Some(s) => Timestamp::parse_iso(s).map_err(|e| InvalidQuery(format!("{name}: {e}"))),
            None => Ok(default),
        };
        let until = time("until", &self.until, now)?;
        let since = time(
            "since",
            &self.since,
            Timestamp::from_unix_nanos(until.unix_nanos().saturating_sub(86_400 * 1_000_000_000)),
        )?;
        if since > until {
            return Err(InvalidQuery("since must not be after until".into()));
        }
        Ok(UsageQuery {
            since,
            until,
            by: self.by,
        })
    }
}

/// One group's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The group's value; `null` for calls that do not name one.
    pub key: Option<String>,
    /// LLM calls: spans with token usage.
    pub calls: u64,
    /// Traces they belong to.
    pub traces: u64,
    /// Of the calls, those whose status is `error`.
    pub errors: u64,
    /// Input tokens (`gen_ai.usage.input_tokens`).
    pub input_tokens: i64,
    /// Output tokens (`gen_ai.usage.output_tokens`).
    pub output_tokens: i64,
    /// Of the input tokens, those read from the provider's cache
    /// (`gen_ai.usage.cache_read.input_tokens`).
    pub cached_input_tokens: i64,
    /// Of the output tokens, those spent on reasoning (`gen_ai.usage.reasoning.output_tokens`).
    pub reasoning_tokens: i64,
    /// What the priced calls cost, USD (`tokentrace.cost.usd`); `null` when none was priced.
    pub cost_usd: Option<f64>,
    /// Calls whose model has no price (not in `cost_usd`).
    pub unpriced_calls: u64,
    /// Mean call duration, milliseconds.
    pub mean_duration_ms: Option<f64>,
    /// Median call duration, milliseconds.
    pub p50_duration_ms: Option<f64>,
    /// 95th percentile of call durations, milliseconds.
    pub p95_duration_ms: Option<f64>,
    /// 99th percentile of call durations, milliseconds.
    pub p99_duration_ms: Option<f64>,
    /// Median time to the first streamed chunk, milliseconds (streamed calls only).
    pub p50_time_to_first_token_ms: Option<f64>,
    /// The users of the calls (at most [`MAX_LISTED`], sorted); only in sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// The models of the calls (at most [`MAX_LISTED`], sorted); only in sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Start of the first call.
    pub first: Timestamp,
    /// Start of the last call.
    pub last: Timestamp,
}

/// Answer of `POST /v1/tokentrace/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// The window.
    pub since: Timestamp,
    /// The window's end.
    pub until: Timestamp,
    /// The grouping.
    pub by: UsageGroup,
    /// Groups, most tokens first.
    pub data: Vec<UsageRow>,
}

/// Body of `POST /v1/tokentrace/sessions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsRequest {
    /// Sessions with a call at or after this time (ISO 8601; default 24 hours ago).
    #[serde(default)]
    pub since: Option<String>,
    /// ... and before this time (ISO 8601; default now).
    #[serde(default)]
    pub until: Option<String>,
    /// Only the sessions of this user (`user.id`).
    #[serde(default)]
    pub user: Option<String>,
    /// Only sessions with a call of this model.
    #[serde(default)]
    pub model: Option<String>,
    /// Most sessions answered (default 100, at most 1,000), latest activity first.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A validated [`SessionsRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct SessionsQuery {
    /// The window.
    pub window: UsageQuery,
    /// Only this user's sessions.
    pub user: Option<String>,
    /// Only sessions using this model.
    pub model: Option<String>,
    /// Most sessions answered.
    pub limit: usize,
}

impl SessionsRequest {
    /// Validates the request; `now` is the default end.
    pub fn validate(&self, now: Timestamp) -> Result<SessionsQuery, InvalidQuery> {
        let window = UsageRequest {
            since: self.since.clone(),
            until: self.until.clone(),
            by: UsageGroup::Session,
        }
        .validate(now)?;
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_SESSIONS {
            return Err(InvalidQuery(format!(
                "limit must be between 1 and {MAX_SESSIONS}, got {limit}"
            )));
        }
        Ok(SessionsQuery {
            window,
            user: self.user.clone(),
            model: self.model.clone(),
            limit,
        })
    }
}

/// One session: its calls' totals, users and models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    /// `session.id` (else `session_id`, `gen_ai.conversation.id`).
    pub session_id: String,
    /// Its totals.
    #[serde(flatten)]
    pub usage: UsageRow,
}

/// Answer of `POST /v1/tokentrace/sessions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionsAnswer {
    /// The window.
    pub since: Timestamp,
    /// The window's end.
    pub until: Timestamp,
    /// Sessions, latest activity first.
    pub data: Vec<SessionRow>,
    /// Sessions in the window past `limit` (not listed).
    pub more: u64,
}
