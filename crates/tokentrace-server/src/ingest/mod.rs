//! Where telemetry enters from outside: the Llama Stack events endpoint and the OTLP/HTTP
//! receiver. Both hand what they accept to the pipeline ([`tokentrace_pipeline::Telemetry`]),
//! which answers "full" rather than grow: the caller then gets 503 with `Retry-After`.

pub mod events;
pub mod otlp;
