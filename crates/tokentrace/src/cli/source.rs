//! Where a subcommand reads: a store file (read-only, the store's functions in-process) or a
//! running server (the same functions behind its routes). Both give the same answers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokentrace_model::query::{
    Data, GetSpanTreeRequest, ListTracesRequest, MetricSeries, QueryMetricsRequest, SessionsAnswer,
    SessionsRequest, SpanFeed, SpanFeedRequest, SqlAnswer, SqlRequest, TracePage, UsageAnswer,
    UsageRequest,
};
use tokentrace_model::{SpanId, SpanWithStatus, Timestamp, Trace, TraceId};
use tokentrace_otlp::from_model::{TraceExport, trace_request};
use tokentrace_store::{MetricQuery, StoreError, StoreReader};

use super::{CliError, SourceArgs};

/// An open source of telemetry.
pub enum Source {
    /// A store file, read in-process.
    Local(StoreReader),
    /// A server's API.
    Remote(Remote),
}

/// A server: its base URL and an HTTP client.
pub struct Remote {
    base: String,
    key: Option<String>,
    project: Option<String>,
    http: reqwest::blocking::Client,
}

/// Longest a query may run when reading a file (the server has its own budget).
const LOCAL_BUDGET: Duration = Duration::from_secs(60);
/// Most rows one local answer may hold.
const LOCAL_MAX_ROWS: usize = 1_000_000;

fn store_error(e: StoreError) -> CliError {
    if e.is_interrupted() {
        return CliError(
            "the query ran past its time budget; narrow it (--since, an indexed attribute)".into(),
        );
    }
    CliError(e.to_string())
}

/// An answer read from a file, as the server would send it: through its JSON form (times to
/// the microsecond, as on the wire), so both sources give the same answers.
fn wire<T: Serialize + DeserializeOwned>(answer: Result<T, StoreError>) -> Result<T, CliError> {
    let answer = answer.map_err(store_error)?;
    Ok(serde_json::from_value(serde_json::to_value(answer)?)?)
}

impl Source {
    /// Opens what the arguments name.
    pub fn open(args: &SourceArgs) -> Result<Self, CliError> {
        if let Some(p) = &args.project {
            tokentrace_model::validate_project(p)
                .map_err(|e| CliError(format!("--project: {e}")))?;
        }
        if let Some(url) = &args.url {
            return Ok(Source::Remote(Remote::new(
                url,
                args.api_key.clone(),
                args.project.clone(),
            )?));
        }
        let path = match (&args.db, &args.config) {
            (Some(db), _) => db.clone(),
            (None, config) => store_path(config.as_deref())?,
        };
        let only = args.project.clone().map(|p| std::sync::Arc::from(vec![p]));
        StoreReader::open_read_only(&path, LOCAL_MAX_ROWS, LOCAL_BUDGET)
            .map(|r| Source::Local(r.for_projects(only)))
            .map_err(|e| match e {
                StoreError::Missing(p) => CliError(format!(
                    "no trace store at {}: give --db PATH, --config run.yaml, or --url of a running server",
                    p.display()
                )),
                e => CliError(format!("{}: {e}", path.display())),
            })
    }

    /// A page of the trace list.
    pub fn list_traces(&self, req: &ListTracesRequest) -> Result<TracePage, CliError> {
        match self {
            Source::Local(r) => wire(r.list_traces(&req.validate()?)),
            Source::Remote(s) => s.post("/v1/tokentrace/traces", req),
        }
    }

    /// One trace, `None` when unknown.
    pub fn get_trace(&self, id: TraceId) -> Result<Option<Trace>, CliError> {
        match self {
            Source::Local(r) => wire(r.get_trace(id)),
            Source::Remote(s) => s.get_optional(&format!("/v1/telemetry/traces/{id}")),
        }
    }

    /// A span and every descendant, `None` when unknown.
    pub fn span_tree(
        &self,
        id: SpanId,
    ) -> Result<Option<BTreeMap<String, SpanWithStatus>>, CliError> {
        match self {
            Source::Local(r) => wire(r.get_span_tree(id, None, None)),
            Source::Remote(s) => {
                let answer: Option<Data<BTreeMap<String, SpanWithStatus>>> = s.post_optional(
                    &format!("/v1/telemetry/spans/{id}/tree"),
                    &GetSpanTreeRequest::default(),
                )?;
                Ok(answer.map(|d| d.data))
            }
        }
    }

