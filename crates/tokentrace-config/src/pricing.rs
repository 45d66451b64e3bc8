//! What tokens cost: the price table embedded in the binary (`prices.yaml`), the run config's
//! top-level `pricing:` list that overrides and extends it, and `models[].pricing`.

use std::collections::HashMap;

use serde::Deserialize;

/// The embedded price table, as shipped.
pub const EMBEDDED_PRICES_YAML: &str = include_str!("prices.yaml");

/// Prices of one model in USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Input (prompt) tokens not read from the provider's cache.
    pub input_per_million: f64,
    /// Output (completion) tokens, reasoning tokens included.
    pub output_per_million: f64,
    /// Input tokens read from the provider's prompt cache; the input price when not given.
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

impl Price {
    /// Free: the embedded development model, self-hosted models.
    pub const ZERO: Price = Price {
        input_per_million: 0.0,
        output_per_million: 0.0,
        cached_input_per_million: None,
    };

    /// The cost in USD of a call with `input` tokens (`cached` of them read from the cache,
    /// OpenAI's way of counting: cached tokens are part of the input) and `output` tokens.
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> f64 {
        let cached = cached.min(input);
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        ((input - cached) as f64 * self.input_per_million
            + cached as f64 * cached_price
            + output as f64 * self.output_per_million)
            / 1e6
    }

    /// Every price a number of USD, 0 or more.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("input_per_million", Some(self.input_per_million)),
            ("output_per_million", Some(self.output_per_million)),
            ("cached_input_per_million", self.cached_input_per_million),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!(
                    "{name} must be a number of USD, 0 or more, got {v}"
                ));
            }
        }
        Ok(())
    }
}

/// One entry of a price list (`pricing:` in the run config, `prices.yaml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    provider_model_id: String,
    /// Who sells it: for the people reading the list; lookups go by model id.
    #[serde(default)]
    #[allow(dead_code)]
    provider: Option<String>,
    input_per_million: f64,
    output_per_million: f64,
    #[serde(default)]
    cached_input_per_million: Option<f64>,
}

impl RawPrice {
    fn price(&self) -> Price {
        Price {
            input_per_million: self.input_per_million,
            output_per_million: self.output_per_million,
            cached_input_per_million: self.cached_input_per_million,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedFile {
    read_on: String,
    source: String,
    models: Vec<RawPrice>,
}

/// Where a call's price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceOrigin {
    /// `models[].pricing`.
    Model,
    /// The run config's `pricing:` list.
    Config,
    /// The embedded table.
    Embedded,
    /// Free: the embedded development model or a self-hosted provider with no price set.
    SelfHosted,
}

/// The prices known to this run: the config's, then the embedded ones.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    configured: HashMap<String, Price>,
    embedded: HashMap<String, Price>,
    /// When the embedded prices were read (ISO date).
    pub read_on: String,
    /// Where the embedded prices were read from.
    pub source: String,
}

fn by_id(list: &[RawPrice]) -> HashMap<String, Price> {
    list.iter()
        .map(|p| (p.provider_model_id.clone(), p.price()))
        .collect()
}

impl PriceTable {
    /// The embedded table alone (read once).
    pub fn embedded() -> Self {
        static EMBEDDED: std::sync::OnceLock<PriceTable> = std::sync::OnceLock::new();
        EMBEDDED.get_or_init(Self::read_embedded).clone()
    }

    fn read_embedded() -> Self {
        // The file is part of the build and checked by a test; a broken one leaves no prices.
        let file: Option<EmbeddedFile> = serde_saphyr::from_str(EMBEDDED_PRICES_YAML).ok();
        match file {
            Some(f) => Self {
                configured: HashMap::new(),
                embedded: by_id(&f.models),
                read_on: f.read_on,
                source: f.source,
            },
            None => Self {
                configured: HashMap::new(),
                embedded: HashMap::new(),
                read_on: String::new(),
                source: String::new(),
            },
        }
    }

    /// The embedded table with the config's `pricing:` list over it.
    pub(crate) fn with_config(list: &[RawPrice]) -> Result<Self, (String, String)> {
        for (i, p) in list.iter().enumerate() {
            if p.provider_model_id.trim().is_empty() {
                return Err((
                    format!("pricing[{i}].provider_model_id"),
                    "must not be empty".into(),
                ));
            }
            p.price()
                .check()
                .map_err(|m| (format!("pricing[{i}]"), m))?;
        }
        Ok(Self {
            configured: by_id(list),
            ..Self::embedded()
        })
    }

