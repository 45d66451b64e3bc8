//! W3C Trace Context `traceparent` header: parse and format.

use std::fmt;

use crate::{SpanId, TraceId};

/// A parsed `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The caller's trace.
    pub trace_id: TraceId,
    /// The caller's span, parent of ours.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid traceparent {0:?}: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
)]
pub struct TraceParentError(pub String);

impl TraceParent {
    /// Parses a header value per W3C Trace Context level 1 (future versions are read as version 00).
    pub fn parse(header: &str) -> Result<Self, TraceParentError> {
        let err = || TraceParentError(header.to_string());
        let h = header.trim();
        let mut parts = h.split('-');
        let version = parts.next().ok_or_else(err)?;
        let trace = parts.next().ok_or_else(err)?;
        let parent = parts.next().ok_or_else(err)?;
        let flags = parts.next().ok_or_else(err)?;
        if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(err());
        }
        if version == "00" && (parts.next().is_some() || h.len() != 55) {
            return Err(err());
        }
        if flags.len() != 2 {
            return Err(err());
        }
        let trace_id: TraceId = trace.parse().map_err(|_| err())?;
        let parent_id: SpanId = parent.parse().map_err(|_| err())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| err())?;
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the caller sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let tp =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(tp.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.parent_id.to_string(), "b7ad6b7169203331");
        assert!(tp.sampled());
        assert_eq!(
            tp.to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad}");
        }
        // A future version may append fields.
        assert!(
            TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what")
                .is_ok()
        );
    }
}