    /// A metric's series.
    pub fn query_metrics(
        &self,
        name: &str,
        req: &QueryMetricsRequest,
    ) -> Result<Vec<MetricSeries>, CliError> {
        match self {
            Source::Local(r) => {
                let q = MetricQuery::from_request(req, Timestamp::now())?;
                wire(r.query_metrics(name, &q))
            }
            Source::Remote(s) => {
                let d: Data<Vec<MetricSeries>> =
                    s.post(&format!("/v1/telemetry/metrics/{}", encode(name)), req)?;
                Ok(d.data)
            }
        }
    }

    /// A page of whole traces, as OTLP.
    pub fn export(&self, req: &ListTracesRequest) -> Result<TraceExport, CliError> {
        match self {
            Source::Local(r) => {
                let page = r.export_traces(&req.validate()?).map_err(store_error)?;
                Ok(TraceExport {
                    otlp: trace_request(&page.spans),
                    traces: page.traces as u64,
                    spans: page.spans.len() as u64,
                    next: page.next,
                })
            }
            Source::Remote(s) => s.post("/v1/tokentrace/export", req),
        }
    }

    /// Usage totals.
    pub fn usage(&self, req: &UsageRequest) -> Result<UsageAnswer, CliError> {
        match self {
            Source::Local(r) => wire(r.usage(&req.validate(Timestamp::now())?)),
            Source::Remote(s) => s.post("/v1/tokentrace/usage", req),
        }
    }

    /// Sessions.
    pub fn sessions(&self, req: &SessionsRequest) -> Result<SessionsAnswer, CliError> {
        match self {
            Source::Local(r) => wire(r.sessions(&req.validate(Timestamp::now())?)),
            Source::Remote(s) => s.post("/v1/tokentrace/sessions", req),
        }
    }

    /// One read-only SQL statement.
    pub fn sql(&self, sql: &str) -> Result<SqlAnswer, CliError> {
        match self {
            Source::Local(r) if !r.reads_every_project() => Err(CliError(
                "read-only SQL reads every project: leave out --project".into(),
            )),
            Source::Local(r) => wire(r.read_sql(sql)),
            Source::Remote(s) => s.post(
                "/v1/tokentrace/sql",
                &SqlRequest {
                    sql: sql.to_string(),
                },
            ),
        }
    }

    /// Spans stored after a position (see [`SpanFeedRequest`]).
    pub fn spans_after(&self, req: &SpanFeedRequest) -> Result<SpanFeed, CliError> {
        match self {
            Source::Local(r) => wire(r.spans_after(&req.validate()?)),
            Source::Remote(s) => s.post("/v1/tokentrace/spans/feed", req),
        }
    }
}

/// The store a run config (or the default config) names.
pub fn store_path(config: Option<&std::path::Path>) -> Result<PathBuf, CliError> {
    let cfg = tokentrace_config::load(config, &tokentrace_config::process_env)?;
    Ok(cfg.telemetry.sqlite_db_path)
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Remote {
    fn new(url: &str, key: Option<String>, project: Option<String>) -> Result<Self, CliError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CliError(format!(
                "--url {url:?}: expected http://host:port or https://host:port"
            )));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            key,
            project,
            http,
        })
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<Option<reqwest::blocking::Response>, CliError> {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        let req = match &self.project {
            Some(p) => req.header("x-tokentrace-project", p),
            None => req,
        };
        let resp = req
            .send()
            .map_err(|e| CliError(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = resp.text().unwrap_or_default();
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(CliError(format!(
                "{} answered {status}: {detail}",
                self.base
            )));
        }
        Ok(Some(resp))
    }

    fn decode<T: DeserializeOwned>(resp: reqwest::blocking::Response) -> Result<T, CliError> {
        resp.json()
            .map_err(|e| CliError(format!("unexpected answer from the server: {e}")))
    }

    fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CliError> {
        let r = self.send(self.http.get(format!("{}{path}", self.base)))?;
        r.map(Self::decode).transpose()
    }

    fn post_optional<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Option<T>, CliError> {
        let r = self.send(self.http.post(format!("{}{path}", self.base)).json(body))?;
        r.map(Self::decode).transpose()
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, CliError> {
        self.post_optional(path, body)?.ok_or_else(|| {
            CliError(format!(
                "{}{path}: not found (is this a tokentrace server?)",
                self.base
            ))
        })
    }
}
