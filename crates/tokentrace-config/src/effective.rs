//! The effective settings of a run config as YAML, for `tokentrace check-config`: every key
//! with the value in force (defaults, environment and file applied), secrets masked.

use std::fmt::Write;

use crate::RunConfig;

/// What a secret is shown as.
pub const MASK: &str = "********";

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn price_yaml(p: &crate::Price) -> String {
    let mut s = format!(
        "{{input_per_million: {}, output_per_million: {}",
        p.input_per_million, p.output_per_million
    );
    if let Some(c) = p.cached_input_per_million {
        s.push_str(&format!(", cached_input_per_million: {c}"));
    }
    s.push('}');
    s
}

impl RunConfig {
    /// The settings in force, as YAML; API keys are shown as [`MASK`].
    pub fn effective_yaml(&self) -> String {
        let mut y = String::new();
        let s = &self.server;
        let t = &self.telemetry;
        // Writing to a String cannot fail.
        let _ = (|| -> std::fmt::Result {
            writeln!(y, "version: 2")?;
            writeln!(y, "server:")?;
            writeln!(y, "  host: {}", quote(&s.host))?;
            writeln!(y, "  port: {}", s.port)?;
            if let Some(p) = s.otlp_port {
                writeln!(y, "  otlp_port: {p}")?;
            }
            writeln!(y, "  max_body_bytes: {}", s.max_body_bytes)?;
            writeln!(y, "  otlp_max_body_bytes: {}", s.otlp_max_body_bytes)?;
            writeln!(y, "  max_connections: {}", s.max_connections)?;
            writeln!(
                y,
                "  request_timeout_seconds: {}",
                s.request_timeout_seconds
            )?;
            writeln!(y, "  trace_telemetry_api: {}", s.trace_telemetry_api)?;
            writeln!(y, "  allow_unauthenticated: {}", s.allow_unauthenticated)?;
            if !s.allowed_hosts.is_empty() {
                let hosts: Vec<String> = s.allowed_hosts.iter().map(|h| quote(h)).collect();
                writeln!(y, "  allowed_hosts: [{}]", hosts.join(", "))?;
            }
            if let Some(tls) = &s.tls {
                writeln!(y, "  tls:")?;
                writeln!(
                    y,
                    "    cert_file: {}",
                    quote(&tls.cert_file.display().to_string())
                )?;
                writeln!(
                    y,
                    "    key_file: {}",
                    quote(&tls.key_file.display().to_string())
                )?;
            }
            if !s.cors.allowed_origins.is_empty() {
                let o: Vec<String> = s.cors.allowed_origins.iter().map(|h| quote(h)).collect();
                writeln!(y, "  cors:")?;
                writeln!(y, "    allowed_origins: [{}]", o.join(", "))?;
            }
            if let Some(auth) = &s.auth
                && let Some(o) = &auth.oauth2
            {
                writeln!(y, "  auth:")?;
                writeln!(y, "    provider_type: oauth2_token")?;
                writeln!(y, "    public_metrics: {}", auth.public_metrics)?;
                writeln!(y, "    config:")?;
                writeln!(y, "      jwks:")?;
                if let Some(u) = &o.jwks_uri {
                    writeln!(y, "        uri: {}", quote(u))?;
                }
                if o.jwks_token.is_some() {
                    writeln!(y, "        token: {}", quote(MASK))?;
                }
                if let Some(f) = &o.jwks_file {
                    writeln!(y, "        file: {}", quote(&f.display().to_string()))?;
                }
                writeln!(y, "        key_recheck_period: {}", o.key_recheck_period)?;
                if let Some(i) = &o.issuer {
                    writeln!(y, "      issuer: {}", quote(i))?;
                }
                if let Some(a) = &o.audience {
                    writeln!(y, "      audience: {}", quote(a))?;
                }
                if o.hs256_secret.is_some() {
                    writeln!(y, "      hs256_secret: {}", quote(MASK))?;
                }
                writeln!(y, "      leeway_seconds: {}", o.leeway_seconds)?;
                writeln!(y, "      claims_mapping:")?;
                for (claim, target) in &o.claims_mapping {
                    writeln!(y, "        {}: {}", quote(claim), target.as_str())?;
                }
            } else if let Some(auth) = &s.auth {
                writeln!(y, "  auth:")?;
                writeln!(y, "    provider_type: api_key")?;
                writeln!(y, "    public_metrics: {}", auth.public_metrics)?;
                writeln!(y, "    config:")?;
                writeln!(y, "      keys:")?;
                for k in &auth.keys {
                    let hex: String = k.sha256.iter().map(|b| format!("{b:02x}")).collect();
                    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                    writeln!(y, "      - name: {}", quote(&k.name))?;
                    // The key's hash, never the key: enough to use this output as a config.
                    writeln!(y, "        key: \"sha256:{hex}\"")?;
                    writeln!(y, "        scopes: [{}]", scopes.join(", "))?;
                    let projects: Vec<String> = k.projects.iter().map(|p| quote(p)).collect();
                    writeln!(y, "        projects: [{}]", projects.join(", "))?;
                    if !k.attributes.is_empty() {
                        writeln!(y, "        attributes:")?;
                        for (name, values) in &k.attributes {
                            let v: Vec<String> = values.iter().map(|v| quote(v)).collect();
                            writeln!(y, "          {}: [{}]", quote(name), v.join(", "))?;
                        }
                    }
                }
            }
            if let Some(auth) = &s.auth
                && !auth.access_policy.is_empty()
            {
                writeln!(y, "    access_policy:")?;
                for r in &auth.access_policy {
                    let actions: Vec<&str> = r.actions.iter().map(|a| a.as_str()).collect();
                    let mut scope = vec![format!("actions: [{}]", actions.join(", "))];
                    if let Some(p) = &r.principal {
                        scope.push(format!("principal: {}", quote(p)));
                    }
                    if let Some(res) = &r.resource {
                        scope.push(format!("resource: {}", quote(res)));
                    }
                    let kind = if r.permit { "permit" } else { "forbid" };
                    writeln!(y, "    - {kind}: {{{}}}", scope.join(", "))?;
                    for (key, conds) in [("when", &r.when), ("unless", &r.unless)] {
                        if !conds.is_empty() {
                            let c: Vec<String> = conds.iter().map(|c| quote(&c.text())).collect();
                            writeln!(y, "      {key}: [{}]", c.join(", "))?;
                        }
                    }
                    if let Some(d) = &r.description {
                        writeln!(y, "      description: {}", quote(d))?;
                    }
                }
            }
            writeln!(y, "providers:")?;
            writeln!(y, "  telemetry:")?;
            writeln!(y, "  - provider_id: {}", quote(&t.provider_id))?;
            writeln!(y, "    provider_type: inline::meta-reference")?;
            writeln!(y, "    config:")?;
            writeln!(y, "      service_name: {}", quote(&t.service_name))?;
            let sinks: Vec<&str> = t.sinks.iter().map(|k| k.as_str()).collect();
            writeln!(y, "      sinks: [{}]", sinks.join(", "))?;
            if let Some(e) = &t.otel_exporter_otlp_endpoint {
                writeln!(y, "      otel_exporter_otlp_endpoint: {}", quote(e))?;
            }
            let path = t.sqlite_db_path.display().to_string();
            writeln!(y, "      sqlite_db_path: {}", quote(&path))?;
            writeln!(y, "      default_ttl_seconds: {}", t.default_ttl_seconds)?;
            writeln!(y, "      span_timeout_seconds: {}", t.span_timeout_seconds)?;
            let every = t.retention_interval_seconds;
            writeln!(y, "      retention_interval_seconds: {every}")?;
            writeln!(y, "      queue_capacity: {}", t.queue_capacity)?;
            writeln!(y, "      queue_max_bytes: {}", t.queue_max_bytes)?;
            writeln!(y, "      backpressure_ms: {}", t.backpressure_ms)?;
            writeln!(y, "      thread_nice: {}", t.thread_nice)?;
            writeln!(y, "      capture_content: {}", t.capture_content)?;
            let format = t.capture_content_format.as_str();
            writeln!(y, "      capture_content_format: {format}")?;
            writeln!(y, "      ack: {}", t.ack.as_str())?;
            writeln!(y, "      max_answer_spans: {}", t.max_answer_spans)?;
            writeln!(
                y,
                "      query_timeout_seconds: {}",
                t.query_timeout_seconds
            )?;
            writeln!(y, "      max_open_spans: {}", t.max_open_spans)?;
            writeln!(y, "      max_open_bytes: {}", t.max_open_bytes)?;
            writeln!(
                y,
                "      sqlite_queue_max_bytes: {}",
                t.sqlite_queue_max_bytes
            )?;
            writeln!(y, "      otel_queue_max_bytes: {}", t.otel_queue_max_bytes)?;
            writeln!(y, "      console:")?;
            let color = format!("{:?}", t.console.color).to_lowercase();
            writeln!(y, "        color: {color}")?;
            writeln!(y, "        max_value_len: {}", t.console.max_value_len)?;
            writeln!(y, "      indexed_attributes:")?;
            for k in &t.indexed_attributes {
                writeln!(y, "      - {}", quote(k))?;
            }
            writeln!(y, "  inference:")?;
            for p in &self.inference.providers {
                writeln!(y, "  - provider_id: {}", quote(&p.provider_id))?;
                writeln!(y, "    provider_type: {}", quote(&p.provider_type))?;
                writeln!(y, "    config:")?;
                if let Some(u) = &p.url {
                    writeln!(y, "      url: {}", quote(u))?;
                }
                if p.api_key.is_some() {
                    writeln!(y, "      api_key: {}", quote(MASK))?;
                }
                writeln!(y, "      timeout_seconds: {}", p.timeout_seconds)?;
                let connect = p.connect_timeout_seconds;
                writeln!(y, "      connect_timeout_seconds: {connect}")?;
            }
            writeln!(y, "models:")?;
            for m in &self.inference.models {
                writeln!(y, "- model_id: {}", quote(&m.model_id))?;
                writeln!(y, "  provider_id: {}", quote(&m.provider_id))?;
                writeln!(y, "  provider_model_id: {}", quote(&m.provider_model_id))?;
                writeln!(y, "  model_type: {}", m.model_type.as_str())?;
                if !m.metadata.is_null() {
                    writeln!(y, "  metadata: {}", m.metadata)?;
                }
                if let Some(p) = &m.pricing {
                    writeln!(y, "  pricing: {}", price_yaml(p))?;
                }
            }
            let configured = self.pricing.configured();
            if !configured.is_empty() {
                writeln!(y, "pricing:")?;
                for (id, p) in configured {
                    let fields = price_yaml(p);
                    let fields = fields.trim_start_matches('{').trim_end_matches('}');
                    writeln!(y, "- {{provider_model_id: {}, {fields}}}", quote(id))?;
                }
            }
            Ok(())
        })();
        y
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_reads_back_as_itself_with_keys_masked() {
        let env = |name: &str| match name {
            "KEY" => Some("sk-secret-1234-abcdef".to_string()),
            _ => None,
        };
        let yaml = "version: 2\nserver:\n  port: 9000\n  otlp_port: 4318\n  auth:\n    provider_type: api_key\n    config:\n      keys:\n      - name: app\n        key: ${env.KEY}\n        scopes: [inference, telemetry.write]\nproviders:\n  inference:\n  - provider_id: up\n    provider_type: remote::openai\n    config:\n      url: http://127.0.0.1:1/v1\n      api_key: ${env.KEY}\nmodels:\n- model_id: m\n  provider_id: up\n  pricing: {input_per_million: 1.5, output_per_million: 6}\npricing:\n- {provider_model_id: my-model, input_per_million: 0.25, output_per_million: 1, cached_input_per_million: 0.1}\n";
        let cfg = crate::load_from_str(yaml, "test", &env).unwrap();
        let shown = cfg.effective_yaml();
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("key: \"sha256:"), "{shown}");
        assert!(shown.contains(MASK), "{shown}");
        let again = crate::load_from_str(&shown, "effective", &env).unwrap();
        let mut expected = cfg.clone();
        expected.inference.providers[0].api_key = Some(MASK.to_string());
        assert_eq!(again, expected, "{shown}");
    }