    /// The config's `pricing:` entries, by model id.
    pub fn configured(&self) -> Vec<(&str, &Price)> {
        let mut v: Vec<(&str, &Price)> = self
            .configured
            .iter()
            .map(|(k, p)| (k.as_str(), p))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Number of models the embedded table prices.
    pub fn embedded_len(&self) -> usize {
        self.embedded.len()
    }

    /// The price of a model known by `id` (a provider's model id or a response model): the
    /// config's entry, else the embedded one; an id with a vendor prefix (`openai/gpt-4o`) is
    /// also tried without it. `None`: unknown, never a guess.
    pub fn lookup(&self, id: &str) -> Option<(Price, PriceOrigin)> {
        let bare = id.rsplit_once('/').map(|(_, b)| b);
        for (table, origin) in [
            (&self.configured, PriceOrigin::Config),
            (&self.embedded, PriceOrigin::Embedded),
        ] {
            if let Some(p) = table.get(id).or_else(|| bare.and_then(|b| table.get(b))) {
                return Some((*p, origin));
            }
        }
        None
    }

    /// The price of a call through the gateway: the model's own pricing, else the config's
    /// list, else (for hosted providers) the embedded table by provider model id then by the
    /// model the provider says answered; free for self-hosted providers nobody priced.
    pub fn for_gateway_call(
        &self,
        model_pricing: Option<Price>,
        provider_model_id: &str,
        response_model: Option<&str>,
        self_hosted: bool,
    ) -> Option<(Price, PriceOrigin)> {
        if let Some(p) = model_pricing {
            return Some((p, PriceOrigin::Model));
        }
        let ids = std::iter::once(provider_model_id).chain(response_model);
        if self_hosted {
            for id in ids {
                if let Some(p) = self.configured.get(id) {
                    return Some((*p, PriceOrigin::Config));
                }
            }
            return Some((Price::ZERO, PriceOrigin::SelfHosted));
        }
        ids.into_iter().find_map(|id| self.lookup(id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_and_prices_common_models() {
        let file: EmbeddedFile = serde_saphyr::from_str(EMBEDDED_PRICES_YAML).unwrap();
        assert!(file.models.len() >= 20, "{}", file.models.len());
        assert!(!file.read_on.is_empty() && !file.source.is_empty());
        for p in &file.models {
            p.price().check().unwrap();
            assert!(p.output_per_million > 0.0 || p.input_per_million > 0.0);
        }
        let t = PriceTable::embedded();
        assert!(t.lookup("gpt-4o-mini").is_some());
        assert!(t.lookup("openai/gpt-4o-mini").is_some());
        assert!(t.lookup("no-such-model").is_none());
    }

    #[test]
    fn cached_input_is_priced_apart_and_never_more_than_the_input() {
        let p = Price {
            input_per_million: 2.0,
            output_per_million: 8.0,
            cached_input_per_million: Some(0.5),
        };
        // 1,000 input of which 400 cached, 100 output.
        let c = p.cost(1_000, 400, 100);
        assert!((c - (600.0 * 2.0 + 400.0 * 0.5 + 100.0 * 8.0) / 1e6).abs() < 1e-12);
        assert_eq!(p.cost(10, 50, 0), p.cost(10, 10, 0));
        let no_cache = Price {
            cached_input_per_million: None,
            ..p
        };
        assert!((no_cache.cost(1_000, 400, 0) - 1_000.0 * 2.0 / 1e6).abs() < 1e-12);
    }

    #[test]
    fn config_prices_win_and_self_hosted_models_are_free_unless_priced() {
        let list = vec![RawPrice {
            provider_model_id: "gpt-4o-mini".into(),
            provider: None,
            input_per_million: 9.0,
            output_per_million: 9.0,
            cached_input_per_million: None,
        }];
        let t = PriceTable::with_config(&list).unwrap();
        assert_eq!(
            t.lookup("gpt-4o-mini")
                .map(|(p, o)| (p.input_per_million, o)),
            Some((9.0, PriceOrigin::Config))
        );
        let own = Price {
            input_per_million: 1.0,
            output_per_million: 1.0,
            cached_input_per_million: None,
        };
        assert_eq!(
            t.for_gateway_call(Some(own), "gpt-4o-mini", None, false),
            Some((own, PriceOrigin::Model))
        );
        assert_eq!(
            t.for_gateway_call(None, "llama3.2:3b", None, true),
            Some((Price::ZERO, PriceOrigin::SelfHosted))
        );
        assert_eq!(
            t.for_gateway_call(None, "gpt-4o-mini", None, true)
                .map(|p| p.1),
            Some(PriceOrigin::Config)
        );
        assert_eq!(t.for_gateway_call(None, "my-finetune", None, false), None);
        assert_eq!(
            t.for_gateway_call(None, "my-alias", Some("gpt-4o-mini"), false)
                .map(|p| p.1),
            Some(PriceOrigin::Config)
        );
        let bad = vec![RawPrice {
            input_per_million: -1.0,
            ..list[0].clone()
        }];
        assert!(PriceTable::with_config(&bad).is_err());
    }
}
