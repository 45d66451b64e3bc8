//! Console sink: human-readable lines for developers.