    #[test]
    fn an_oauth2_config_reads_back_as_itself_with_the_secret_masked() {
        let env = |name: &str| match name {
            "SECRET" => Some("a-shared-secret-of-at-least-32-bytes!".to_string()),
            _ => None,
        };
        let yaml = "server:\n  auth:\n    provider_type: oauth2_token\n    config:\n      jwks:\n        uri: https://idp.example/jwks.json\n        key_recheck_period: 600\n      issuer: https://idp.example\n      audience: tokentrace\n      hs256_secret: ${env.SECRET}\n      claims_mapping:\n        groups: scopes\n        tenant: projects\n        team: teams\n    access_policy:\n    - forbid: {actions: [read, create], resource: 'model::gpt-4o'}\n      unless: user with ml in teams\n      description: \"the big model: ml only\"\n    - permit: {principal: alice, actions: read}\n";
        let cfg = crate::load_from_str(yaml, "test", &env).unwrap();
        let o = cfg.server.auth.as_ref().unwrap().oauth2.as_ref().unwrap();
        assert_eq!(
            o.claims_mapping,
            [
                ("groups".to_string(), crate::ClaimTarget::Scopes),
                ("team".to_string(), crate::ClaimTarget::Attribute("teams")),
                ("tenant".to_string(), crate::ClaimTarget::Projects),
            ]
        );
        assert_eq!(cfg.server.auth.as_ref().unwrap().access_policy.len(), 2);
        let shown = cfg.effective_yaml();
        assert!(!shown.contains("at-least-32"), "{shown}");
        // A masked secret must be given again to use the output as a config.
        let given = shown.replace(&format!("\"{MASK}\""), "${env.SECRET}");
        let again = crate::load_from_str(&given, "effective", &env).unwrap();
        assert_eq!(again, cfg, "{shown}");
        for (bad, why) in [
            ("    provider_type: oauth2_token\n", "needs config"),
            (
                "    provider_type: oauth2_token\n    config:\n      issuer: x\n",
                "jwks.uri",
            ),
            (
                "    provider_type: oauth2_token\n    config:\n      hs256_secret: short\n",
                "32 bytes",
            ),
            (
                "    provider_type: oauth2_token\n    config:\n      jwks: {uri: ftp://x}\n",
                "http",
            ),
            (
                "    provider_type: oauth2_token\n    config:\n      jwks: {uri: https://x}\n      claims_mapping: {tenant: tenants}\n",
                "unknown target",
            ),
            (
                "    provider_type: oauth2_token\n    config:\n      jwks: {uri: https://x}\n    access_policy:\n    - permit: {actions: [fly]}\n",
                "access_policy[0].permit.actions",
            ),
        ] {
            let e = crate::load_from_str(&format!("server:\n  auth:\n{bad}"), "t", &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
